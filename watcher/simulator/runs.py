"""Run lifecycles: what status a simulated run has at any moment, computed, never stored.

A :class:`Run` holds only what identifies it (UUID, project, group, application), when it was
created (a monotonic and a wall-clock time taken at the same instant) and a 128-bit seeded
hash. Its whole schedule (phase durations, outcome, detours, flapping change times) is derived
from that hash and the :class:`~watcher.simulator.config.SimulatorConfig` on every call, so
memory is O(runs) with a small constant and independent of how long the simulator runs.

Invariants:
- Same seed and index give the same run (UUID, ids, schedule), whatever the number of runs.
- A schedule is a list of ``(offset, status)`` with strictly increasing offsets from 0
  (``QUEUED``); the status at elapsed time ``e`` is the last entry with ``offset <= e``.
- Consecutive statuses differ, so every schedule entry after the first is a transition.
- Flapping runs change status at ``t_run + P * (k + u_k)`` for change ``k`` with
  ``u_k`` in [0.25, 0.75): gaps lie in (P/2, 3P/2), so the status at a time is O(1) to find.

Bursts: real work is a run group of many samples submitted together. With
``group_spread_seconds = S`` (or :meth:`RunBook.submit_group`) the runs of one group share
phase durations ``(q, i, r)`` (drawn once per group) and each run is shifted by its own seeded
``j`` in ``[0, S)``: run durations ``(q + j, i, r)``. So all of them are QUEUED at once, and
each later change (INITIALIZING, RUNNING, the outcome) happens to the whole group within ``S``
seconds; outcomes stay per run (some fail). Such runs store their durations (3 floats).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypedDict, Unpack

from watcher.simulator.config import (
    FINISHING,
    FLAPPING,
    FOREVER,
    HUNG,
    KINDS,
    SimulatorConfig,
)

QUEUED = "QUEUED"
INITIALIZING = "INITIALIZING"
RUNNING = "RUNNING"
CHAIN: tuple[str, ...] = (QUEUED, INITIALIZING, RUNNING)

# Slots of 16 bits in a run's hash, one per independent draw.
_U_KIND, _U_OUTCOME, _U_QUEUED, _U_INIT, _U_RUNNING, _U_DETOUR, _U_FAIL, _U_FLAP = range(8)
_MASK64 = (1 << 64) - 1
_K_SPREAD = 1 << 40  # the _mix index of a run's shift inside its group (never a flap index)


class GroupFields(TypedDict, total=False):
    """What a submitted group of runs may be given; what is unset (or ``None``) is drawn
    from the seed."""

    durations: tuple[float, float, float] | None
    run_group_id: str | None
    project_id: str | None
    application_id: str | None
    kind: str | None
    outcome: str | None


class RunFields(GroupFields, total=False):
    """What one submitted run may be given, beyond :class:`GroupFields`."""

    run_uuid: str | None
    user_defined_id: str | None


def _frac(h: int, slot: int) -> float:
    return ((h >> (16 * slot)) & 0xFFFF) / 65536.0


def _mix(h: int, k: int) -> float:
    """A seeded uniform draw in [0, 1) for flapping change ``k`` (splitmix64 finaliser)."""
    z = (h + (k + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


def _cumulative(weights: dict[str, float]) -> tuple[tuple[float, str], ...]:
    """``(upper bound, name)`` pairs for drawing from a weighted mix with one uniform draw."""
    total = sum(weights.values())
    out, acc = [], 0.0
    for name, weight in weights.items():
        if weight <= 0:
            continue
        acc += weight / total
        out.append((acc, name))
    return tuple(out)


def _pick(table: tuple[tuple[float, str], ...], u: float) -> str:
    for bound, name in table:
        if u < bound:
            return name
    return table[-1][1]


def _span(bounds: tuple[float, float], u: float) -> float:
    low, high = bounds
    return low + (high - low) * u


def seeded_digest(seed: int, label: str, size: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{label}".encode(), digest_size=size).digest()


@dataclass(slots=True)
class Run:
    """One simulated run. ``kind``/``outcome``/``durations`` are set for submitted runs only;
    generated runs derive them from ``h``."""

    run_uuid: str
    index: int
    h: int
    project_id: str
    run_group_id: str
    application_id: str
    created_mono: float
    created_wall: float
    user_defined: str | None = None
    kind: str | None = None
    outcome: str | None = None
    durations: tuple[float, float, float] | None = None

    @property
    def user_defined_id(self) -> str:
        return self.user_defined if self.user_defined is not None else f"sample-{self.index:06d}"


@dataclass(frozen=True, slots=True)
class Transition:
    """One status change of one run; ``at`` is wall-clock epoch seconds."""

    run_uuid: str
    previous: str | None
    status: str
    at: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A run's state at one moment; offsets are seconds since the run was created."""

    status: str
    since: float  # offset at which ``status`` began
    started: float | None  # offset at which it left QUEUED (the StartTime), if it did
    ended: float | None  # offset at which it reached its outcome, if it did
    progress: float  # share of its RUNNING work done, in [0, 1]
    kind: str
    outcome: str  # the outcome it ends (or would end) with
    fail_draw: float  # seeded draw that picks which task fails

    @property
    def terminal(self) -> bool:
        return self.ended is not None


