"""Digests: which outbox rows of a notifier go out together as one message, and that message.

A notifier with ``digest = {...}`` gets its pending rows folded by the dispatcher: rows are
grouped by ``group_by`` (the run's ``run_group`` label, its project, or all together); a
group goes out once ``window_seconds`` have passed since its oldest fresh row arrived, or at
once when it holds ``max_items`` rows or the dispatcher is stopping. Rows that wait behind
the destination's rate limit simply stay in their group, so they join the next message.
A group of one row is sent as that row's own event; a larger one as a :func:`digest_event`.

Invariants (what keeps digests at-least-once and in order):

- :func:`plan` only ever *selects* rows; the dispatcher marks every row of a digest
  delivered after that one message succeeded, and on failure retries all of them together
  (same next attempt), so a row is never acknowledged without having been sent.
- Order per run: a row whose run has an earlier row waiting (not yet due, in flight, in a
  group that is in flight, or beyond a full group) waits too; a digest lists a run's events
  in outbox order.
- A digest's id is derived from the ids of the events it contains (:func:`stable_event_id`),
  so re-sending the same digest carries the same id; ``data.event_ids`` lets a receiver
  deduplicate per event when a retry folds in more rows.
- No row is dropped: a digest holds at most ``max_items`` rows, the rest go in the next one.
- A roll-up (``run_group.completed``) is never folded: it goes alone, once no earlier row of
  its group is pending (waiting for its window, a retry or a send in flight), so it follows
  the message with the group's last runs.

Pure apart from reading the registry through :func:`group_progress`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from watcher.events import DIGEST, GROUP_COMPLETED, RUN_GROUP_LABEL, Event, stable_event_id
from watcher.notifiers.common import DigestSettings
from watcher.notifiers.grouped import category_of, latest_per_run, tally
from watcher.store.models import Delivery

GroupBy = Literal["run_group", "project", "none"]
# Never folded into a digest: sent on their own, after the earlier rows of their group.
SOLO_TYPES = frozenset({DIGEST, GROUP_COMPLETED})


@dataclass(frozen=True, slots=True)
class DigestPolicy:
    """How one notifier's rows are folded (see :class:`DigestSettings`)."""

    window: float = 60.0
    group_by: GroupBy = "run_group"
    max_items: int = 50

    @classmethod
    def from_settings(cls, settings: DigestSettings | None) -> DigestPolicy | None:
        if settings is None:
            return None
        return cls(
            window=settings.window_seconds,
            group_by=settings.group_by,
            max_items=settings.max_items,
        )


def run_key(delivery: Delivery) -> str:
    """What per-run order is kept on (events without a run are ordered on their own)."""
    return delivery.event.run_uuid or f"event:{delivery.event.id}"


