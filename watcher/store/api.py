"""The store interface every caller uses, whichever backend holds the state (issue 15).

Why: the state may live in one SQLite file (the embedded default) or in PostgreSQL (several
replicas). Callers see one interface, :class:`AsyncStore`: the methods of the sync SQLite
:class:`~watcher.store.Store` that callers use, with the same names, arguments and value
types, each ``async``. Two classes provide it:

- :class:`SqliteStore` adapts the sync store and calls it directly on the loop (one
  coroutine frame, no thread hop, no lock: a transaction costs hundreds of microseconds, the
  frame about one). The reads that may read far more rows than they return (a filtered
  page of the registry or of the event log, a run's history, the dead letters, the status
  page's overview reads) run off the loop on a second connection, inside the adapter
  (:class:`~watcher.service.reads.OffLoopReads`, used from here only). Writes
  always stay on the loop's connection, so the compare-and-set never races a reader.
- :class:`~watcher.store.pg.store.PgStore` (``watcher/store/pg/``) for PostgreSQL: the
  server does the work, the loop only awaits.

:func:`open_async_store` opens one or the other from ``[state] path`` or ``url``. The sync
:class:`~watcher.store.Store` and its tests stay as they are; SQLite-only housekeeping (WAL
checkpoints, the retention worker's own connection) reaches it through
:attr:`SqliteStore.sync`.

Invariants: every method keeps the sync store's documented semantics on both backends
(``tests/test_store_contract*.py`` run the same assertions against each); errors are
:class:`~watcher.store.db.StateError`, ``ValueError`` for bad arguments, and, on a fenced
PostgreSQL store, :class:`~watcher.store.pg.lease.LeaseLost`.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from watcher.delivery.silencing import Silence
from watcher.events import Event, RunState
from watcher.service.reads import OffLoopReads
from watcher.store.db import StateMissing, utc_now
from watcher.store.figures import StateFigures
from watcher.store.groups import GroupMember
from watcher.store.history import DeadLetter, HistoryEntry, Redelivery
from watcher.store.journal import PruneStep
from watcher.store.models import (
    ActiveRun,
    Delivery,
    DiscoveredRun,
    TrackedRun,
    TrackRequest,
    TrackResult,
)
from watcher.store.overview import (
    SCAN_COLUMN_ROWS,
    SCAN_LABEL_ROWS,
    GroupCount,
    NotifierOutbox,
    WindowPage,
)
from watcher.store.registry import RunFilter, RunPage, RunPageJson, walk_runs
from watcher.store.store import Store

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StateOptions:
    """Where the state lives: ``[state] path`` (SQLite) or ``url`` (PostgreSQL), exactly one
    set, and ``lease_seconds`` (the active daemon's lease on PostgreSQL). ``url`` is a
    secret (it may carry a password): never logged, never in an error (the opened store's
    ``name`` says which database it is)."""

    path: Path | None
    url: str | None = field(default=None, repr=False)
    lease_seconds: float = 15.0

    @property
    def postgres(self) -> bool:
        return self.url is not None

    async def open(
        self, *, create: bool = True, clock: Callable[[], datetime] = utc_now
    ) -> AsyncStore:
        """:func:`open_async_store` for this state."""
        return await open_async_store(
            path=None if self.url is not None else self.path,
            url=self.url,
            create=create,
            clock=clock,
            lease_seconds=self.lease_seconds,
        )


class HistoryStore(Protocol):
    """A run's delivery history, the dead letters and their redelivery: what the admin API's
    history routes use (:mod:`watcher.service.history_api`). Part of :class:`AsyncStore`,
    declared once here so the narrow view cannot drift from it."""

    async def run_history(self, run_uuid: str) -> list[HistoryEntry] | None: ...

    async def list_dead_letters(
        self, *, notifier: str | None = None, limit: int = 1000, before_id: int | None = None
    ) -> list[DeadLetter]: ...

    async def redeliver(self, which: Redelivery) -> list[int]: ...


class SilenceStore(Protocol):
    """The silences as the user keeps them: added, ended, read one or all (the admin API's
    :mod:`watcher.service.silences_api`). Part of :class:`AsyncStore`, declared once here."""

    async def add_silence(
        self,
        *,
        matchers: Mapping[str, str],
        ends_at: datetime,
        notifiers: Sequence[str] = (),
        starts_at: datetime | None = None,
        comment: str = "",
    ) -> Silence: ...

    async def expire_silence(self, silence_id: int) -> Silence | None: ...

    async def get_silence(self, silence_id: int) -> Silence | None: ...

    async def silences(self) -> list[Silence]: ...


class SilenceSource(Protocol):
    """The silences as the daemon applies them: the ones in force, and a number that moves
    whenever they may have changed (:class:`~watcher.delivery.silencer.LiveSilences`). Part
    of :class:`AsyncStore`, declared once here."""

    async def silence_version(self) -> int: ...

    async def current_silences(self) -> list[Silence]: ...


class AsyncStore(HistoryStore, SilenceStore, SilenceSource, Protocol):
    """The watcher's state, on either backend. See each method of the sync
    :class:`~watcher.store.Store` (same name) for its full contract. The history and
    silences methods are declared in :class:`HistoryStore`, :class:`SilenceStore` and
    :class:`SilenceSource`, which callers needing only those take."""

    @property
    def name(self) -> str:
        """What error messages and logs call this state: the file's path, or ``database
        NAME`` (never a URL: it may carry a password)."""
        ...

    async def close(self) -> None: ...

    # -- registry --------------------------------------------------------------------------
    async def track(self, requests: Iterable[TrackRequest]) -> TrackResult: ...

    async def untrack(self, run_uuids: Iterable[str]) -> list[str]: ...

    async def get_run(self, run_uuid: str) -> TrackedRun | None: ...

    async def list_runs(self) -> list[TrackedRun]: ...

    def iter_runs(
        self, where: RunFilter | None = None, *, page: int = 1000
    ) -> AsyncIterator[TrackedRun]: ...

    async def page_runs(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPage: ...

    async def page_runs_json(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPageJson: ...

    async def tracked_among(self, run_uuids: Iterable[str]) -> set[str]: ...

    async def active_runs(self) -> list[ActiveRun]: ...

    async def snapshot(self) -> tuple[int, list[ActiveRun]]: ...

    async def changes_since(self, cursor: int) -> tuple[int, list[ActiveRun], list[str]]: ...

    async def record_polls(self, polled: Sequence[tuple[str, datetime]]) -> None: ...

    async def record_error(
        self, run_uuid: str, *, consecutive_errors: int, next_poll_after: datetime | None
    ) -> None: ...

    async def labels_of(self, run_uuid: str) -> dict[str, str]: ...

    async def count_by_status(self) -> dict[str | None, int]: ...

    async def stuck_candidates(self, *, after_seconds: float) -> list[TrackedRun]: ...

    # -- recording -------------------------------------------------------------------------
    async def record_observation(
        self,
        state: RunState,
        event: Event | None,
        *,
        notifiers: Sequence[str],
        held_until: datetime | None = None,
    ) -> bool: ...

    async def record_not_found(
        self, run_uuid: str, event: Event, *, notifiers: Sequence[str]
    ) -> bool: ...

    async def record_event(self, event: Event, *, notifiers: Sequence[str]) -> bool: ...

    # -- journal and retention -------------------------------------------------------------
    async def event_log(
        self,
        *,
        limit: int = 100,
        run_uuid: str | None = None,
        before_seq: int | None = None,
        event_type: str | None = None,
    ) -> list[tuple[int, Event]]: ...

    async def events(
        self,
        *,
        limit: int = 100,
        run_uuid: str | None = None,
        before_seq: int | None = None,
        event_type: str | None = None,
    ) -> list[Event]: ...

    async def prune_events(self, *, before: datetime) -> int: ...

    async def prune_finished_runs(self, *, finished_before: datetime, limit: int) -> PruneStep: ...

    async def prune_orphan_events(
        self, *, recorded_before: datetime, after_seq: int, limit: int
    ) -> tuple[int, int | None]: ...

    async def release_free_pages(self, max_pages: int) -> int:
        """SQLite only gives free pages back (0 on PostgreSQL: autovacuum's work)."""
        ...

    # -- outbox ----------------------------------------------------------------------------
    async def pending_deliveries(
        self, notifier: str | None = None, limit: int = 100
    ) -> list[Delivery]: ...

    async def mark_delivered(self, delivery_id: int) -> None: ...

    async def mark_silenced(self, delivery_id: int, reason: str) -> None: ...

    async def mark_retry(
        self, delivery_id: int, *, attempts: int, next_attempt_at: datetime, error: str
    ) -> None: ...

    async def mark_dead(
        self, delivery_id: int, *, error: str, attempts: int | None = None
    ) -> None: ...

    async def dead_letters(self, *, limit: int = 100) -> list[Delivery]: ...

    async def outbox_stats(self, *, now: datetime) -> tuple[int, float]: ...

    async def dead_letter_removed_notifiers(self, *, known_notifiers: set[str]) -> list[int]: ...

    async def outbox_version(self) -> Hashable:
        """A cheap value that changes whenever a row may have become due to send other
        than through the dispatcher's own marks: a row inserted (by any process), put back
        by ``redeliver``, or released from hold. Equal at two reads: none of these committed
        in between, so an idle dispatcher need not re-read the outbox
        (:mod:`watcher.store.outbox_changes`). It may change more often (one re-read too
        many), never less."""
        ...

    # -- delivery history and redelivery (the rest in HistoryStore) ------------------------
    async def run_dead_letters(self, run_uuid: str) -> list[DeadLetter] | None: ...

    # -- what /metrics reports of the state ------------------------------------------------
    async def state_figures(self, *, now: datetime) -> StateFigures: ...

    # -- held deliveries -------------------------------------------------------------------
    async def release_event(self, event_id: str, enriched: Event | None = None) -> bool: ...

    async def held_events(self, *, limit: int = 10_000) -> list[Event]: ...

    async def release_held(self) -> int: ...

    async def held_runs(self, run_uuids: Collection[str]) -> set[str]: ...

    # -- discovery, groups, references -----------------------------------------------------
    async def track_discovered(
        self, runs: Sequence[DiscoveredRun], *, baseline: bool, terminal: frozenset[str]
    ) -> list[str]: ...

    async def discovery_done(self, watch_key: str) -> bool: ...

    async def mark_discovery_done(self, watch_key: str) -> None: ...

    async def group_members(self, run_group: str) -> list[GroupMember]: ...

    async def has_event(self, event_id: str) -> bool: ...

    async def groups_finished_since(self, since: datetime) -> list[str]: ...

    async def status_references(
        self, run_uuids: Sequence[str] | None = None
    ) -> dict[str, tuple[float | None, float | None]]: ...

    # -- the status page's reads -----------------------------------------------------------
    async def active_groups(self, *, limit: int = 20) -> dict[str, list[GroupCount]]: ...

    async def latest_in_statuses(
        self, statuses: Iterable[str], *, limit: int
    ) -> list[TrackedRun]: ...

    async def page_runs_window(
        self,
        where: RunFilter,
        *,
        limit: int,
        cursor: str | None = None,
        windows: tuple[int, int] = (SCAN_LABEL_ROWS, SCAN_COLUMN_ROWS),
    ) -> WindowPage: ...

    async def last_event_of(self, run_uuid: str) -> Event | None: ...

    async def events_after(self, seq: int, *, limit: int) -> list[tuple[int, Event]]: ...

    async def last_event_seq(self) -> int: ...

    async def dead_letter_count(self) -> int: ...

    async def notifier_outboxes(self) -> list[NotifierOutbox]: ...


class DerivedReads:
    """The reads both backends derive the same way from another of their methods:
    ``list_runs`` and ``iter_runs`` walk ``page_runs``; ``events`` is ``event_log``
    without the sequence numbers. :class:`SqliteStore` and
    :class:`~watcher.store.pg.store.PgStore` both inherit them."""

    if TYPE_CHECKING:

        async def event_log(
            self,
            *,
            limit: int = 100,
            run_uuid: str | None = None,
            before_seq: int | None = None,
            event_type: str | None = None,
        ) -> list[tuple[int, Event]]: ...

        async def page_runs(
            self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
        ) -> RunPage: ...

    async def list_runs(self) -> list[TrackedRun]:
        return [run async for run in self.iter_runs()]

    def iter_runs(
        self, where: RunFilter | None = None, *, page: int = 1000
    ) -> AsyncIterator[TrackedRun]:
        return walk_runs(self.page_runs, where, page)

    async def events(
        self,
        *,
        limit: int = 100,
        run_uuid: str | None = None,
        before_seq: int | None = None,
        event_type: str | None = None,
    ) -> list[Event]:
        found = await self.event_log(
            limit=limit, run_uuid=run_uuid, before_seq=before_seq, event_type=event_type
        )
        return [event for _, event in found]


class SqliteStore(DerivedReads):
    """:class:`AsyncStore` over the sync SQLite :class:`~watcher.store.Store` (see the module
    docstring: writes and cheap reads on the loop, heavy reads off it)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._reads: OffLoopReads[Store] = OffLoopReads(store, store.open_reader)

    @classmethod
    def open(cls, path: str | Path, *, clock: Callable[[], datetime] = utc_now) -> SqliteStore:
        """Open (creating and migrating as needed) the state file; :class:`StateError`."""
        return cls(Store.open(path, clock=clock))

    @property
    def sync(self) -> Store:
        """The sync store, for SQLite-only housekeeping (checkpoints, the pruner's worker)."""
        return self._store

    @property
    def name(self) -> str:
        return self._store.path

    async def close(self) -> None:
        await self._reads.close()
        self._store.close()

    async def _off_loop(self, read: Callable[[Store], T]) -> T:
        return await self._reads.run(read)

    # -- registry --------------------------------------------------------------------------
    async def track(self, requests: Iterable[TrackRequest]) -> TrackResult:
        return self._store.track(requests)

    async def untrack(self, run_uuids: Iterable[str]) -> list[str]:
        return self._store.untrack(run_uuids)

    async def get_run(self, run_uuid: str) -> TrackedRun | None:
        return self._store.get_run(run_uuid)

    async def page_runs(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPage:
        return await self._off_loop(
            lambda store: store.page_runs(limit=limit, cursor=cursor, where=where)
        )

    async def page_runs_json(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPageJson:
        return await self._off_loop(
            lambda store: store.page_runs_json(limit=limit, cursor=cursor, where=where)
        )

    async def tracked_among(self, run_uuids: Iterable[str]) -> set[str]:
        return self._store.tracked_among(run_uuids)

    async def active_runs(self) -> list[ActiveRun]:
        return self._store.active_runs()

    async def snapshot(self) -> tuple[int, list[ActiveRun]]:
        return self._store.snapshot()

    async def changes_since(self, cursor: int) -> tuple[int, list[ActiveRun], list[str]]:
        return self._store.changes_since(cursor)

    async def record_polls(self, polled: Sequence[tuple[str, datetime]]) -> None:
        self._store.record_polls(polled)

    async def record_error(
        self, run_uuid: str, *, consecutive_errors: int, next_poll_after: datetime | None
    ) -> None:
        self._store.record_error(
            run_uuid, consecutive_errors=consecutive_errors, next_poll_after=next_poll_after
        )

    async def labels_of(self, run_uuid: str) -> dict[str, str]:
        return self._store.labels_of(run_uuid)

    async def count_by_status(self) -> dict[str | None, int]:
        return self._store.count_by_status()

    async def stuck_candidates(self, *, after_seconds: float) -> list[TrackedRun]:
        return self._store.stuck_candidates(after_seconds=after_seconds)

    # -- recording -------------------------------------------------------------------------
    async def record_observation(
        self,
        state: RunState,
        event: Event | None,
        *,
        notifiers: Sequence[str],
        held_until: datetime | None = None,
    ) -> bool:
        return self._store.record_observation(
            state, event, notifiers=notifiers, held_until=held_until
        )

    async def record_not_found(
        self, run_uuid: str, event: Event, *, notifiers: Sequence[str]
    ) -> bool:
        return self._store.record_not_found(run_uuid, event, notifiers=notifiers)

    async def record_event(self, event: Event, *, notifiers: Sequence[str]) -> bool:
        return self._store.record_event(event, notifiers=notifiers)

    # -- journal and retention -------------------------------------------------------------
    async def event_log(
        self,
        *,
        limit: int = 100,
        run_uuid: str | None = None,
        before_seq: int | None = None,
        event_type: str | None = None,
    ) -> list[tuple[int, Event]]:
        def read(store: Store) -> list[tuple[int, Event]]:
            return store.event_log(
                limit=limit, run_uuid=run_uuid, before_seq=before_seq, event_type=event_type
            )

        if event_type is None:  # an index range (by seq, or by run): cheap on the loop
            return read(self._store)
        return await self._off_loop(read)

    async def prune_events(self, *, before: datetime) -> int:
        return self._store.prune_events(before=before)

    async def prune_finished_runs(self, *, finished_before: datetime, limit: int) -> PruneStep:
        return self._store.prune_finished_runs(finished_before=finished_before, limit=limit)

    async def prune_orphan_events(
        self, *, recorded_before: datetime, after_seq: int, limit: int
    ) -> tuple[int, int | None]:
        return self._store.prune_orphan_events(
            recorded_before=recorded_before, after_seq=after_seq, limit=limit
        )

    async def release_free_pages(self, max_pages: int) -> int:
        return self._store.release_free_pages(max_pages)

    # -- outbox ----------------------------------------------------------------------------
    async def pending_deliveries(
        self, notifier: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        return self._store.pending_deliveries(notifier, limit)

    async def mark_delivered(self, delivery_id: int) -> None:
        self._store.mark_delivered(delivery_id)

    async def mark_silenced(self, delivery_id: int, reason: str) -> None:
        self._store.mark_silenced(delivery_id, reason)

    async def mark_retry(
        self, delivery_id: int, *, attempts: int, next_attempt_at: datetime, error: str
    ) -> None:
        self._store.mark_retry(
            delivery_id, attempts=attempts, next_attempt_at=next_attempt_at, error=error
        )

    async def mark_dead(self, delivery_id: int, *, error: str, attempts: int | None = None) -> None:
        self._store.mark_dead(delivery_id, error=error, attempts=attempts)

    async def dead_letters(self, *, limit: int = 100) -> list[Delivery]:
        return self._store.dead_letters(limit=limit)

    async def outbox_stats(self, *, now: datetime) -> tuple[int, float]:
        return self._store.outbox_stats(now=now)

    async def dead_letter_removed_notifiers(self, *, known_notifiers: set[str]) -> list[int]:
        return self._store.dead_letter_removed_notifiers(known_notifiers=known_notifiers)

    async def outbox_version(self) -> Hashable:
        return self._store.outbox_changes().version()

    # -- delivery history and redelivery ---------------------------------------------------
    async def run_history(self, run_uuid: str) -> list[HistoryEntry] | None:
        return await self._off_loop(lambda store: store.run_history(run_uuid))

    async def list_dead_letters(
        self, *, notifier: str | None = None, limit: int = 1000, before_id: int | None = None
    ) -> list[DeadLetter]:
        return await self._off_loop(
            lambda store: store.list_dead_letters(
                notifier=notifier, limit=limit, before_id=before_id
            )
        )

    async def run_dead_letters(self, run_uuid: str) -> list[DeadLetter] | None:
        return await self._off_loop(lambda store: store.run_dead_letters(run_uuid))

    async def redeliver(self, which: Redelivery) -> list[int]:
        return self._store.redeliver(which)

    # -- what /metrics reports of the state (off the loop: it counts the pending rows) -----
    async def state_figures(self, *, now: datetime) -> StateFigures:
        return await self._off_loop(lambda store: store.state_figures(now=now))

    # -- silences --------------------------------------------------------------------------
    async def add_silence(
        self,
        *,
        matchers: Mapping[str, str],
        ends_at: datetime,
        notifiers: Sequence[str] = (),
        starts_at: datetime | None = None,
        comment: str = "",
    ) -> Silence:
        return self._store.add_silence(
            matchers=matchers,
            ends_at=ends_at,
            notifiers=notifiers,
            starts_at=starts_at,
            comment=comment,
        )

    async def expire_silence(self, silence_id: int) -> Silence | None:
        return self._store.expire_silence(silence_id)

    async def get_silence(self, silence_id: int) -> Silence | None:
        return self._store.get_silence(silence_id)

    async def silences(self) -> list[Silence]:
        return self._store.silences()

    async def current_silences(self) -> list[Silence]:
        return self._store.current_silences()

    async def silence_version(self) -> int:
        return self._store.silence_version()

    # -- held deliveries -------------------------------------------------------------------
    async def release_event(self, event_id: str, enriched: Event | None = None) -> bool:
        return self._store.release_event(event_id, enriched)

    async def held_events(self, *, limit: int = 10_000) -> list[Event]:
        return self._store.held_events(limit=limit)

    async def release_held(self) -> int:
        return self._store.release_held()

    async def held_runs(self, run_uuids: Collection[str]) -> set[str]:
        return self._store.held_runs(run_uuids)

    # -- discovery, groups, references -----------------------------------------------------
    async def track_discovered(
        self, runs: Sequence[DiscoveredRun], *, baseline: bool, terminal: frozenset[str]
    ) -> list[str]:
        return self._store.track_discovered(runs, baseline=baseline, terminal=terminal)

    async def discovery_done(self, watch_key: str) -> bool:
        return self._store.discovery_done(watch_key)

    async def mark_discovery_done(self, watch_key: str) -> None:
        self._store.mark_discovery_done(watch_key)

    async def group_members(self, run_group: str) -> list[GroupMember]:
        return self._store.group_members(run_group)

    async def has_event(self, event_id: str) -> bool:
        return self._store.has_event(event_id)

    async def groups_finished_since(self, since: datetime) -> list[str]:
        return self._store.groups_finished_since(since)

    async def status_references(
        self, run_uuids: Sequence[str] | None = None
    ) -> dict[str, tuple[float | None, float | None]]:
        return self._store.status_references(run_uuids)

    # -- the status page's reads (off the loop: each reads a few index ranges) -------------
    async def active_groups(self, *, limit: int = 20) -> dict[str, list[GroupCount]]:
        return await self._off_loop(lambda store: store.active_groups(limit=limit))

    async def latest_in_statuses(self, statuses: Iterable[str], *, limit: int) -> list[TrackedRun]:
        wanted = list(statuses)
        return await self._off_loop(lambda store: store.latest_in_statuses(wanted, limit=limit))

    async def page_runs_window(
        self,
        where: RunFilter,
        *,
        limit: int,
        cursor: str | None = None,
        windows: tuple[int, int] = (SCAN_LABEL_ROWS, SCAN_COLUMN_ROWS),
    ) -> WindowPage:
        return await self._off_loop(
            lambda store: store.page_runs_window(where, limit=limit, cursor=cursor, windows=windows)
        )

    async def last_event_of(self, run_uuid: str) -> Event | None:
        return self._store.last_event_of(run_uuid)

    async def events_after(self, seq: int, *, limit: int) -> list[tuple[int, Event]]:
        return self._store.events_after(seq, limit=limit)

    async def last_event_seq(self) -> int:
        return self._store.last_event_seq()

    async def dead_letter_count(self) -> int:
        return self._store.dead_letter_count()

    async def notifier_outboxes(self) -> list[NotifierOutbox]:
        return await self._off_loop(lambda store: store.notifier_outboxes())


def _missing(path: str | Path) -> bool:
    return str(path) != ":memory:" and not Path(path).exists()


async def open_async_store(
    *,
    path: str | Path | None = None,
    url: str | None = None,
    create: bool = True,
    clock: Callable[[], datetime] = utc_now,
    lease_seconds: float = 15.0,
) -> AsyncStore:
    """The state named by ``[state] path`` or ``[state] url`` (exactly one of them).

    ``create``: a writing command or the daemon (create the file, or migrate the database);
    without it (reading commands) a missing file or a database without our schema is a
    :class:`StateMissing` and nothing is created. ``lease_seconds`` sets the PostgreSQL
    connections' idle-in-transaction limit (:func:`~watcher.store.pg.lease.session_settings`).
    """
    if (path is None) == (url is None):
        raise ValueError("give exactly one of path and url")
    if url is not None:
        from watcher.store.pg.store import PgStore  # asyncpg only when PostgreSQL is used

        return await PgStore.open(url, create=create, clock=clock, lease_seconds=lease_seconds)
    assert path is not None
    if not create and _missing(path):
        raise StateMissing(f"no state file at {path}")
    return SqliteStore.open(path, clock=clock)
