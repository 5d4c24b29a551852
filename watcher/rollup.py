"""Run-group roll-ups: one ``run_group.completed`` event per group, once every run finished.

The recorder reports each event it recorded (:meth:`RollupTracker.observe`); a finished run
of a labelled group (``run_group``) marks that group for a check. :meth:`RollupTracker.run`
checks marked groups at most every ``interval`` seconds, so a burst of 96 finishing runs
costs a few registry reads, not 96. It also checks, once at start, every group a run of
which finished within ``since_seconds`` (what a crash between a group's last transition and
its roll-up would otherwise lose), and once more when stopping.

Invariants:

- Once per group: the event id is derived from the group name
  (:func:`~watcher.events.stable_event_id`) and the store records an id at most once, so
  repeated checks, a restart or two processes never make a second roll-up for a group.
- At-least-once: the roll-up is an ordinary event, written with its outbox rows in one
  transaction by the :class:`~watcher.sink.EventSink` (so it is counted and announced like
  every event), that the dispatcher delivers like any other (a digest never folds it in).
- It goes to the notifiers with ``rollup = true`` among those the routes select for it;
  with none, nothing is recorded (a later start may still record it within
  ``since_seconds``).
- Complete means: the group has tracked runs and each is terminal or no longer known to the
  API. A run tracked into a group after its roll-up does not produce another one.
- A group whose failure events still wait for their details (held deliveries, see
  :mod:`watcher.recorder`) is checked again at the next interval, so its roll-up lists each
  failure with the details its own event carries.

Logs: ``run_group_completed`` (group, runs, notifiers), ``rollup_check_failed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from watcher.delivery.digest import Progress
from watcher.events import (
    GROUP_COMPLETED,
    NOT_FOUND,
    RUN_GROUP_LABEL,
    STATUS_CHANGED,
    Event,
    isoformat_z,
    stable_event_id,
)
from watcher.notifiers.render import failure_of
from watcher.sink import EventSink
from watcher.statuses import DEFAULT_STATUSES, Statuses
from watcher.store.groups import GroupMember
from watcher.store.pg.lease import LeaseLost
from watcher.tasks import wait_set

DEFAULT_INTERVAL = 1.0
DEFAULT_SINCE_SECONDS = 86400.0
MAX_LISTED_RUNS = 2000  # runs listed in data.runs; all are counted in data.progress
MAX_FAILURE_LOOKUPS = 50  # failed runs whose failure details are looked up


class RollupStore(Protocol):
    """The part of the :class:`~watcher.store.api.AsyncStore` the tracker reads (it writes
    through the sink)."""

    async def group_members(self, run_group: str) -> list[GroupMember]: ...

    async def has_event(self, event_id: str) -> bool: ...

    async def groups_finished_since(self, since: datetime) -> list[str]: ...

    async def held_runs(self, run_uuids: Collection[str]) -> set[str]: ...

    async def events(
        self,
        *,
        limit: int = 100,
        run_uuid: str | None = None,
        before_seq: int | None = None,
        event_type: str | None = None,
    ) -> list[Event]: ...


def rollup_id(run_group: str) -> str:
    """The one id a group's roll-up ever has."""
    return stable_event_id(GROUP_COMPLETED, run_group)


def _common_labels(members: Sequence[GroupMember]) -> dict[str, str]:
    common = dict(members[0].labels)
    for member in members[1:]:
        common = {k: v for k, v in common.items() if member.labels.get(k) == v}
    return common


