"""The loop both pollers run, around their own choice of what to ask next.

The per-run :class:`~watcher.polling.per_run.Scheduler` and the DescribeRuns
:class:`~watcher.polling.batch.BatchPoller` differ only in *whom* they ask and how they order
it; everything else they do alike, so it is written once here:

- one table of :class:`~watcher.polling.run_poll.PolledRun` and one
  :class:`~watcher.polling.run_poll.RunPoll` that asks GetRunStatus about one of them;
- the loop: read the registry's change feed every ``REFRESH_SECONDS``, sit out an auth
  pause, start the work that is due (:meth:`PollingLoop._work`, the subclass's part), nap
  until more is due or something wakes it (:class:`~watcher.polling.common.Naps`);
- a poll task that died of a :class:`~watcher.store.StateError` stops the loop (the daemon
  exits 3), as does a :class:`~watcher.store.pg.lease.LeaseLost` (the daemon lost its
  lease), and at stop in-flight requests get ``drain_seconds`` before they are cancelled;
- :meth:`PollingLoop.refresh` (``POST /v1/runs``, discovery) only asks the loop to read the
  change feed now; the loop reads it (:meth:`PollingLoop._refresh`), so the feed's cursor
  has one reader;
- ``first_cycle_done``, set when the first requests (``_first_wave`` of them) answered.
"""

from __future__ import annotations

import abc
import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import NotRequired, Protocol, TypedDict, Unpack

import structlog

from watcher.polling.common import (
    REFRESH_SECONDS,
    AuthPause,
    FeedStore,
    Naps,
    RegistryFeed,
    StatusSource,
    StopsPolling,
    task_failed,
    work_failed,
)
from watcher.polling.outages import Outages
from watcher.polling.run_poll import PolledRun, RunPoll, RunPollOptions
from watcher.recorder import Recorder
from watcher.service.metrics import Metrics
from watcher.tasks import drain


class PollerStore(FeedStore, Protocol):
    """The part of the :class:`~watcher.store.api.AsyncStore` the pollers use (the batch
    poller also reads status references)."""

    async def record_error(
        self, run_uuid: str, *, consecutive_errors: int, next_poll_after: datetime | None
    ) -> None: ...

    async def status_references(
        self, run_uuids: Sequence[str] | None = None
    ) -> dict[str, tuple[float | None, float | None]]: ...


class Collaborators(TypedDict):
    """What every poller is built with, besides its options and its source."""

    store: PollerStore
    recorder: Recorder
    wall_clock: Callable[[], datetime]
    metrics: NotRequired[Metrics | None]
    rng: NotRequired[random.Random | None]
    # What the pollers saw of the API (one for the daemon, shared by both pollers).
    outages: NotRequired[Outages | None]


class PollingLoop(abc.ABC):
    """A poller's shared half; subclasses say what work is due (see the module docstring)."""

    def __init__(
        self,
        *,
        source: StatusSource,
        logger: str,
        run_poll: RunPollOptions,
        drain_seconds: float,
        **parts: Unpack[Collaborators],
    ) -> None:
        store, recorder, wall_clock = parts["store"], parts["recorder"], parts["wall_clock"]
        self._metrics = parts.get("metrics") or Metrics()
        self._wall = wall_clock
        self._rng = parts.get("rng") or random.Random()
        self._log = structlog.get_logger(logger)
        self._drain_seconds = drain_seconds
        self._runs: dict[str, PolledRun] = {}
        self._feed = RegistryFeed(store)
        self._outages = parts.get("outages") or Outages(host="")
        self._pause = AuthPause(
            log=self._log, metrics=self._metrics, clock=self._now, outages=self._outages
        )
        self._naps = Naps()
        self._loaded = False
        self._state_error: StopsPolling | None = None  # from a poll task: stops the loop
        self._refresh_asked = False  # refresh(): read the change feed at the next turn
        self._first_wave = 0  # requests whose answers make the first cycle
        self.first_cycle_done = asyncio.Event()
        self._one = RunPoll(
            runs=self._runs,
            source=source,
            recorder=recorder,
            store=store,
            feed=self._feed,
            pause=self._pause,
            outages=self._outages,
            metrics=self._metrics,
            log=self._log,
            wall_clock=wall_clock,
            rng=self._rng,
            options=run_poll,
        )

    @abc.abstractmethod
    async def load(self) -> int:
        """Read every active run from the registry, replacing what was known; how many."""

    def refresh(self) -> None:
        """Pick up registry changes now (``POST /v1/runs``) instead of within a second: the
        loop reads the change feed at its next turn."""
        self._refresh_asked = True
        self._naps.wake()

    @abc.abstractmethod
    async def _refresh(self) -> None:
        """Pick up runs tracked or untracked by other processes; flush poll times."""

    @abc.abstractmethod
    async def _work(self, now: float, stop: asyncio.Event) -> float | None:
        """Start what is due; seconds until more is (``None``: look again at once)."""

    @abc.abstractmethod
    def _tasks(self) -> Iterable[asyncio.Task[None]]:
        """The requests in flight."""

    def _finished(self) -> bool:
        """True when the poller cannot go on (the batch poller, once DescribeRuns is refused)."""
        return False

    @property
    def tracked(self) -> int:
        return len(self._runs)

    @property
    def paused(self) -> bool:
        return self._pause.paused

    def _now(self) -> float:
        return time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set (or :meth:`_finished`), then let in-flight polls finish."""
        if not self._loaded:
            await self.load()
        next_refresh = self._now() + REFRESH_SECONDS
        stopper = self._naps.watch(stop)
        try:
            while not stop.is_set() and not self._finished():
                if self._state_error is not None:
                    raise self._state_error
                now = self._now()
                if now >= next_refresh or self._refresh_asked:
                    self._refresh_asked = False
                    await self._refresh()
                    next_refresh = now + REFRESH_SECONDS
                wait = next_refresh - now
                if self._pause.until > now:
                    wait = min(wait, self._pause.until - now)
                else:
                    due = await self._work(now, stop)
                    if due is None:
                        continue
                    wait = min(wait, due)
                await self._naps.sleep(wait, stopper)
        finally:
            stopper.cancel()
            # Cancelled (a lost lease ends the term): the polls in flight go at once, since
            # their requests may not start anyway; a stop lets them finish within the grace.
            task = asyncio.current_task()
            cancelled = task is not None and task.cancelling() > 0
            await self.drain(0.0 if cancelled else self._drain_seconds)

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for in-flight requests, then cancel what is left."""
        await drain(self._tasks(), grace)
        await self._feed.flush()

    def _task_done(self, task: asyncio.Task[None], *, event: str) -> None:
        """Log a request task that died; keep the first StateError to stop the loop with."""
        self._keep(task_failed(task, log=self._log, event=event))

    def _poll_died(self, error: Exception) -> None:
        """A reused worker's poll died of ``error``: as :meth:`_task_done` for a task."""
        self._keep(work_failed(error, log=self._log, event="poll_crashed"))

    def _keep(self, failed: StopsPolling | None) -> None:
        if failed is not None and self._state_error is None:
            self._state_error = failed
            self._naps.wake()

    def _answered(self) -> None:
        """One of the first wave's requests is answered (or failed)."""
        if self._first_wave > 0:
            self._first_wave -= 1
            if self._first_wave == 0:
                self.first_cycle_done.set()
