"""Retention: finished runs leave the state file ``[state] retention_days`` after they finished.

Why: nothing else ever removes a run or an event, so a lab's state file grew by tens of MB a
day until its volume was full and every start failed. A run finished (terminal, or stopped as
not found) longer ago than the retention is deleted with its events, their deliveries and dead
letters; a run still active keeps its whole history however old. Events that belong to no run
(digests, run-group roll-ups) go once they are older than the retention.

Invariants:
- Retention never loses a delivery: a run (or run-less event) that still owes one, a row
  ``pending`` for however long (a mute window longer than the retention, a digest window, a
  failure's lookup, retries up to ``max_age_seconds``), keeps everything until its last row
  settles (delivered, dead or silenced); the next pass then takes it
  (:data:`watcher.store.journal.OWES_NOTHING`, the same rule on both backends). Rows of a
  notifier removed from the configuration are dead-lettered at start and on reload
  (:func:`watcher.notifier_set.forget_removed_notifiers`), so they never hold a run forever.
- Pruning never stalls polling. It works in small steps, each one short write transaction of
  at most :attr:`RetentionOptions.batch_runs` runs (on SQLite on a connection of its own in a
  worker thread, so SQLite time is spent off the event loop; on PostgreSQL the server's),
  with a pause between steps so the daemon's writes take the lock in between.
- Free pages are reused: SQLite fills them before growing the file. A file created by this
  version uses ``auto_vacuum = INCREMENTAL``, and a pass ends by handing at most
  :attr:`RetentionOptions.vacuum_pages` pages per step back to the file system; an older file
  keeps its size (and reuses its free pages) until converted once offline (README).
- A failed pass (the file busy or unusable) is logged and tried again at the next pass; the
  daemon's own writes report a broken state file.
- ``retention_days = 0`` keeps everything: no pass ever runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import structlog

from watcher.store import StateError, Store
from watcher.store.api import AsyncStore, SqliteStore
from watcher.store.db import MEMORY, utc_now
from watcher.store.journal import PruneStep
from watcher.tasks import wait_set

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetentionOptions:
    """``[state] retention_days`` in seconds (0: keep forever) and how pruning paces itself."""

    retention_seconds: float
    interval_seconds: float = 300.0  # from the start of one pass to the next
    batch_runs: int = 50  # runs deleted per transaction (about 6 events each)
    batch_events: int = 500  # events scanned per transaction for run-less events
    pause_seconds: float = 0.05  # between two steps of a pass
    vacuum_pages: int = 256  # pages given back per step (1 MiB at the default page size)

    @property
    def enabled(self) -> bool:
        return self.retention_seconds > 0


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one pass removed."""

    runs: int = 0
    events: int = 0
    pages_released: int = 0


class PruneStore(Protocol):
    """The steps of a pass: the :class:`~watcher.store.api.AsyncStore`'s prune methods."""

    async def prune_finished_runs(self, *, finished_before: datetime, limit: int) -> PruneStep: ...

    async def prune_orphan_events(
        self, *, recorded_before: datetime, after_seq: int, limit: int
    ) -> tuple[int, int | None]: ...

    async def release_free_pages(self, max_pages: int) -> int: ...


