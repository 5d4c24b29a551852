"""Static configuration of the Omics API simulator.

:class:`SimulatorConfig` is a frozen value: everything a simulator starts from, and nothing
that changes while it serves (runtime knobs such as a lowered rate limit or a new fault rate
live in :class:`~watcher.simulator.simulator.Simulator`). It is validated on construction so a
bad value fails at the call site rather than mid-benchmark.

Invariants: ranges are ``(low, high)`` with ``0 <= low <= high``; mixes are non-negative
weights with a positive sum (they need not sum to 1); fault kinds are names from
:data:`FAULT_KINDS`; the first project id is the region's default project.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

API_VERSION = "2022-11-28"
SERVICE = "omics"

GET_RUN_STATUS = "GetRunStatus"
DESCRIBE_RUNS = "DescribeRuns"
GET_RUN_CALLS = "GetRunCalls"
GET_RUN_JOB_LOG = "GetRunJobLog"
ACTIONS: tuple[str, ...] = (GET_RUN_STATUS, DESCRIBE_RUNS, GET_RUN_CALLS, GET_RUN_JOB_LOG)

# Lifecycle kinds (see runs.py): how a run's status evolves over time.
FINISHING = "finishing"  # QUEUED -> INITIALIZING -> RUNNING -> outcome
FOREVER = "forever"  # QUEUED -> INITIALIZING -> RUNNING, then RUNNING forever
HUNG = "hung"  # QUEUED -> ... -> hung_status, then stays there forever
FLAPPING = "flapping"  # changes status at random intervals, forever
KINDS: tuple[str, ...] = (FINISHING, FOREVER, HUNG, FLAPPING)

# Transport-level faults, picked by default when fault_rate > 0.
INTERNAL_ERROR = "internal_error"  # a well-formed InternalError answer
BAD_GATEWAY = "bad_gateway"  # HTTP 502 with an HTML body
SLOW = "slow"  # answer only after slow_seconds
DROP = "drop"  # close the connection without answering
# Malformed answers: only when selected explicitly (or with the "malformed" alias).
MALFORMED_NON_JSON = "malformed_non_json"
MALFORMED_NO_RESPONSE = "malformed_no_response"
MALFORMED_NO_PAYLOAD = "malformed_no_payload"  # e.g. no Metadata in GetRunStatus
MALFORMED_WRONG_TYPES = "malformed_wrong_types"
MALFORMED_HUGE = "malformed_huge"  # a 1 MB string field
TRANSPORT_FAULTS: tuple[str, ...] = (INTERNAL_ERROR, BAD_GATEWAY, SLOW, DROP)
MALFORMED_FAULTS: tuple[str, ...] = (
    MALFORMED_NON_JSON,
    MALFORMED_NO_RESPONSE,
    MALFORMED_NO_PAYLOAD,
    MALFORMED_WRONG_TYPES,
    MALFORMED_HUGE,
)
FAULT_KINDS: tuple[str, ...] = TRANSPORT_FAULTS + MALFORMED_FAULTS


def expand_fault_kinds(kinds: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Resolve the aliases ``transport``, ``malformed`` and ``all``; reject unknown names."""
    out: list[str] = []
    for kind in kinds:
        names = {
            "transport": TRANSPORT_FAULTS,
            "malformed": MALFORMED_FAULTS,
            "all": FAULT_KINDS,
        }.get(kind, (kind,))
        for name in names:
            if name not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {name!r}; known: {', '.join(FAULT_KINDS)}")
            if name not in out:
                out.append(name)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Credential:
    """A SecretId/SecretKey pair, with a token when it stands for temporary credentials.

    ``expires_at`` is a wall-clock epoch time after which the simulator refuses it.
    """

    secret_id: str
    secret_key: str
    token: str | None = None
    expires_at: float | None = None


def _default_outcomes() -> dict[str, float]:
    return {"SUCCESS": 0.7, "EXECUTOR_ERROR": 0.2, "CANCELED": 0.1}


