"""What each page shows, read from the store in one go and shaped for the templates.

Why separate from the handlers: the functions here that take a store await it through
:class:`~watcher.store.api.AsyncStore`, so a page reads a SQLite file or PostgreSQL alike
(any replica, active or standby); the reads that may touch many rows never hold the event
loop (the SQLite adapter runs them on its reader connection off the loop, PostgreSQL in the
server), and the handler only renders the finished view. Values are kept as they came
(labels, stderr, error texts): the templates escape them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from watcher.events import NOT_FOUND, STATUS_CHANGED, Event, isoformat_z
from watcher.statuses import Statuses
from watcher.store import TrackedRun
from watcher.store.api import AsyncStore
from watcher.store.history import HistoryEntry
from watcher.store.overview import GroupCount, NotifierOutbox, WindowPage
from watcher.store.registry import RunFilter

# Not yet running: the statuses a run passes through before its tasks start.
QUEUED_STATUSES = frozenset({"QUEUED", "PENDING", "SUBMITTED", "STARTING", "INITIALIZING"})
BAR_PARTS = ("succeeded", "failed", "running", "queued", "other")
FEED_EVENTS = 20
FAILURES_SHOWN = 10
GROUPS_SHOWN = 20
STDERR_TAIL_CHARS = 4000
HISTORY_SHOWN = 100  # the newest events of a run's page (a page stays under 150 KB)


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``2 h 04 min``, ``3 d 4 h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def relative(moment: datetime | None, now: datetime) -> str:
    """``3 min 05 s ago`` (or ``in ...`` for a future moment); ``-`` for none."""
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    return f"{duration(seconds)} ago" if seconds > 0 else f"in {duration(-seconds)}"


def bar_part(statuses: Statuses, status: str | None, *, terminal: bool, stopped: bool) -> str:
    """Where a run counts in a group's progress bar (one of :data:`BAR_PARTS`)."""
    category = statuses.category(status, terminal=terminal, stopped=stopped)
    if category == "running":
        return "queued" if status is None or status.upper() in QUEUED_STATUSES else "running"
    return category if category in ("succeeded", "failed") else "other"


@dataclass(frozen=True, slots=True)
class Segment:
    part: str
    runs: int
    x: float  # percent of the bar's width where the segment starts
    width: float


@dataclass(frozen=True, slots=True)
class GroupView:
    name: str
    total: int
    counts: dict[str, int]
    segments: list[Segment]

    @property
    def summary(self) -> str:
        shown = [f"{self.counts[p]} {p}" for p in BAR_PARTS if self.counts.get(p)]
        return ", ".join(shown) + f" of {self.total}"


def group_view(name: str, rows: Sequence[GroupCount], statuses: Statuses) -> GroupView:
    counts = dict.fromkeys(BAR_PARTS, 0)
    for row in rows:
        counts[bar_part(statuses, row.status, terminal=row.terminal, stopped=row.stopped)] += (
            row.runs
        )
    total = sum(counts.values())
    segments, x = [], 0.0
    for part in BAR_PARTS:
        if counts[part]:
            width = 100.0 * counts[part] / total
            segments.append(Segment(part, counts[part], round(x, 3), round(width, 3)))
            x += width
    return GroupView(name, total, counts, segments)


@dataclass(frozen=True, slots=True)
class EventView:
    """One line of the live feed (also sent as JSON over server-sent events)."""

    seq: int
    id: str
    type: str
    run_uuid: str
    status: str
    previous: str
    at: str  # ISO 8601, UTC
    severity: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.id,
            "type": self.type,
            "run_uuid": self.run_uuid,
            "status": self.status,
            "previous": self.previous,
            "at": self.at,
            "severity": self.severity,
        }


def event_view(seq: int, event: Event, statuses: Statuses) -> EventView:
    return EventView(
        seq=seq,
        id=event.id,
        type=event.type,
        run_uuid=event.run_uuid,
        status=event.status or "",
        previous=event.previous_status or "",
        at=isoformat_z(event.timestamp),
        severity=statuses.severity(event.status) if event.type == STATUS_CHANGED else "info",
    )


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a run failed, from its failing transition's ``data.failure``."""

    task: str
    message: str
    stderr_tail: str


def failure_of(event: Event | None) -> Failure | None:
    raw = event.data.get("failure") if event is not None else None
    if not isinstance(raw, Mapping):
        return None
    text = {k: str(raw.get(k) or "") for k in ("task", "message", "stderr_tail")}
    return Failure(text["task"], text["message"], text["stderr_tail"][-STDERR_TAIL_CHARS:])


@dataclass(frozen=True, slots=True)
class Overview:
    counts: list[tuple[str, int, str]]  # (status, runs, severity)
    total: int
    active: int
    groups: list[GroupView]
    more_groups: bool  # more groups are in progress than shown
    failures: list[tuple[TrackedRun, Failure | None]]
    events: list[EventView]
    outboxes: list[NotifierOutbox]
    pending: int
    oldest_pending: float
    dead: int