class Lifecycles:
    """Schedules for runs under one configuration; pure functions of ``(run, elapsed)``."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._kinds = _cumulative({k: w for k, w in config.kinds.items() if k in KINDS})
        self._outcomes = _cumulative(dict(config.outcomes))
        self._reaches_running = config.hung_status not in (QUEUED, INITIALIZING)

    def kind_of(self, run: Run) -> str:
        return run.kind or _pick(self._kinds, _frac(run.h, _U_KIND))

    def outcome_of(self, run: Run) -> str:
        return run.outcome or _pick(self._outcomes, _frac(run.h, _U_OUTCOME))

    def durations_of(self, run: Run) -> tuple[float, float, float]:
        if run.durations is not None:
            return run.durations
        cfg, h = self._config, run.h
        return (
            _span(cfg.queued_seconds, _frac(h, _U_QUEUED)),
            _span(cfg.initializing_seconds, _frac(h, _U_INIT)),
            _span(cfg.running_seconds, _frac(h, _U_RUNNING)),
        )

    def schedule(
        self, run: Run, kind: str | None = None, durations: tuple[float, float, float] | None = None
    ) -> list[tuple[float, str]]:
        """The finite part of the schedule; a flapping run continues after its last entry."""
        cfg = self._config
        kind = kind or self.kind_of(run)
        tq, ti, tr = durations or self.durations_of(run)
        t_run = tq + ti
        steps = [(0.0, QUEUED), (tq, INITIALIZING)]
        steps.append((t_run, cfg.flap_statuses[0] if kind == FLAPPING else RUNNING))
        if kind == HUNG:
            if cfg.hung_status in CHAIN:
                return _dedupe(steps[: CHAIN.index(cfg.hung_status) + 1])
            steps.append((t_run + tr, cfg.hung_status))
        elif kind == FINISHING:
            detour = cfg.unknown_status
            if detour and _frac(run.h, _U_DETOUR) < cfg.unknown_fraction and tr > 0:
                steps.append((t_run + 0.4 * tr, detour))
                steps.append((t_run + 0.6 * tr, RUNNING))
            steps.append((t_run + tr, self.outcome_of(run)))
        return _dedupe(steps)

    def _flap_changes(self, run: Run, since_run: float) -> int:
        """How many flapping changes happened ``since_run`` seconds after entering RUNNING."""
        x = since_run / self._config.flap_period_seconds
        k = math.floor(x)
        return k + (1 if x - k >= 0.25 + 0.5 * _mix(run.h, k) else 0)

    def _flap_offset(self, run: Run, t_run: float, k: int) -> float:
        return t_run + self._config.flap_period_seconds * (k + 0.25 + 0.5 * _mix(run.h, k))

    def snapshot(self, run: Run, elapsed: float) -> Snapshot:
        kind = self.kind_of(run)
        tq, ti, tr = durations = self.durations_of(run)
        steps = self.schedule(run, kind, durations)
        i = max(0, bisect.bisect_right(steps, (elapsed, "\uffff")) - 1)
        since, status = steps[i]
        t_run = tq + ti
        left_queue = next((o for o, s in steps if s != QUEUED), None)
        started = left_queue if left_queue is not None and elapsed >= left_queue else None
        ended = since if kind == FINISHING and i == len(steps) - 1 else None
        if kind == FLAPPING and elapsed >= steps[-1][0]:
            t_flap = steps[-1][0]
            n = self._flap_changes(run, elapsed - t_flap)
            flaps = self._config.flap_statuses
            status = flaps[n % len(flaps)]
            since = self._flap_offset(run, t_flap, n - 1) if n > 0 else t_flap
        reaches_running = kind != HUNG or self._reaches_running
        if ended is not None:
            progress = 1.0
        elif not reaches_running or elapsed <= t_run or tr <= 0:
            progress = 0.0
        else:
            # Unending runs crawl towards, but never reach, the end of their work.
            progress = min((elapsed - t_run) / tr, 0.95)
        return Snapshot(
            status=status,
            since=since,
            started=started,
            ended=ended,
            progress=progress,
            kind=kind,
            outcome=self.outcome_of(run),
            fail_draw=_frac(run.h, _U_FAIL),
        )

    def transitions(self, run: Run, elapsed: float) -> Iterator[Transition]:
        """Every change up to ``elapsed`` (the creation itself included, from ``None``)."""
        previous: str | None = None
        steps = self.schedule(run)
        for offset, status in steps:
            if offset > elapsed:
                return
            yield Transition(run.run_uuid, previous, status, run.created_wall + offset)
            previous = status
        if self.kind_of(run) != FLAPPING:
            return
        t_run = steps[-1][0]
        flaps = self._config.flap_statuses
        for k in range(self._flap_changes(run, elapsed - t_run)):
            status = flaps[(k + 1) % len(flaps)]
            at = run.created_wall + self._flap_offset(run, t_run, k)
            yield Transition(run.run_uuid, previous, status, at)
            previous = status


def _dedupe(steps: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Drop entries that repeat the previous status or do not move time forward."""
    out: list[tuple[float, str]] = []
    for offset, status in steps:
        if out and status == out[-1][1]:
            continue
        if out and offset <= out[-1][0]:
            out[-1] = (out[-1][0], status)
            if len(out) > 1 and out[-2][1] == status:
                out.pop()
            continue
        out.append((offset, status))
    return out


