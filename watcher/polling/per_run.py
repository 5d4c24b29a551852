"""The poll scheduler: which tracked run to ask about next, and what to do with the answer.

Every non-terminal tracked run sits in one heap ordered by when it is next due. The loop
takes the most overdue run, hands it to a poll task, and the task's request waits for the
shared pacing limiter. When the budget cannot cover ``runs / interval``, every run is
overdue and the heap turns into a round robin: a run polled now is due again only after
every run that has waited longer, so nobody starves and nobody is polled twice per cycle.
Runs never polled go first (a run tracked while the daemon runs is seen within seconds).

Outcomes: a changed status becomes an event, written with the new status and its outbox
rows in one transaction (``Store.record_observation``); transient failures back off per
run; throttling leaves the run at the front and lets the limiter slow down; credential and
permission failures pause all polling with one log line, probing again with growing
pauses; ``ResourceNotFound.RunNotExist`` yields one ``run.not_found`` and drops the run.

Registry changes made by other processes (``omics-watcher track``) are read every second.
The registry feed, auth pause, backoff and recording rules are shared with the batch poller
(:mod:`watcher.polling.common`).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from watcher.omics.errors import (
    AuthError,
    BadRequest,
    ClockSkew,
    OmicsError,
    RunNotFound,
    Throttled,
    Transient,
)
from watcher.polling.common import (
    BAD_REQUEST_BACKOFF_SECONDS,
    MAX_BACKLOG,
    REFRESH_SECONDS,
    AuthPause,
    Metadata,
    RegistryFeed,
    StatusSource,
    backoff_delay,
    drain,
    max_in_flight,
    record_status,
    task_failed,
)
from watcher.recorder import Recorder
from watcher.service.metrics import Metrics
from watcher.store import ActiveRun, StateError, Store

__all__ = ["Metadata", "Scheduler", "SchedulerOptions", "StatusSource"]


@dataclass(slots=True)
class _Run:
    """Scheduler-side state of one run: small, because there may be 100,000 of them."""

    project_id: str
    status: str | None
    errors: int = 0
    token: int = 0  # the heap entry that is current for this run; others are stale


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    interval_seconds: float
    rate_per_second: float
    request_timeout_seconds: float
    terminal: frozenset[str]
    default_project_id: str = ""
    jitter: float = 0.05
    drain_seconds: float = 5.0  # at stop, how long in-flight polls may still take
    crash_retry_seconds: float = 60.0  # a poll that died of a bug is retried after this long


def _end_nap(nap: asyncio.Future[None] | None) -> None:
    if nap is not None and not nap.done():
        nap.set_result(None)


class Scheduler:
    """Polls tracked runs through a :class:`StatusSource`; see the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        source: StatusSource,
        recorder: Recorder,
        options: SchedulerOptions,
        backlog: Callable[[], int] = lambda: 0,
        metrics: Metrics | None = None,
        wall_clock: Callable[[], datetime],
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._opt = options
        self._recorder = recorder
        self._backlog = backlog
        self._metrics = metrics or Metrics()
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._log = structlog.get_logger("watcher.scheduler")
        self._runs: dict[str, _Run] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._feed = RegistryFeed(store)
        self._loaded = False
        self._nap: asyncio.Future[None] | None = None  # set while run() sleeps
        self._state_error: StateError | None = None  # from a poll task: stops the loop
        self._pause = AuthPause(log=self._log, metrics=self._metrics, clock=self._now)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._unstarted = 0  # poll tasks created that have not reached the limiter yet
        self._slots = asyncio.Semaphore(
            max_in_flight(options.rate_per_second, options.request_timeout_seconds)
        )
        self._first_wave = 0
        self.first_cycle_done = asyncio.Event()

    # -- registry -------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic()

    def _schedule(self, run_uuid: str, due: float) -> None:
        run = self._runs[run_uuid]
        run.token = next(self._seq)
        heapq.heappush(self._heap, (due, run.token, run_uuid))

    def _jittered(self, seconds: float) -> float:
        spread = self._opt.jitter
        return seconds * (1 + self._rng.uniform(-spread, spread))

    def _add(self, active: ActiveRun, *, now: float, wall_now: float) -> None:
        self._runs[active.run_uuid] = _Run(active.project_id, active.status)
        if active.next_poll_after is not None and active.next_poll_after > wall_now:
            due = now + (active.next_poll_after - wall_now)
        elif active.last_polled_at is None:
            due = -1.0  # never polled: ahead of every overdue run
        else:
            # Resume where the last process left off, jittered so restarts don't synchronise.
            due = (
                now
                + self._jittered(self._opt.interval_seconds)
                - (wall_now - active.last_polled_at)
            )
        self._schedule(active.run_uuid, due)

    def load(self) -> int:
        """Read every active run from the registry, replacing what was known; returns how many.

        Called again after another poller had the registry for a while (strategy switch):
        the store is the truth, so nothing from the previous session is kept.
        """
        self._runs.clear()
        self._heap.clear()
        self._unstarted = 0
        self._loaded = True
        active_runs = self._feed.snapshot()
        now, wall_now = self._now(), self._wall().timestamp()
        for active in active_runs:
            self._add(active, now=now, wall_now=wall_now)
        self._first_wave = min(len(self._runs), max(1, math.ceil(self._opt.rate_per_second)))
        if self._first_wave == 0 or not self._runs:
            self.first_cycle_done.set()
        return len(self._runs)

    def refresh(self) -> None:
        """Pick up runs tracked or untracked by other processes; flush poll times."""
        added, removed = self._feed.changes()
        now, wall_now = self._now(), self._wall().timestamp()
        for run_uuid in removed:
            self._runs.pop(run_uuid, None)
        for active in added:
            known = self._runs.get(active.run_uuid)
            if known is None:
                self._add(active, now=now, wall_now=wall_now)
            else:  # re-tracked, perhaps with a corrected project: believe the registry
                known.project_id = active.project_id
        if added:
            self._wake_up()

    @property
    def tracked(self) -> int:
        return len(self._runs)

    @property
    def paused(self) -> bool:
        return self._pause.paused

    # -- main loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set, then let in-flight polls finish."""
        if not self._loaded:
            self.load()
        next_refresh = self._now() + REFRESH_SECONDS
        stopper = asyncio.ensure_future(stop.wait())
        stopper.add_done_callback(lambda _: self._wake_up())
        try:
            while not stop.is_set():
                if self._state_error is not None:
                    raise self._state_error
                now = self._now()
                if now >= next_refresh:
                    self.refresh()
                    next_refresh = now + REFRESH_SECONDS
                wait = next_refresh - now
                head = self._peek()
                if self._pause.until > now:
                    wait = min(wait, self._pause.until - now)
                elif head is not None:
                    if head[0] > now:
                        wait = min(wait, head[0] - now)
                    elif self._unstarted + self._backlog() < MAX_BACKLOG:
                        await self._launch(stop)
                        continue
                    else:
                        # Requests already queue for the limiter: hold this run in the heap,
                        # where a newly tracked run can still overtake it. Each finished poll
                        # wakes us (_done), so this timeout matters only while requests hang;
                        # 1.5 permits' time still refills the queue before it runs dry.
                        wait = min(wait, 1.5 / self._opt.rate_per_second)
                await self._sleep(wait, stopper)
        finally:
            stopper.cancel()
            await self.drain(self._opt.drain_seconds)

    def _peek(self) -> tuple[float, int, str] | None:
        while self._heap:
            _, token, run_uuid = self._heap[0]
            run = self._runs.get(run_uuid)
            if run is not None and run.token == token:
                return self._heap[0]
            heapq.heappop(self._heap)  # stale: untracked, finished or rescheduled
        return None

    async def _sleep(self, seconds: float, stopper: asyncio.Future[Any]) -> None:
        """Nap until ``seconds`` pass or :meth:`_wake_up` (a wake-up outside a nap is moot:
        the loop re-checks everything before it naps again).

        One future and one timer per nap, no task: naps happen tens of times a second, and
        on small VMs every avoidable wake-up of the process costs about a quarter of a
        millisecond of CPU.
        """
        if stopper.done():
            return
        loop = asyncio.get_running_loop()
        nap = self._nap = loop.create_future()
        timer = loop.call_later(max(0.0, seconds), _end_nap, nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._nap = None

    def _wake_up(self) -> None:
        _end_nap(self._nap)

    async def _launch(self, stop: asyncio.Event) -> None:
        await self._slots.acquire()
        head = self._peek()
        if head is None or stop.is_set():
            self._slots.release()
            return
        heapq.heappop(self._heap)
        _, _, run_uuid = head
        self._runs[run_uuid].token = -1  # in flight: no heap entry is current
        self._unstarted += 1
        task = asyncio.create_task(self._poll(run_uuid), name=f"poll:{run_uuid}")
        self._in_flight.add(task)
        task.add_done_callback(functools.partial(self._done, run_uuid))

    def _done(self, run_uuid: str, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        # Its request took a permit, so the limiter's queue has room for the next run. The
        # loop is awake anyway now: refilling here spares the timed naps that would each
        # wake the process just to look.
        self._wake_up()
        failed = task_failed(task, log=self._log, event="poll_crashed")
        if failed is not None and self._state_error is None:
            self._state_error = failed
            self._wake_up()
        run = self._runs.get(run_uuid)
        if failed is None and run is not None and run.token == -1:
            # The poll died of a bug before rescheduling its run: keep watching the run,
            # slowly, rather than forgetting it until the next restart.
            self._reschedule(run_uuid, self._now() + self._opt.crash_retry_seconds)

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for in-flight polls, then cancel what is left."""
        await drain(self._in_flight, grace)
        self._feed.flush()

    # -- one poll -------------------------------------------------------------------------

    async def _poll(self, run_uuid: str) -> None:
        self._unstarted -= 1  # from here the request queues in the limiter (backlog())
        run = self._runs.get(run_uuid)
        if run is None:
            return
        project_id = run.project_id or self._opt.default_project_id
        outcome = "ok"
        try:
            metadata = await self._source.get_run_status(run_uuid, project_id)
        except RunNotFound:
            outcome = "not_found"
            await self._not_found(run_uuid, run)
        except Throttled:
            outcome = "throttled"
            self._metrics.throttled.inc()
            self._reschedule(run_uuid, self._now())
        except ClockSkew as exc:
            outcome = "auth"
            self._pause.pause(f"clock skew: {exc.code}")
            self._reschedule(run_uuid, self._now())
        except AuthError as exc:
            outcome = "auth"
            self._pause.pause(exc.code)
            self._reschedule(run_uuid, self._now())
        except BadRequest as exc:
            outcome = "bad_request"
            self._log.error("poll_bad_request", run_uuid=run_uuid, code=exc.code, error=exc.message)
            self._reschedule(run_uuid, self._now() + BAD_REQUEST_BACKOFF_SECONDS)
        except (Transient, OmicsError) as exc:
            outcome = "transient"
            self._backoff(run_uuid, run, exc)
        else:
            self._pause.resume()
            outcome = "changed" if metadata.Status != run.status else "ok"
            await self._observe(run_uuid, run, project_id, metadata)
        finally:
            self._metrics.polls.labels(outcome=outcome).inc()
            if self._first_wave > 0:
                self._first_wave -= 1
                if self._first_wave == 0:
                    self.first_cycle_done.set()

    def _reschedule(self, run_uuid: str, due: float) -> None:
        if run_uuid in self._runs:
            self._schedule(run_uuid, due)

    def _backoff(self, run_uuid: str, run: _Run, exc: OmicsError) -> None:
        run.errors += 1
        delay = backoff_delay(run.errors, base=max(self._opt.interval_seconds, 1.0), rng=self._rng)
        log = self._log.warning if run.errors in (1, 5, 20) else self._log.debug
        log(
            "poll_failed",
            run_uuid=run_uuid,
            code=exc.code,
            errors=run.errors,
            retry_in=round(delay, 1),
        )
        self._store.record_error(
            run_uuid,
            consecutive_errors=run.errors,
            next_poll_after=self._wall() + timedelta(seconds=delay),
        )
        self._reschedule(run_uuid, self._now() + delay)

    async def _observe(self, run_uuid: str, run: _Run, project_id: str, metadata: Metadata) -> None:
        run.errors = 0
        if metadata.Status == run.status:
            self._feed.polled(run_uuid, self._wall())
            self._reschedule(run_uuid, self._now() + self._jittered(self._opt.interval_seconds))
            return
        outcome = await record_status(
            self._recorder,
            run_uuid=run_uuid,
            project_id=project_id,
            previous=run.status,
            metadata=metadata,
        )
        if not outcome.active:
            self._runs.pop(run_uuid, None)
            return
        run.status = outcome.status
        if outcome.superseded:
            # Someone else recorded this run meanwhile; believe the registry, look again now.
            self._reschedule(run_uuid, self._now())
        else:
            self._reschedule(run_uuid, self._now() + self._jittered(self._opt.interval_seconds))

    async def _not_found(self, run_uuid: str, run: _Run) -> None:
        self._runs.pop(run_uuid, None)
        await self._recorder.not_found(run_uuid, run.project_id, run.status)