def group_of(event: Event, group_by: GroupBy) -> str:
    """The group an event is folded into; ``""`` for runs without one."""
    if group_by == "run_group":
        return event.labels.get(RUN_GROUP_LABEL, "")
    if group_by == "project":
        return event.project_id
    return ""


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows that go out as one message, in outbox order."""

    group: str
    rows: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What may go now, and when to look again (``None``: only when something changes)."""

    ready: list[Batch]
    wake_at: datetime | None


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def plan(
    rows: Iterable[Delivery],
    *,
    policy: DigestPolicy,
    now: datetime,
    busy_runs: Collection[str] = (),
    busy_groups: Collection[str] = (),
    flush: bool = False,
) -> Plan:
    """Group the pending ``rows`` (outbox order) into the batches that may be sent now.

    ``busy_runs``/``busy_groups`` are in flight; ``flush`` ignores the window (stopping).
    """
    blocked = set(busy_runs)
    groups: dict[str, list[Delivery]] = {}
    ready_at: dict[str, datetime] = {}
    solo: dict[str, Batch] = {}
    seen: set[str] = set()  # groups with an earlier pending row, whatever it waits for
    wake: datetime | None = None
    window = timedelta(seconds=policy.window)
    for row in rows:
        run = run_key(row)
        group = group_of(row.event, policy.group_by)
        first_of_group = group not in seen
        seen.add(group)
        if run in blocked:
            continue
        members = groups.setdefault(group, [])
        due = row.next_attempt_at <= now
        lone = row.event.type in SOLO_TYPES
        if lone and first_of_group and due and group not in busy_groups:
            solo[group] = Batch(group, (row,))  # a roll-up: alone, after its group's rows
            continue
        if lone or not due or group in busy_groups or group in solo:
            waits = True
        else:
            waits = len(members) >= policy.max_items
        if waits:
            # This row waits, and so does every later row of its run.
            blocked.add(run)
            if not due:
                wake = _earliest(wake, row.next_attempt_at)
            continue
        members.append(row)
        # A fresh row waits for company; a retried one is sent as soon as it is due.
        at = row.created_at + window if row.attempts == 0 else row.next_attempt_at
        ready_at[group] = min(ready_at.get(group, at), at)
    ready: list[Batch] = []
    for group, members in groups.items():
        if not members:
            continue
        if flush or len(members) >= policy.max_items or ready_at[group] <= now:
            ready.append(Batch(group, tuple(members)))
        else:
            wake = _earliest(wake, ready_at[group])
    ready.extend(solo.values())
    return Plan(ready, wake)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run group stands in the registry: ``finished`` = total − running."""

    total: int
    finished: int
    succeeded: int
    failed: int
    other: int  # finished otherwise: canceled, preempted, not found, ...
    running: int

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.running == 0

    @classmethod
    def of(cls, runs: Iterable[tuple[str | None, bool, bool]]) -> Progress:
        """From ``(status, terminal, stopped)`` of each run."""
        counts = {"failed": 0, "attention": 0, "other": 0, "succeeded": 0, "running": 0}
        for status, terminal, stopped in runs:
            counts[category_of(status, terminal=terminal, stopped=stopped)] += 1
        total = sum(counts.values())
        return cls(
            total=total,
            finished=total - counts["running"],
            succeeded=counts["succeeded"],
            failed=counts["failed"],
            other=counts["other"] + counts["attention"],
            running=counts["running"],
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "finished": self.finished,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "other": self.other,
            "running": self.running,
        }


class Member(Protocol):
    """A run of a group as the registry holds it."""

    @property
    def status(self) -> str | None: ...
    @property
    def terminal(self) -> bool: ...
    @property
    def stopped(self) -> bool: ...


class GroupStore(Protocol):
    """The part of :class:`watcher.store.Store` that knows the runs of a group."""

    def group_members(self, run_group: str) -> Sequence[Member]: ...


def group_progress(store: GroupStore, run_group: str) -> Progress | None:
    """The registry's view of ``run_group``, or ``None`` when it has no tracked run."""
    members = store.group_members(run_group)
    if not members:
        return None
    return Progress.of((m.status, m.terminal, m.stopped) for m in members)


def digest_event(
    events: Sequence[Event], *, group_by: GroupBy, group: str, progress: Progress | None
) -> Event:
    """One ``digest`` event carrying ``events`` (outbox order) and the group's progress."""
    if not events:
        raise ValueError("a digest needs at least one event")
    ids = [event.id for event in events]
    projects = {event.project_id for event in events}
    lines = latest_per_run(events)
    labels = {RUN_GROUP_LABEL: group} if group_by == "run_group" and group else {}
    return Event(
        type=DIGEST,
        id=stable_event_id(DIGEST, *ids),
        timestamp=max(event.timestamp for event in events),
        data={
            "group_by": group_by,
            "group": group,
            "project_id": projects.pop() if len(projects) == 1 else "",
            "labels": labels,
            "event_ids": ids,
            "run_count": len(lines),
            "counts": dict(tally(lines)),
            "progress": None if progress is None else progress.to_dict(),
            "events": [event.to_dict() for event in events],
        },
    )
