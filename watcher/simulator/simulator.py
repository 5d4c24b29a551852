"""The simulator's state and its protocol core, independent of any HTTP framework.

:meth:`Simulator.handle` turns one request (headers, Host, raw body) into a
:class:`~watcher.simulator.protocol.Reply`, in this order: count the arrival, verify the
signature, check the version and action, apply the rate limit, draw a fault, parse the JSON
body, run the action, encode (or spoil) the answer. Every API answer is HTTP 200 with
``Content-Type: application/json`` unless a fault says otherwise.

Clocks are injected: ``monotonic`` (the event loop's clock by default) paces lifecycles and
the rate limit; ``wall`` stamps times in answers and in the timeline. The clock offset knob
shifts only the server time used for the signature-expiry check (and credential expiry), which
is how clock skew looks from the client's side.

All mutable state lives in the instance; nothing is global. Not thread-safe: use it from the
event loop it serves on (the admin hooks are plain methods for that loop).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Unpack

from watcher.simulator.actions import INVALID, MISSING, Actions
from watcher.simulator.auth import (
    SIGNATURE_FAILURE,
    CredentialStore,
    new_credential,
)
from watcher.simulator.config import (
    ACTIONS,
    API_VERSION,
    BAD_GATEWAY,
    DROP,
    INTERNAL_ERROR,
    MALFORMED_FAULTS,
    SLOW,
    Credential,
    SimulatorConfig,
)
from watcher.simulator.faults import BAD_GATEWAY_HTML, FaultInjector, spoil
from watcher.simulator.network import Network, NetworkSettings
from watcher.simulator.protocol import ApiError, Reply, encode, failure, request_ids, success
from watcher.simulator.ratelimit import ActionLimiter
from watcher.simulator.runs import GroupFields, RunBook, RunFields, Snapshot, Transition

if TYPE_CHECKING:
    from aiohttp import web


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # no loop running: the default loop's clock is time.monotonic
        return time.monotonic()


class Simulator:
    """A simulated Omics endpoint: runs, credentials, rate limits, faults and counters."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        monotonic: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = config or SimulatorConfig()
        self._mono = monotonic or _loop_time
        self._wall = wall
        self._started_mono = self._mono()
        self._started_wall = wall()
        self._clock_offset = 0.0
        self._max_filter_values = config.max_filter_values
        self._denied: dict[str, str] = {}  # action -> error code, as a CAM policy would refuse
        default = new_credential()
        self._credential = Credential(
            secret_id=config.secret_id or default.secret_id,
            secret_key=config.secret_key or default.secret_key,
            token=config.token,
        )
        self._auth = CredentialStore([self._credential], max_skew=config.max_timestamp_skew)
        self._book = RunBook(config, mono=self._started_mono, wall=self._started_wall)
        self._faults = FaultInjector(
            rate=config.fault_rate, kinds=config.fault_kinds, seed=config.seed
        )
        self._polls: Counter[str] = Counter()
        self._list_lag = config.list_lag_seconds
        self._network = Network(
            NetworkSettings(config.rtt_ms, config.jitter_ms, config.uplink_share),
            seed=config.seed,
        )
        self._actions = Actions(
            book=self._book,
            max_filter_values=lambda: self._max_filter_values,
            polls=self._polls,
            list_lag=lambda: self._list_lag,
        )
        self._limiters: dict[str, ActionLimiter] = {}
        self._errors: Counter[str] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._signature_failures = 0
        self._auth_failures = 0
        self._reset_limiters({a: config.limit_for(a) for a in ACTIONS})
        self._endpoint: str | None = None
        self._request_id = request_ids()

    # -- identity --------------------------------------------------------------------------

    @property
    def secret_id(self) -> str:
        return self._credential.secret_id

    @property
    def secret_key(self) -> str:
        return self._credential.secret_key

    @property
    def token(self) -> str | None:
        current = self._auth.get(self._credential.secret_id)
        return current.token if current else None

    @property
    def run_uuids(self) -> list[str]:
        """Every run's UUID, in creation order."""
        return [r.run_uuid for r in self._book.runs]

    @property
    def project_id(self) -> str:
        """The region's default project (the first configured one)."""
        return self._book.default_project

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise RuntimeError("the simulator is not serving; use running_simulator()")
        return self._endpoint

    def bind(self, endpoint: str) -> None:
        """Record the URL it serves on (called by the serving code)."""
        self._endpoint = endpoint

    def app(self) -> web.Application:
        """The aiohttp application serving this simulator (API at ``POST /``, hooks under
        ``/_sim/``)."""
        from watcher.simulator.server import build_app  # aiohttp only when serving

        return build_app(self)

    # -- protocol core ---------------------------------------------------------------------

    def handle(self, headers: Mapping[str, str], *, host: str, body: bytes) -> Reply:
        """Answer one ``POST /``. ``headers`` must be case-insensitive (as aiohttp's are)."""
        now = self._mono()
        rid = self._request_id()
        action = headers.get("X-TC-Action", "")
        limiter = self._limiters.get(action)
        if limiter is not None:
            limiter.arrive(now, int(now - self._started_mono))
        fault: str | None = None
        try:
            if not action:
                raise ApiError(MISSING, "The request is missing the X-TC-Action header.")
            self._verify(headers, host=host, body=body)
            version = headers.get("X-TC-Version", "")
            if version != API_VERSION:
                raise ApiError("NoSuchVersion", f"The API version {version!r} does not exist.")
            if limiter is None:
                raise ApiError("InvalidAction", f"The action {action!r} does not exist.")
            if action in self._denied:
                raise ApiError(
                    self._denied[action],
                    f"You are not authorized to perform {action} (simulated CAM policy).",
                )
            if not limiter.admit(now):
                raise ApiError(
                    "RequestLimitExceeded",
                    f"Your request frequency has exceeded the limit of {limiter.limit} "
                    f"requests per second for {action}.",
                )
            fault = self._faults.draw()
            if fault is not None:
                self._fault_counts[fault] += 1
                if fault == INTERNAL_ERROR:
                    raise ApiError("InternalError", "An internal error has occurred (simulated).")
                if fault == BAD_GATEWAY:
                    return Reply(BAD_GATEWAY_HTML, status=502, content_type="text/html")
                if fault == DROP:
                    return Reply(b"", drop=True)
            response = success(self._actions.handlers[action](self._params(body), now), rid)
        except ApiError as exc:
            self._errors[exc.code] += 1
            response = failure(exc.code, exc.message, rid)
        delay = self.config.slow_seconds if fault == SLOW else 0.0
        if fault in MALFORMED_FAULTS:
            return Reply(spoil(fault, response), delay=delay)
        return Reply(encode(response), delay=delay)

    def call(self, action: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one action in-process, trusted: no signature, rate limit, fault or request
        counter (a GetRunStatus still counts as a poll). The ``Response`` payload without
        ``RequestId``; raises :class:`~watcher.simulator.protocol.ApiError` on refusal."""
        handler = self._actions.handlers.get(action)
        if handler is None:
            raise ApiError("InvalidAction", f"The action {action!r} does not exist.")
        return handler(dict(params or {}), self._mono())

    def _verify(self, headers: Mapping[str, str], *, host: str, body: bytes) -> None:
        try:
            self._auth.verify(
                headers, host=host, body=body, server_time=self._wall() + self._clock_offset
            )
        except ApiError as exc:
            self._auth_failures += 1
            if exc.code == SIGNATURE_FAILURE:
                self._signature_failures += 1
            raise

    @staticmethod
    def _params(body: bytes) -> dict[str, Any]:
        try:
            params = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise ApiError(INVALID, "The request body is not valid JSON.") from None
        if not isinstance(params, dict):
            raise ApiError(INVALID, "The request body must be a JSON object.")
        return params

    # -- admin hooks -----------------------------------------------------------------------

    def submit_run(self, **fields: Unpack[RunFields]) -> str:
        """Create a run now (QUEUED); unset fields are drawn from the seed. Its UUID."""
        return self._book.submit(mono=self._mono(), wall=self._wall(), **fields).run_uuid

    def submit_group(
        self, count: int, *, spread_seconds: float = 0.0, **fields: Unpack[GroupFields]
    ) -> list[str]:
        """``count`` runs of one run group, created now, whose every status change happens
        within ``spread_seconds`` of each other (durations shared, each run shifted by a
        seeded draw). Outcomes are drawn per run unless given. Their UUIDs."""
        runs = self._book.submit_group(
            count, mono=self._mono(), wall=self._wall(), spread_seconds=spread_seconds, **fields
        )
        return [r.run_uuid for r in runs]

    def set_list_lag(self, seconds: float) -> None:
        """DescribeRuns shows runs as they were ``seconds`` ago from now on."""
        if seconds < 0:
            raise ValueError("the list lag must be >= 0 seconds")
        self._list_lag = seconds

    def set_network(
        self, *, rtt_ms: float = 0.0, jitter_ms: float = 0.0, uplink_share: float = 0.5
    ) -> None:
        """Delay every later API request: round trip ``rtt_ms`` ± ``jitter_ms``, the uplink
        taking ``uplink_share`` of it (see :mod:`watcher.simulator.network`)."""
        self._network.settings = NetworkSettings(rtt_ms, jitter_ms, uplink_share)

    def network_delays(self) -> tuple[float, float]:
        """``(uplink, downlink)`` seconds for the next API request (called by the HTTP layer)."""
        return self._network.delays()

    def set_rate_limit(self, limit: int, *, action: str | None = None) -> None:
        """Requests per sliding second for ``action`` (all actions when ``None``)."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if action is not None and action not in self._limiters:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
        for name, limiter in self._limiters.items():
            if action is None or name == action:
                limiter.limit = limit

    def rate_limit(self, action: str) -> int:
        return self._limiters[action].limit

    def deny_action(self, action: str, code: str | None = "UnauthorizedOperation") -> None:
        """Refuse ``action`` to every caller with error ``code`` (a CAM policy without that
        permission); ``code=None`` allows it again. Refused requests use no rate budget."""
        if action not in self._limiters:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
        if code is None:
            self._denied.pop(action, None)
        else:
            self._denied[action] = code

    def set_max_filter_values(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_filter_values must be >= 1")
        self._max_filter_values = limit

    def set_faults(self, rate: float, kinds: list[str] | tuple[str, ...] | None = None) -> None:
        """Fault rate in [0, 1] and, optionally, the kinds to pick from (aliases allowed)."""
        self._faults.configure(rate=rate, kinds=kinds)

    def set_clock_offset(self, seconds: float) -> None:
        """Shift the server clock used to check X-TC-Timestamp (simulates client skew)."""
        self._clock_offset = seconds

    def server_time(self) -> float:
        return self._wall() + self._clock_offset

    def add_credential(self, credential: Credential) -> None:
        self._auth.add(credential)

    def issue_credential(self, *, ttl: float | None = None, token: bool = True) -> Credential:
        """New temporary credentials (valid for ``ttl`` seconds of server time, if given)."""
        expires = None if ttl is None else self.server_time() + ttl
        credential = new_credential(token=token, expires_at=expires)
        self._auth.add(credential)
        return credential

    def expire_credentials(self, *, secret_id: str | None = None, at: float | None = None) -> None:
        """Refuse ``secret_id`` (default: the main credential) from wall time ``at`` (now)."""
        self._auth.expire(secret_id or self.secret_id, self.server_time() if at is None else at)

    def rotate_token(
        self,
        *,
        secret_id: str | None = None,
        token: str | None = None,
        expires_at: float | None = None,
    ) -> str:
        """Give a credential a new token (random when ``None``), valid until ``expires_at``;
        the old token stops working at once. Returns the new token."""
        new = token or new_credential(token=True).token or ""
        self._auth.rotate_token(secret_id or self.secret_id, new, expires_at)
        return new

    def reset_stats(self) -> None:
        """Zero every counter, window maximum and histogram (limits and runs stay)."""
        self._reset_limiters({a: lim.limit for a, lim in self._limiters.items()})
        self._polls.clear()
        self._errors.clear()
        self._fault_counts.clear()
        self._signature_failures = self._auth_failures = 0

    def _reset_limiters(self, limits: dict[str, int]) -> None:
        hist = self.config.histogram_seconds
        self._limiters = {a: ActionLimiter(n, histogram_seconds=hist) for a, n in limits.items()}

    # -- truth and counters ----------------------------------------------------------------

    def snapshot(self, run_uuid: str) -> Snapshot:
        """The run's state now, as the API would report it (no counters touched)."""
        run = self._book.by_uuid[run_uuid]
        return self._book.lifecycles.snapshot(run, self._mono() - run.created_mono)

    def project_of(self, run_uuid: str) -> str:
        """The run's ProjectId."""
        return self._book.by_uuid[run_uuid].project_id

    def group_of(self, run_uuid: str) -> str:
        """The run's RunGroupId."""
        return self._book.by_uuid[run_uuid].run_group_id

    def status(self, run_uuid: str) -> str:
        return self.snapshot(run_uuid).status

    def timeline(self, run_uuid: str | None = None) -> list[Transition]:
        """Every status change so far (first entry per run: ``None`` -> QUEUED at creation)."""
        now = self._mono()
        book = self._book
        runs = [book.by_uuid[run_uuid]] if run_uuid is not None else book.runs
        return [t for run in runs for t in book.lifecycles.transitions(run, now - run.created_mono)]

    def stats(self, *, timeline: bool = True) -> dict[str, Any]:
        """JSON-ready counters; see the package docstring for every key."""
        limiters = self._limiters
        out: dict[str, Any] = {
            "started_at": self._started_wall,
            "now": self._wall(),
            "uptime_seconds": self._mono() - self._started_mono,
            "runs": len(self._book.runs),
            "requests_total": sum(lim.arrivals for lim in limiters.values()),
            "requests": {a: lim.arrivals for a, lim in limiters.items()},
            "throttled_total": sum(lim.throttled for lim in limiters.values()),
            "throttled": {a: lim.throttled for a, lim in limiters.items()},
            "max_window": {a: lim.max_window for a, lim in limiters.items()},
            "max_window_arrivals": {a: lim.max_window_arrivals for a, lim in limiters.items()},
            "rate_limits": {a: lim.limit for a, lim in limiters.items()},
            "signature_failures": self._signature_failures,
            "auth_failures": self._auth_failures,
            "errors": dict(self._errors),
            "faults": dict(self._fault_counts),
            "fault_rate": self._faults.rate,
            "fault_kinds": list(self._faults.kinds),
            "clock_offset": self._clock_offset,
            "list_lag_seconds": self._list_lag,
            "network": self._network.settings.as_dict(),
            "polls": dict(self._polls),
            "histogram": {a: lim.histogram() for a, lim in limiters.items()},
        }
        if timeline:
            out["timeline"] = [
                {"run_uuid": t.run_uuid, "from": t.previous, "to": t.status, "at": t.at}
                for t in self.timeline()
            ]
        return out