def active_runs(counts: Mapping[str | None, int], statuses: Statuses) -> int:
    return sum(n for status, n in counts.items() if not statuses.is_terminal(status))


async def read_overview(store: AsyncStore, statuses: Statuses, now: datetime) -> Overview:
    """Everything the overview shows but the watcher's in-memory health."""
    figures = await store.state_figures(now=now)  # the runs by status and the outbox at once
    counts = figures.runs_by_status
    shown: list[tuple[str, int, str]] = sorted(
        ((s or "unknown"), n, statuses.severity(s)) for s, n in counts.items() if n
    )
    found = await store.active_groups(limit=GROUPS_SHOWN + 1)
    groups = [group_view(name, rows, statuses) for name, rows in found.items()]
    failed = await store.latest_in_statuses(statuses.failing, limit=FAILURES_SHOWN)
    failures = [(run, failure_of(await store.last_event_of(run.run_uuid))) for run in failed]
    logged = await store.event_log(limit=FEED_EVENTS)
    events = [event_view(seq, e, statuses) for seq, e in logged]
    return Overview(
        counts=shown,
        total=sum(counts.values()),
        active=active_runs(counts, statuses),
        groups=groups[:GROUPS_SHOWN],
        more_groups=len(groups) > GROUPS_SHOWN,
        failures=failures,
        events=events,
        outboxes=await store.notifier_outboxes(),
        pending=figures.outbox_pending,
        oldest_pending=figures.oldest_pending_seconds,
        dead=await store.dead_letter_count(),
    )


@dataclass(frozen=True, slots=True)
class RunsQuery:
    """The runs page's filters as given (for the form and the next page's link)."""

    status: str = ""
    label: str = ""
    run_group: str = ""
    project: str = ""
    prefix: str = ""
    cursor: str | None = None

    def run_filter(self) -> RunFilter:
        labels: dict[str, str] = {}
        if self.label:
            key, _, value = self.label.partition("=")
            labels[key.strip()] = value
        if self.run_group:
            labels["run_group"] = self.run_group
        return RunFilter(
            status=self.status or None,
            labels=labels,
            project_id=self.project or None,
            uuid_prefix=self.prefix.lower() or None,
        )

    def params(self) -> dict[str, str]:
        """The filters given, as query parameters (the cursor left out)."""
        pairs = {
            "status": self.status,
            "label": self.label,
            "run_group": self.run_group,
            "project": self.project,
            "prefix": self.prefix,
        }
        return {k: v for k, v in pairs.items() if v}


async def read_runs(store: AsyncStore, query: RunsQuery, limit: int) -> WindowPage:
    """One page of the runs page (a bounded read: see :meth:`Store.page_runs_window`)."""
    return await store.page_runs_window(query.run_filter(), limit=limit, cursor=query.cursor)


@dataclass(frozen=True, slots=True)
class Step:
    """One status of a run's timeline and how long the run had it."""

    status: str
    at: datetime
    lasted: float | None  # None: still the current status of an unfinished run
    severity: str


@dataclass(frozen=True, slots=True)
class RunDetail:
    run: TrackedRun
    steps: list[Step]
    metadata: list[tuple[str, str]]
    failure: Failure | None
    history: list[HistoryEntry] = field(default_factory=list)
    dead_letters: int = 0  # in the whole history, not only the newest events shown


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


async def read_run(store: AsyncStore, run_uuid: str, statuses: Statuses) -> RunDetail | None:
    run = await store.get_run(run_uuid)
    if run is None:
        return None
    history = await store.run_history(run_uuid) or []
    changes = [h.event for h in history if h.event.type in (STATUS_CHANGED, NOT_FOUND)]
    steps: list[Step] = []
    for i, event in enumerate(changes):
        status = event.status or ("NOT FOUND" if event.type == NOT_FOUND else "")
        nxt = changes[i + 1].timestamp if i + 1 < len(changes) else None
        lasted = (nxt - event.timestamp).total_seconds() if nxt is not None else None
        if lasted is None and run.terminal:
            lasted = 0.0
        steps.append(Step(status, event.timestamp, lasted, statuses.severity(event.status)))
    latest = changes[-1] if changes else None
    raw = latest.data.get("metadata") if latest is not None else None
    metadata = (
        sorted((str(k), _scalar(v)) for k, v in raw.items()) if isinstance(raw, Mapping) else []
    )
    failing = [e for e in changes if isinstance(e.data.get("failure"), Mapping)]
    return RunDetail(
        run=run,
        steps=steps,
        metadata=metadata,
        failure=failure_of(failing[-1]) if failing else None,
        history=history[-HISTORY_SHOWN:],
        dead_letters=sum(d.state == "dead" for h in history for d in h.deliveries),
    )
