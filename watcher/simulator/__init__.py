"""A protocol-faithful local fake of the Tencent Cloud Omics API.

Used by ``omics-watcher demo``, ``omics-watcher simulate``, the tests and the benchmarks. The
official SDK (``tencentcloud.omics.v20221128.omics_client.OmicsClient`` with
``HttpProfile(protocol="http", endpoint="127.0.0.1:PORT")``) works against it unchanged.

Python API (stable)
-------------------
``SimulatorConfig(...)``
    Frozen dataclass (see :mod:`watcher.simulator.config`): ``runs``, ``seed``, lifecycle
    ``kinds`` mix (``finishing``/``forever``/``hung``/``flapping``), ``outcomes`` mix,
    ``queued_seconds``/``initializing_seconds``/``running_seconds`` ranges, ``hung_status``,
    ``flap_period_seconds``/``flap_statuses``, ``unknown_status``/``unknown_fraction``,
    ``project_ids``, ``runs_per_group``, ``applications``, ``rate_limit``/``rate_limits``,
    ``max_filter_values``, ``max_timestamp_skew``, ``fault_rate``/``fault_kinds``/
    ``slow_seconds``, ``secret_id``/``secret_key``/``token``, ``histogram_seconds``;
    bursts and distance: ``group_spread_seconds`` (runs of one group move together),
    ``list_lag_seconds`` (DescribeRuns behind GetRunStatus), ``rtt_ms``/``jitter_ms``/
    ``uplink_share`` (a simulated network).
``Simulator(config=None, *, monotonic=None, wall=time.time)``
    State and counters. ``monotonic`` paces lifecycles and the rate limit (default: the
    running loop's clock); ``wall`` stamps times. Properties ``secret_id``, ``secret_key``,
    ``token``, ``run_uuids``, ``project_id``, ``endpoint`` (once serving). ``app()`` returns
    the aiohttp Application. Hooks: ``submit_run(*, run_uuid, project_id, run_group_id,
    application_id, user_defined_id, kind, outcome, durations) -> str``,
    ``submit_group(count, *, spread_seconds=0, durations=None, run_group_id=None,
    project_id=None, application_id=None, kind=None, outcome=None) -> list[str]``,
    ``set_list_lag(seconds)``, ``set_network(*, rtt_ms=0, jitter_ms=0, uplink_share=0.5)``,
    ``set_rate_limit(limit, *, action=None)``, ``set_max_filter_values(n)``,
    ``deny_action(action, code="UnauthorizedOperation")`` (``code=None`` allows it again),
    ``set_faults(rate, kinds=None)``, ``set_clock_offset(seconds)``,
    ``issue_credential(*, ttl=None, token=True) -> Credential``, ``add_credential(cred)``,
    ``expire_credentials(*, secret_id=None, at=None)``,
    ``rotate_token(*, secret_id=None, token=None, expires_at=None) -> str``,
    ``reset_stats()``. In-process and trusted: ``call(action, params) -> dict`` (raises
    ``ApiError``). Truth: ``snapshot(uuid)``, ``status(uuid)``,
    ``timeline(uuid=None) -> list[Transition]``, ``stats(*, timeline=True) -> dict``,
    ``group_of(uuid) -> str`` (its RunGroupId), ``project_of(uuid) -> str``.
``running_simulator(config=None, host="127.0.0.1", port=0, *, monotonic=None, wall=None)``
    Async context manager yielding a serving :class:`Simulator` (``sim.endpoint`` is
    ``"http://127.0.0.1:PORT"``).
``serve(config, *, host, port, stop, out, duration=None, arrivals_per_minute=0)``
    For the CLI: prints one JSON line ``{"endpoint", "secret_id", "secret_key", "runs"}``
    (plus ``"token"`` when configured), then serves until ``stop`` is set or ``duration``
    elapses; with ``arrivals_per_minute`` it submits a run at that steady pace and prints
    ``{"new_run", "project_id", "run_group_id", "created_at"}`` for each, one line apiece.
    ``OSError`` when the port is taken. ``phase_ranges(run_seconds)`` (in
    :mod:`watcher.simulator.config`) scales the default lifecycle to runs of that length.

HTTP (same port)
----------------
``POST /``: the API (TC3-signed; actions GetRunStatus, DescribeRuns, GetRunCalls,
GetRunJobLog; version 2022-11-28). Always HTTP 200 ``application/json`` unless a fault
says otherwise. Unauthenticated hooks for local tools (JSON bodies, 400 on bad input):

- ``GET  /_sim/stats[?timeline=0]``: :meth:`Simulator.stats`
- ``GET  /_sim/timeline[?run_uuid=U]``: list of ``{run_uuid, from, to, at}``
- ``GET  /_sim/runs``: ``{project_id, runs: [uuid, ...]}``
- ``POST /_sim/runs`` ``{run_uuid?, project_id?, run_group_id?, application_id?,
  user_defined_id?, kind?, outcome?, durations?: [q, i, r]}`` -> 201 ``{run_uuid}``
- ``POST /_sim/groups`` ``{count, spread_seconds?, durations?, run_group_id?, project_id?,
  application_id?, kind?, outcome?}`` -> 201 ``{run_group_id, run_uuids}``
- ``POST /_sim/list-lag`` ``{seconds}``
- ``POST /_sim/network`` ``{rtt_ms, jitter_ms?, uplink_share?}``
- ``POST /_sim/rate-limit`` ``{limit, action?}``
- ``POST /_sim/faults`` ``{rate, kinds?}``
- ``POST /_sim/clock`` ``{offset_seconds}``
- ``POST /_sim/max-filter-values`` ``{limit}``
- ``POST /_sim/credentials`` ``{ttl?, token?: bool}`` -> 201 ``{secret_id, secret_key,
  token, expires_at}``
- ``POST /_sim/credentials/expire`` ``{secret_id?, at?}``
- ``POST /_sim/credentials/rotate-token`` ``{secret_id?, token?, expires_at?}`` ->
  ``{token}``
- ``POST /_sim/stats/reset``

Semantics worth knowing
-----------------------
- Rate limit: per action, at most ``limit`` *admitted* requests in any sliding 1 s window,
  counted at arrival. Throttled and unauthenticated requests do not consume budget.
  ``stats()["max_window"]`` is the exact maximum of admitted requests in any 1 s window;
  ``max_window_arrivals`` the same over every arrival (what a client's own limiter must keep
  within the limit). ``histogram`` rows are ``[second since start, arrivals, throttled]``.
- Network (:mod:`watcher.simulator.network`): each ``POST /`` waits its uplink delay before
  the protocol core sees it (so the rate limit counts it on arrival, as Tencent does) and its
  downlink delay before the answer is written; round trip ``rtt_ms ± jitter_ms``.
- Bursts (:mod:`watcher.simulator.runs`): a group's runs share phase durations, each shifted
  by a seeded draw in ``[0, spread)``; DescribeRuns with a lag shows each run (Status, times,
  ErrorMessage, ``UpdateTime`` = its last change then) as it was ``lag`` seconds ago, and its
  Status filter uses that view. ``Run`` items carry every field of the SDK's ``Run`` model,
  times RFC 3339 ``+08:00`` in whole seconds.
- GetRunCalls ``Path``: ``/`` or ``"/" + RunId`` of a ``Workflow``/``Scatter`` call listed
  at the level above (Tencent's convention); anything else is ``InvalidParameterValue``.
  GetRunJobLog finds the job by ``JobId``; its optional ``Path`` must name a level too.
- Stats keys: ``requests``/``throttled``/``max_window``/``max_window_arrivals``/
  ``rate_limits``/``histogram`` (per action), ``requests_total``, ``throttled_total``,
  ``signature_failures``, ``auth_failures``, ``errors`` (per code), ``faults`` (per kind),
  ``polls`` (GetRunStatus answers per run), ``timeline``, ``started_at``, ``now``,
  ``uptime_seconds``, ``runs``, ``fault_rate``, ``fault_kinds``, ``clock_offset``,
  ``list_lag_seconds``, ``network``.
- Lifecycles are computed from (creation time, seeded schedule), never stored; see
  :mod:`watcher.simulator.runs`. Timeline ``at`` values are wall-clock epoch seconds.
- Faults are drawn (seeded) only for authenticated, admitted requests; see
  :mod:`watcher.simulator.faults`.
"""

from __future__ import annotations

from watcher.simulator.config import Credential, SimulatorConfig
from watcher.simulator.protocol import ApiError
from watcher.simulator.running import running_simulator, serve
from watcher.simulator.runs import Snapshot, Transition
from watcher.simulator.simulator import Simulator

__all__ = [
    "ApiError",
    "Credential",
    "Simulator",
    "SimulatorConfig",
    "Snapshot",
    "Transition",
    "running_simulator",
    "serve",
]