class RunBook:
    """All runs of one simulator and the indexes the API needs (by UUID, by run group)."""

    def __init__(self, config: SimulatorConfig, *, mono: float, wall: float) -> None:
        self._config = config
        self.lifecycles = Lifecycles(config)
        self.runs: list[Run] = []
        self.by_uuid: dict[str, Run] = {}
        self.by_group: dict[str, list[Run]] = {}
        self._groups: dict[int, tuple[str, str, str]] = {}
        for index in range(config.runs):
            self._add(self._generated(index, mono=mono, wall=wall))

    @property
    def default_project(self) -> str:
        return self._config.project_ids[0]

    def group(self, number: int) -> tuple[str, str, str]:
        """``(project_id, run_group_id, application_id)`` of run group ``number``."""
        found = self._groups.get(number)
        if found is None:
            cfg = self._config
            app = number // len(cfg.project_ids)  # independent of the project
            found = (
                cfg.project_ids[number % len(cfg.project_ids)],
                "rg-" + seeded_digest(cfg.seed, f"rg:{number}", 4).hex(),
                "app-" + seeded_digest(cfg.seed, f"app:{app % cfg.applications}", 4).hex(),
            )
            self._groups[number] = found
        return found

    def group_durations(self, key: str) -> tuple[float, float, float]:
        """The phase durations every run of group ``key`` shares (seeded, from the ranges)."""
        cfg = self._config
        d = seeded_digest(cfg.seed, f"group-durations:{key}", 6)
        u = [int.from_bytes(d[k : k + 2], "big") / 65536.0 for k in (0, 2, 4)]
        return (
            _span(cfg.queued_seconds, u[0]),
            _span(cfg.initializing_seconds, u[1]),
            _span(cfg.running_seconds, u[2]),
        )

    @staticmethod
    def shifted(run: Run, base: tuple[float, float, float], spread: float) -> None:
        """Give ``run`` the group's durations, shifted by its own draw in ``[0, spread)``."""
        q, i, r = base
        run.durations = (q + spread * _mix(run.h, _K_SPREAD), i, r)

    def _generated(self, index: int, *, mono: float, wall: float) -> Run:
        run = self._plain(index, mono=mono, wall=wall)
        spread = self._config.group_spread_seconds
        if spread is not None:
            number = index // self._config.runs_per_group
            self.shifted(run, self.group_durations(str(number)), spread)
        return run

    def _plain(self, index: int, *, mono: float, wall: float) -> Run:
        digest = seeded_digest(self._config.seed, f"run:{index}", 32)
        project_id, group_id, app_id = self.group(index // self._config.runs_per_group)
        return Run(
            run_uuid=str(uuid.UUID(bytes=digest[:16], version=4)),
            index=index,
            h=int.from_bytes(digest[16:], "big"),
            project_id=project_id,
            run_group_id=group_id,
            application_id=app_id,
            created_mono=mono,
            created_wall=wall,
        )

    def _add(self, run: Run) -> None:
        if run.run_uuid in self.by_uuid:
            raise ValueError(f"run {run.run_uuid} already exists")
        self.runs.append(run)
        self.by_uuid[run.run_uuid] = run
        self.by_group.setdefault(run.run_group_id, []).append(run)

    def submit(self, *, mono: float, wall: float, **fields: Unpack[RunFields]) -> Run:
        """Create a run now. Unset fields are drawn from the seed like generated runs'."""
        kind, durations = fields.get("kind"), fields.get("durations")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        if durations is not None and (len(durations) != 3 or min(durations) < 0):
            raise ValueError("durations must be three non-negative numbers")
        # Index n draws what generated run n would: a submitted run is "one more run".
        base = self._plain(len(self.runs), mono=mono, wall=wall)
        if (run_uuid := fields.get("run_uuid")) is not None:
            base.run_uuid = str(uuid.UUID(run_uuid))
        if (project_id := fields.get("project_id")) is not None:
            base.project_id = project_id
        if (run_group_id := fields.get("run_group_id")) is not None:
            base.run_group_id = run_group_id
        if (application_id := fields.get("application_id")) is not None:
            base.application_id = application_id
        base.user_defined = fields.get("user_defined_id")
        base.kind, base.outcome, base.durations = kind, fields.get("outcome"), durations
        self._add(base)
        return base

    def submit_group(
        self,
        count: int,
        *,
        mono: float,
        wall: float,
        spread_seconds: float,
        **fields: Unpack[GroupFields],
    ) -> list[Run]:
        """``count`` runs of one new (or given) group, created now, moving within
        ``spread_seconds`` of each other; unset fields are drawn from the seed (the
        outcome per run, so some fail with the default mix)."""
        if count < 1 or spread_seconds < 0:
            raise ValueError("count must be >= 1 and spread_seconds >= 0")
        first = self._plain(len(self.runs), mono=mono, wall=wall)
        group = fields.get("run_group_id") or (
            "rg-" + seeded_digest(self._config.seed, f"rg-burst:{len(self.runs)}", 4).hex()
        )
        base = fields.get("durations") or self.group_durations(group)
        shared: GroupFields = {
            **fields,
            "project_id": fields.get("project_id") or first.project_id,
            "run_group_id": group,
            "application_id": fields.get("application_id") or first.application_id,
            "durations": base,
        }
        out = []
        for _ in range(count):
            run = self.submit(mono=mono, wall=wall, **shared)
            self.shifted(run, base, spread_seconds)
            out.append(run)
        return out


__all__ = [
    "CHAIN",
    "FINISHING",
    "FLAPPING",
    "FOREVER",
    "HUNG",
    "INITIALIZING",
    "QUEUED",
    "RUNNING",
    "GroupFields",
    "Lifecycles",
    "Run",
    "RunBook",
    "RunFields",
    "Snapshot",
    "Transition",
]
