"""Planning: which outbox rows of a notifier go out together as one message, and that message.

Every send is a :class:`Send`: the rows one notifier call delivers. Without a digest policy
a send is one row, the oldest pending one of its run, once it is due. A notifier with
``digest = {...}`` gets its pending rows folded: rows are grouped by ``group_by`` (the
run's ``run_group`` label, its project, or all together); a group goes out once
``window_seconds`` have passed since its oldest fresh row arrived, or at once when it holds
``max_items`` rows or the dispatcher is stopping. Rows that wait behind
the destination's rate limit simply stay in their group, so they join the next message.
A group of one row is sent as that row's own event; a larger one as a :func:`digest_event`.

Invariants (what keeps digests at-least-once and in order):

- :func:`plan` only ever *selects* rows; the dispatcher marks every row of a send
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
from watcher.notifiers.grouped import latest_per_run, tally
from watcher.statuses import DEFAULT_STATUSES, Statuses
from watcher.store.models import Delivery

GroupBy = Literal["run_group", "project", "none"]
# Never folded into a digest: sent on their own, after the earlier rows of their group.
SOLO_TYPES = frozenset({DIGEST, GROUP_COMPLETED})


@dataclass(frozen=True, slots=True)
class DigestPolicy:
    """How one notifier's rows are folded (``digest = {...}`` on a notifier)."""

    window: float = 60.0
    group_by: GroupBy = "run_group"
    max_items: int = 50


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
class Send:
    """The rows one notifier call delivers, in outbox order: one row, or a digest's rows."""

    group: str  # the digest group; "" for a row sent on its own
    rows: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What may go now, and when to look again (``None``: only when something changes)."""

    ready: list[Send]
    wake_at: datetime | None


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def plan(
    rows: Iterable[Delivery],
    *,
    policy: DigestPolicy | None,
    now: datetime,
    busy_runs: Collection[str] = (),
    busy_groups: Collection[str] = (),
    flush: bool = False,
    room: int | None = None,
) -> Plan:
    """The sends that may start now from the pending ``rows`` (outbox order), at most ``room``.

    Without a ``policy`` each send is one row; with one, rows are folded by group.
    ``busy_runs``/``busy_groups`` are in flight; ``flush`` ignores the window (stopping).
    When ``room`` cuts the list short, ``wake_at`` may miss later rows: the caller plans
    again when a send finishes.
    """
    if room is not None and room <= 0:
        return Plan([], None)
    if policy is None:
        return _one_by_one(rows, now=now, busy_runs=busy_runs, room=room)
    folded = _folded(
        rows, policy=policy, now=now, busy_runs=busy_runs, busy_groups=busy_groups, flush=flush
    )
    return folded if room is None else Plan(folded.ready[:room], folded.wake_at)


def _one_by_one(
    rows: Iterable[Delivery], *, now: datetime, busy_runs: Collection[str], room: int | None
) -> Plan:
    """Each run's oldest pending row, alone, once it is due and its run has none in flight."""
    seen: set[str] = set()
    ready: list[Send] = []
    wake: datetime | None = None
    for row in rows:
        run = run_key(row)
        if run in seen:
            continue  # only the oldest pending row of a run may go
        seen.add(run)
        if run in busy_runs:
            continue
        if row.next_attempt_at > now:
            wake = _earliest(wake, row.next_attempt_at)
            continue
        ready.append(Send("", (row,)))
        if len(ready) == room:
            break  # stop early: a backlog of due rows is planned a few at a time
    return Plan(ready, wake)


def _folded(
    rows: Iterable[Delivery],
    *,
    policy: DigestPolicy,
    now: datetime,
    busy_runs: Collection[str],
    busy_groups: Collection[str],
    flush: bool,
) -> Plan:
    """Rows folded by group: a group goes once its window passed, it is full, or ``flush``."""
    blocked = set(busy_runs)
    groups: dict[str, list[Delivery]] = {}
    ready_at: dict[str, datetime] = {}
    solo: dict[str, Send] = {}
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
            solo[group] = Send(group, (row,))  # a roll-up: alone, after its group's rows
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
    ready: list[Send] = []
    for group, members in groups.items():
        if not members:
            continue
        if flush or len(members) >= policy.max_items or ready_at[group] <= now:
            ready.append(Send(group, tuple(members)))
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
    def of(
        cls,
        runs: Iterable[tuple[str | None, bool, bool]],
        *,
        statuses: Statuses = DEFAULT_STATUSES,
    ) -> Progress:
        """From ``(status, terminal, stopped)`` of each run, counted as ``statuses`` says."""
        counts = {"failed": 0, "attention": 0, "other": 0, "succeeded": 0, "running": 0}
        for status, terminal, stopped in runs:
            counts[statuses.category(status, terminal=terminal, stopped=stopped)] += 1
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
    """The part of the :class:`~watcher.store.api.AsyncStore` that knows a group's runs."""

    async def group_members(self, run_group: str) -> Sequence[Member]: ...


async def group_progress(
    store: GroupStore, run_group: str, *, statuses: Statuses = DEFAULT_STATUSES
) -> Progress | None:
    """The registry's view of ``run_group``, or ``None`` when it has no tracked run."""
    members = await store.group_members(run_group)
    if not members:
        return None
    return Progress.of(((m.status, m.terminal, m.stopped) for m in members), statuses=statuses)


def digest_event(
    events: Sequence[Event],
    *,
    group_by: GroupBy,
    group: str,
    progress: Progress | None,
    statuses: Statuses = DEFAULT_STATUSES,
) -> Event:
    """One ``digest`` event carrying ``events`` (outbox order) and the group's progress."""
    if not events:
        raise ValueError("a digest needs at least one event")
    ids = [event.id for event in events]
    projects = {event.project_id for event in events}
    lines = latest_per_run(events, statuses)
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