def _default_kinds() -> dict[str, float]:
    return {FINISHING: 1.0}


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything a simulator starts from. Defaults suit ``omics-watcher demo``.

    Times are seconds. A run created at ``t0`` stays QUEUED for ``queued_seconds``, INITIALIZING for
    ``initializing_seconds`` and RUNNING for ``running_seconds`` (each drawn uniformly from the
    range with the seed), then ends with an outcome drawn from ``outcomes``. The defaults let a
    run finish within 14 s.
    """

    runs: int = 10
    seed: int = 0
    # Lifecycles.
    kinds: Mapping[str, float] = field(default_factory=_default_kinds)
    outcomes: Mapping[str, float] = field(default_factory=_default_outcomes)
    queued_seconds: tuple[float, float] = (0.5, 2.0)
    initializing_seconds: tuple[float, float] = (0.5, 2.0)
    running_seconds: tuple[float, float] = (2.0, 10.0)
    hung_status: str = "INITIALIZING"
    flap_period_seconds: float = 5.0  # mean time between two changes of a flapping run
    flap_statuses: tuple[str, ...] = ("RUNNING", "PAUSED")
    unknown_status: str | None = None  # e.g. "PAUSED_BY_ADMIN": a detour inside RUNNING
    unknown_fraction: float = 0.0  # share of finishing runs that take the detour
    # Ownership.
    project_ids: tuple[str, ...] = ("prj-sim-default",)
    runs_per_group: int = 50
    applications: int = 3
    # API behaviour.
    rate_limit: int = 20  # per action, any sliding 1 s window, counted at arrival
    rate_limits: Mapping[str, int] = field(default_factory=dict)  # per-action overrides
    max_filter_values: int = 100
    max_timestamp_skew: float = 300.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = TRANSPORT_FAULTS
    slow_seconds: float = 15.0
    # Credentials: generated at random when None.
    secret_id: str | None = None
    secret_key: str | None = None
    token: str | None = None  # when set, requests must carry it in X-TC-Token
    region: str = "ap-guangzhou"
    # Per-second request histogram: how many seconds of history to keep per action.
    histogram_seconds: int = 3600
    # Bursts (see runs.py): when set, the runs of one generated group share their phase
    # durations and each moves within this many seconds of the others (queue, start, end).
    group_spread_seconds: float | None = None
    # DescribeRuns shows each run as it was this many seconds ago (GetRunStatus: as it is).
    list_lag_seconds: float = 0.0
    # Simulated network (see network.py): round trip and its jitter, per API request; the
    # uplink takes ``uplink_share`` of it, and the rate limit counts after the uplink.
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    uplink_share: float = 0.5

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.runs < 0:
            problems.append("runs must be >= 0")
        for name in ("queued_seconds", "initializing_seconds", "running_seconds"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                problems.append(f"{name} must be (low, high) with 0 <= low <= high")
        for name, mix, known in (
            ("kinds", self.kinds, KINDS),
            ("outcomes", self.outcomes, None),
        ):
            if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
                problems.append(f"{name} weights must be >= 0 with a positive sum")
            if known is not None and set(mix) - set(known):
                problems.append(f"{name}: unknown {sorted(set(mix) - set(known))}")
        if not self.project_ids:
            problems.append("project_ids must not be empty")
        if self.runs_per_group < 1 or self.applications < 1:
            problems.append("runs_per_group and applications must be >= 1")
        if self.rate_limit < 0 or any(v < 0 for v in self.rate_limits.values()):
            problems.append("rate limits must be >= 0")
        if set(self.rate_limits) - set(ACTIONS):
            problems.append(
                f"rate_limits: unknown actions {sorted(set(self.rate_limits) - set(ACTIONS))}"
            )
        if not self.hung_status:
            problems.append("hung_status must not be empty")
        if self.max_filter_values < 1:
            problems.append("max_filter_values must be >= 1")
        if not 0.0 <= self.fault_rate <= 1.0:
            problems.append("fault_rate must be within [0, 1]")
        if not 0.0 <= self.unknown_fraction <= 1.0:
            problems.append("unknown_fraction must be within [0, 1]")
        if self.flap_period_seconds <= 0:
            problems.append("flap_period_seconds must be > 0")
        flaps = self.flap_statuses
        if len(flaps) < 2 or any(flaps[i] == flaps[i - 1] for i in range(len(flaps))):
            problems.append("flap_statuses needs >= 2 entries, no two neighbours equal (cyclic)")
        problems.extend(_burst_problems(self))
        if (self.secret_id is None) != (self.secret_key is None):
            problems.append("secret_id and secret_key go together")
        try:
            expand_fault_kinds(self.fault_kinds)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))

    def limit_for(self, action: str) -> int:
        return self.rate_limits.get(action, self.rate_limit)


# The default phase ranges (QUEUED, INITIALIZING, RUNNING) end a run within this many seconds.
DEFAULT_RUN_SECONDS = 14.0


def phase_ranges(
    run_seconds: float,
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """``(queued_seconds, initializing_seconds, running_seconds)`` for runs that take at most
    ``run_seconds`` from QUEUED to their outcome: the default ranges scaled, so
    ``run_seconds=14`` gives the defaults and any value keeps their shape (each run takes
    between 3/14 and all of it, a fifth to a half of which before RUNNING)."""
    if run_seconds <= 0:
        raise ValueError("run_seconds must be > 0")
    k = run_seconds / DEFAULT_RUN_SECONDS
    return (0.5 * k, 2.0 * k), (0.5 * k, 2.0 * k), (2.0 * k, 10.0 * k)


def network_problems(rtt_ms: float, jitter_ms: float, uplink_share: float) -> list[str]:
    """What is wrong with a network setting (empty when it is fine)."""
    problems = []
    if rtt_ms < 0 or jitter_ms < 0:
        problems.append("rtt_ms and jitter_ms must be >= 0")
    if jitter_ms > rtt_ms:
        problems.append("jitter_ms must not exceed rtt_ms (a delay is never negative)")
    if not 0.0 <= uplink_share <= 1.0:
        problems.append("uplink_share must be within [0, 1]")
    return problems


def _burst_problems(config: SimulatorConfig) -> list[str]:
    problems = network_problems(config.rtt_ms, config.jitter_ms, config.uplink_share)
    if config.group_spread_seconds is not None and config.group_spread_seconds < 0:
        problems.append("group_spread_seconds must be >= 0")
    if config.list_lag_seconds < 0:
        problems.append("list_lag_seconds must be >= 0")
    return problems
