"""The poll scheduler: which tracked run to ask about next, and what to do with the answer.

Every non-terminal tracked run sits in one heap ordered by when it is next due. The loop
takes the most overdue run and hands it to a poll worker, whose request waits for the
shared pacing limiter. Workers are few and long-lived (as many as requests may be open at
once, started only when none is free): a worker that finishes a poll takes the next due run
itself when the limiter's queue has room, so in steady state a poll costs no task and no
wake-up of the loop; a worker with nothing to take parks and wakes the loop, which then
decides as before (a timed nap, or a parked worker handed the next run).

When the budget cannot cover ``runs / interval``, every run is
overdue and the heap turns into a round robin: a run polled now is due again only after
every run that has waited longer, so nobody starves and nobody is polled twice per cycle.
Runs never polled go first (a run tracked while the daemon runs is seen within seconds).

Each poll is one :class:`~watcher.polling.run_poll.RunPoll`, the same one the batch poller's
follow-ups use: a changed status becomes an event, written with the new status and its
outbox rows in one transaction (``Store.record_observation``); transient failures back off
per run; throttling leaves the run at the front and lets the limiter slow down; credential
and permission failures pause all polling with one log line, probing again with growing
pauses; ``ResourceNotFound.RunNotExist`` yields one ``run.not_found`` and drops the run; a
poll that dies of a bug retries its run after ``crash_retry_seconds``. This module only
decides where the run goes in the heap afterwards.

Registry changes made by other processes (``omics-watcher track``) are read every second.
The registry feed, auth pause, naps and recording rules are shared with the batch poller
(:mod:`watcher.polling.common`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Unpack

from watcher.polling.common import STATUS_BACKLOG, Metadata, StatusSource, max_in_flight
from watcher.polling.loop import Collaborators, PollingLoop
from watcher.polling.run_poll import PolledRun, RunPollOptions
from watcher.store import ActiveRun

__all__ = ["Metadata", "Scheduler", "SchedulerOptions", "StatusSource"]


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


class Scheduler(PollingLoop):
    """Polls tracked runs through a :class:`StatusSource`; see the module docstring."""

    def __init__(
        self,
        *,
        source: StatusSource,
        options: SchedulerOptions,
        backlog: Callable[[], int] = lambda: 0,
        when_drained: Callable[[Callable[[], None]], None] | None = None,
        **parts: Unpack[Collaborators],  # store, recorder, wall_clock; metrics, rng
    ) -> None:
        super().__init__(
            source=source,
            logger="watcher.scheduler",
            run_poll=RunPollOptions(
                interval_seconds=options.interval_seconds,
                crash_retry_seconds=options.crash_retry_seconds,
            ),
            drain_seconds=options.drain_seconds,
            **parts,
        )
        self._opt = options
        self._backlog = backlog
        # Told when the limiter's queue empties (PacingLimiter.when_drained): then the loop
        # need not look every 1.5 permits whether the queue has room while it is full.
        self._full_nap = 1.5 / options.rate_per_second
        self._told_when_drained = when_drained is not None
        if when_drained is not None:
            when_drained(self._drained)
            self._full_nap = math.inf
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._workers: set[asyncio.Task[None]] = set()
        self._parked: list[asyncio.Future[str | None]] = []  # idle workers, last parked first
        self._max_workers = max_in_flight(options.rate_per_second, options.request_timeout_seconds)
        self._unstarted = 0  # runs handed to a worker whose request is not queued yet
        self._closing = False  # draining: workers finish their poll and exit
        self._stop: asyncio.Event | None = None

    # -- registry -------------------------------------------------------------------------

    def _schedule(self, run_uuid: str, due: float) -> None:
        run = self._runs[run_uuid]
        run.token = next(self._seq)
        heapq.heappush(self._heap, (due, run.token, run_uuid))

    def _project_of(self, active: ActiveRun) -> str:
        return active.project_id or self._opt.default_project_id

    def _jittered(self, seconds: float) -> float:
        spread = self._opt.jitter
        # random.uniform(-spread, spread), inlined (the same arithmetic): once per poll.
        return seconds * (1 + (-spread + (spread + spread) * self._rng.random()))

    def _add(self, active: ActiveRun, *, now: float, wall_now: float) -> None:
        self._runs[active.run_uuid] = PolledRun(self._project_of(active), active.status)
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

    async def load(self) -> int:
        """Read every active run from the registry, replacing what was known; returns how many.

        Called again after another poller had the registry for a while (strategy switch):
        the store is the truth, so nothing from the previous session is kept.
        """
        self._runs.clear()
        self._heap.clear()
        self._unstarted = 0
        self._loaded = True
        active_runs = await self._feed.snapshot()
        now, wall_now = self._now(), self._wall().timestamp()
        for active in active_runs:
            self._add(active, now=now, wall_now=wall_now)
        self._first_wave = min(len(self._runs), max(1, math.ceil(self._opt.rate_per_second)))
        if self._first_wave == 0 or not self._runs:
            self.first_cycle_done.set()
        return len(self._runs)

    async def _refresh(self) -> None:
        """Pick up runs tracked or untracked by other processes; flush poll times."""
        added, removed = await self._feed.changes()
        now, wall_now = self._now(), self._wall().timestamp()
        for run_uuid in removed:
            self._runs.pop(run_uuid, None)
        for active in added:
            known = self._runs.get(active.run_uuid)
            if known is None:
                self._add(active, now=now, wall_now=wall_now)
            else:  # re-tracked, perhaps with a corrected project: believe the registry
                known.project = self._project_of(active)
        if added:
            self._naps.wake()

    # -- main loop ------------------------------------------------------------------------

    async def _work(self, now: float, stop: asyncio.Event) -> float | None:
        self._stop = stop
        head = self._peek()
        if head is None:
            return math.inf
        if head[0] > now:
            return head[0] - now
        if self._unstarted + self._backlog() >= STATUS_BACKLOG:
            # Requests already queue for the limiter: hold this run in the heap, where a
            # newly tracked run can still overtake it. A worker that finishes takes the next
            # run itself or wakes us; while requests hang, the limiter says when its queue
            # ran dry (when_drained), which is before the next permit is due. Without that
            # hook, 1.5 permits' time still refills the queue before it runs dry.
            return self._full_nap
        if not self._parked and len(self._workers) >= self._max_workers:
            return math.inf  # every worker busy (requests hang): the first one free wakes us
        self._closing = False
        self._hand(self._pop())
        return None

    def _queue_full(self) -> bool:
        """Requests fill the limiter's queue and its draining will wake the loop."""
        full = self._unstarted + self._backlog() >= STATUS_BACKLOG
        return full and self._told_when_drained

    def _drained(self) -> None:
        """The limiter's queue is empty: the loop refills it (if a run is due)."""
        if self._unstarted < STATUS_BACKLOG:
            self._naps.wake()

    def _tasks(self) -> Iterable[asyncio.Task[None]]:
        return self._workers

    async def drain(self, grace: float) -> None:
        """Parked workers exit now, busy ones after their poll (within ``grace``)."""
        self._closing = True
        parked, self._parked = self._parked, []
        for waiting in parked:
            if not waiting.done():
                waiting.set_result(None)
        await super().drain(grace)

    def _peek(self) -> tuple[float, int, str] | None:
        while self._heap:
            _, token, run_uuid = self._heap[0]
            run = self._runs.get(run_uuid)
            if run is not None and run.token == token:
                return self._heap[0]
            heapq.heappop(self._heap)  # stale: untracked, finished or rescheduled
        return None

    def _pop(self) -> str:
        """Take the head run (the caller peeked it): in flight, no heap entry is current."""
        _, _, run_uuid = heapq.heappop(self._heap)
        self._runs[run_uuid].token = -1
        self._unstarted += 1
        return run_uuid

    def _hand(self, run_uuid: str) -> None:
        """Give ``run_uuid`` to a parked worker, or start a worker for it."""
        while self._parked:
            waiting = self._parked.pop()
            if not waiting.done():  # a worker cancelled while parked leaves a done future
                waiting.set_result(run_uuid)
                return
        task = asyncio.create_task(self._worker(run_uuid), name="poll-worker")
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    def _next_due(self) -> str | None:
        """A run a worker may take now, on the same terms as :meth:`_work` (else ``None``)."""
        if self._closing or self._state_error is not None:
            return None
        if self._stop is not None and self._stop.is_set():
            return None
        now = self._now()
        if self._pause.until > now or self._unstarted + self._backlog() >= STATUS_BACKLOG:
            return None
        head = self._peek()
        if head is None or head[0] > now:
            return None
        return self._pop()

    async def _worker(self, run_uuid: str | None) -> None:
        """Poll the run handed over, then the next due one, parking when none is."""
        loop = asyncio.get_running_loop()
        while run_uuid is not None:
            try:
                await self._poll(run_uuid)
            except Exception as exc:  # logged; a StateError stops the loop
                self._poll_died(exc)
            run_uuid = self._next_due()
            if run_uuid is None:
                if self._closing:
                    return
                parked: asyncio.Future[str | None] = loop.create_future()
                self._parked.append(parked)
                # A request finished: the loop decides when the next run goes (as it would
                # have after a timed nap), unless the limiter's queue is full, whose draining
                # wakes the loop anyway (a whole group's worth of wake-ups saved).
                if not self._queue_full():
                    self._naps.wake()
                run_uuid = await parked

    # -- one poll -------------------------------------------------------------------------

    async def _poll(self, run_uuid: str) -> None:
        self._unstarted -= 1  # from here the request queues in the limiter (backlog())
        run = self._runs.get(run_uuid)
        if run is None:
            return
        try:
            polled = await self._one.poll(run_uuid, run)
        finally:
            self._answered()
        if run_uuid not in self._runs:
            return  # not found, terminal, or untracked meanwhile
        if polled.on_schedule:
            due = self._now() + self._jittered(self._opt.interval_seconds)
        else:
            # Throttled or paused: at the front again (the limiter or the pause holds it);
            # superseded: look again now; failed or crashed: after the backoff.
            due = self._now() + polled.retry_in
        self._schedule(run_uuid, due)