class Pruner:
    """Runs retention passes until stopped; see the module docstring.

    On SQLite the steps run on a connection of the pruner's own in a worker thread
    (:class:`_OffLoopSteps`); on PostgreSQL they are the store's own (the server does the
    work, the loop only awaits). A step of a daemon that lost its lease raises ``LeaseLost``,
    which ends :meth:`run` (it is not a ``StateError``).
    """

    def __init__(
        self,
        *,
        store: AsyncStore,
        options: RetentionOptions,
        clock: Callable[[], datetime] = utc_now,
        logger: Any = None,
    ) -> None:
        self._steps: PruneStore = store
        self._off_loop: _OffLoopSteps | None = None
        if isinstance(store, SqliteStore):
            self._steps = self._off_loop = _OffLoopSteps(store.sync)
        self._options = options
        self._clock = clock
        self._log = logger or structlog.get_logger("watcher.retention")

    @property
    def enabled(self) -> bool:
        return self._options.enabled

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every ``interval_seconds`` until ``stop`` is set (or the task is cancelled)."""
        if not self.enabled:
            return
        try:
            while not stop.is_set():
                with contextlib.suppress(StateError):
                    await self.prune_once()
                await wait_set(stop, self._options.interval_seconds)
        finally:
            self.close()

    async def prune_once(self) -> PruneResult:
        """One whole pass: finished runs, then run-less events, then free pages."""
        cutoff = self._clock() - timedelta(seconds=self._options.retention_seconds)
        result = PruneResult()
        try:
            result = await self._prune_runs(cutoff, result)
            result = await self._prune_orphans(cutoff, result)
            result = await self._release_pages(result)
        except StateError as exc:
            self._log.warning(
                "prune_failed", error=str(exc), runs=result.runs, events=result.events
            )
            raise
        if result.runs or result.events:
            self._log.info(
                "pruned",
                runs=result.runs,
                events=result.events,
                pages_released=result.pages_released,
            )
        return result

    async def _prune_runs(self, cutoff: datetime, result: PruneResult) -> PruneResult:
        limit = self._options.batch_runs
        while True:
            step = await self._steps.prune_finished_runs(finished_before=cutoff, limit=limit)
            result = replace(
                result, runs=result.runs + step.runs, events=result.events + step.events
            )
            if not step.more:
                return result
            await asyncio.sleep(self._options.pause_seconds)

    async def _prune_orphans(self, cutoff: datetime, result: PruneResult) -> PruneResult:
        after: int | None = 0
        while after is not None:
            deleted, after = await self._steps.prune_orphan_events(
                recorded_before=cutoff, after_seq=after, limit=self._options.batch_events
            )
            result = replace(result, events=result.events + deleted)
            await asyncio.sleep(self._options.pause_seconds)
        return result

    async def _release_pages(self, result: PruneResult) -> PruneResult:
        while released := await self._steps.release_free_pages(self._options.vacuum_pages):
            result = replace(result, pages_released=result.pages_released + released)
            await asyncio.sleep(self._options.pause_seconds)
        return result

    def close(self) -> None:
        """Close the worker's connection and end its thread (waits for a step in flight)."""
        if self._off_loop is not None:
            self._off_loop.close()


class _OffLoopSteps:
    """:class:`PruneStore` on SQLite: each step on the pruner's own connection in its worker
    thread (inline for an in-memory store, which has no second connection)."""

    def __init__(self, main: Store) -> None:
        self._main = main
        self._worker: ThreadPoolExecutor | None = None
        self._store: Store | None = None  # the worker thread's own connection

    async def prune_finished_runs(self, *, finished_before: datetime, limit: int) -> PruneStep:
        return await self._call(
            lambda store: store.prune_finished_runs(finished_before=finished_before, limit=limit)
        )

    async def prune_orphan_events(
        self, *, recorded_before: datetime, after_seq: int, limit: int
    ) -> tuple[int, int | None]:
        return await self._call(
            lambda store: store.prune_orphan_events(
                recorded_before=recorded_before, after_seq=after_seq, limit=limit
            )
        )

    async def release_free_pages(self, max_pages: int) -> int:
        return await self._call(lambda store: store.release_free_pages(max_pages))

    async def _call(self, work: Callable[[Store], T]) -> T:
        if self._main.path == MEMORY:
            return work(self._main)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retention")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._in_worker, work)

    def _in_worker(self, work: Callable[[Store], T]) -> T:
        if self._store is None:
            self._store = Store.open(self._main.path)
        return work(self._store)

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.submit(self._close_store)
        worker.shutdown(wait=True)

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