class RollupTracker:
    """Records each run group's roll-up once; see the module docstring."""

    def __init__(
        self,
        *,
        store: RollupStore,
        sink: EventSink,
        targets: Callable[[], Collection[str]],
        clock: Callable[[], datetime],
        interval: float = DEFAULT_INTERVAL,
        since_seconds: float = DEFAULT_SINCE_SECONDS,
        statuses: Statuses = DEFAULT_STATUSES,
    ) -> None:
        """``targets``: the notifiers that want roll-ups (``rollup = true``), read each time."""
        self._store = store
        self._sink = sink
        self._targets = targets
        self._clock = clock
        self._interval = interval
        self._since = since_seconds
        self._statuses = statuses
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._log = structlog.get_logger("watcher.rollup")

    def observe(self, event: Event) -> None:
        """A recorded event: if it finished a run of a group, check that group soon."""
        group = event.labels.get(RUN_GROUP_LABEL, "")
        finished = event.type == NOT_FOUND or (event.type == STATUS_CHANGED and event.terminal)
        if group and finished:
            self._dirty.add(group)
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Check at start, then marked groups as they come, and once more after ``stop``."""
        await self._sweep()
        while not stop.is_set():
            waiter = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                woken.cancel()
            if not stop.is_set():
                # Let a burst of finishing runs collect before reading the registry.
                await wait_set(stop, self._interval)
            await self._check_dirty()
        await self._check_dirty()

    async def _sweep(self) -> None:
        since = self._clock() - timedelta(seconds=self._since)
        try:
            self._dirty.update(await self._store.groups_finished_since(since))
        except LeaseLost:
            raise  # this daemon is no longer the active one: its supervisor decides
        except Exception as exc:  # a failed sweep only loses the crash-window check
            self._log.error("rollup_check_failed", error=str(exc), during="sweep")
        await self._check_dirty()

    async def _check_dirty(self) -> None:
        self._wake.clear()
        groups, self._dirty = sorted(self._dirty), set()
        for group in groups:
            try:
                await self.check(group)
            except LeaseLost:
                self._dirty.update(groups)  # the next active daemon's sweep finds them anyway
                raise
            except Exception as exc:  # the state file: keep the group for the next check
                self._dirty.add(group)
                self._wake.set()  # retried after the next interval
                self._log.error("rollup_check_failed", run_group=group, error=str(exc))

    async def check(self, group: str) -> Event | None:
        """Record ``group``'s roll-up if it is complete and has none yet; return it."""
        if not self._targets():
            return None
        event_id = rollup_id(group)
        if await self._store.has_event(event_id):
            return None
        members = await self._store.group_members(group)
        progress = Progress.of(
            ((m.status, m.terminal, m.stopped) for m in members), statuses=self._statuses
        )
        if not progress.complete:
            return None
        if await self._store.held_runs([m.run_uuid for m in members]):
            self._dirty.add(group)  # failure details on their way: look again next interval
            self._wake.set()
            return None
        event = await self._event(event_id, group, members, progress)
        notifiers = self._sink.route(event, only=frozenset(self._targets()))
        if not notifiers or not await self._sink.emit(event, notifiers=notifiers):
            return None
        self._log.info(
            "run_group_completed", run_group=group, runs=progress.total, notifiers=notifiers
        )
        return event

    async def _event(
        self, event_id: str, group: str, members: Sequence[GroupMember], progress: Progress
    ) -> Event:
        now = self._clock()
        projects = {m.project_id for m in members}
        runs: list[dict[str, Any]] = []
        lookups = 0
        for member in members[:MAX_LISTED_RUNS]:
            run: dict[str, Any] = {
                "run_uuid": member.run_uuid,
                "project_id": member.project_id,
                "status": member.status,
                "terminal": member.terminal,
                "stopped": member.stopped,
                "failure": None,
            }
            failed = self._statuses.category(member.status, terminal=member.terminal) == "failed"
            if failed and not member.stopped and lookups < MAX_FAILURE_LOOKUPS:
                lookups += 1
                run["failure"] = await self._failure(member.run_uuid)
            runs.append(run)
        return Event(
            type=GROUP_COMPLETED,
            id=event_id,
            timestamp=now,
            data={
                "run_group": group,
                "project_id": projects.pop() if len(projects) == 1 else "",
                "labels": _common_labels(members),
                "status": None,
                "terminal": True,
                "observed_at": isoformat_z(now),
                "progress": progress.to_dict(),
                "runs": runs,
                "runs_omitted": max(0, len(members) - MAX_LISTED_RUNS),
            },
        )

    async def _failure(self, run_uuid: str) -> dict[str, str] | None:
        """The failure of a run's latest event (enriched, or the metadata's ErrorMessage)."""
        for event in await self._store.events(limit=1, run_uuid=run_uuid):
            failure = failure_of(event.data)
            if failure is not None:
                return {
                    "task": failure.task,
                    "message": failure.message,
                    "stderr_tail": failure.stderr_tail,
                }
        return None
