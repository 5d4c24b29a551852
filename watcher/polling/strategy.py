"""Which poller runs: ``[polling] strategy`` = ``per-run``, ``batch`` or ``auto``.

- ``per-run``: the :class:`~watcher.polling.per_run.Scheduler` (one GetRunStatus per run).
- ``batch``: the :class:`~watcher.polling.batch.BatchPoller` (DescribeRuns for up to 100 runs, then
  GetRunStatus for the runs that changed). If DescribeRuns proves unusable (refused for
  permissions, or refusing even a one-value filter) the batch poller logs one line and
  ends, and the scheduler polls per run for the rest of the process.
- ``auto``: batch while per-run polling would need more than half the GetRunStatus budget
  (active runs > ``rate_per_second * interval_seconds / 2``), per-run below a quarter of
  it; re-checked every ``AUTO_CHECK_SECONDS``. Why not always batch: below that size
  per-run already meets ``interval_seconds`` and reads the authoritative status directly,
  with no dependence on how fresh DescribeRuns' listing is; above it per-run either
  stretches the interval or uses up a budget that ``omics-watcher status``, tccli and the
  console share with the daemon, while batch checks 100 runs per request. The gap between
  the two thresholds keeps a registry hovering around one of them from flipping back and
  forth. A permission refusal pins per-run, as with ``batch``.

Switching hands over through the store: the outgoing poller stops taking work, lets its
in-flight requests finish and flushes its quiet polls; the incoming one loads the registry
afresh. Every status is recorded compare-and-set on the previous one, so a switch can
neither lose a transition (the registry keeps the old status until someone records the
new one) nor repeat one (the second writer finds the status already moved).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, Unpack

import structlog

from watcher.omics.limiter import PacingLimiter
from watcher.polling.batch import BatchOptions, BatchPoller, BatchSource
from watcher.polling.loop import Collaborators

Mode = Literal["per-run", "batch", "auto"]
AUTO_CHECK_SECONDS = 10.0
AUTO_UP = 0.5  # share of the GetRunStatus budget per-run would need before auto batches
AUTO_DOWN = 0.25  # ... and below which auto goes back to per-run


@dataclass(frozen=True, slots=True)
class StrategyOptions:
    """``[polling] strategy`` and what ``auto`` weighs; ``batch``: the batch poller's options."""

    mode: Mode
    rate_per_second: float  # the GetRunStatus budget
    interval_seconds: float
    batch: BatchOptions


class Poller(Protocol):
    """What the daemon needs from a poller (both the scheduler and the batch poller)."""

    first_cycle_done: asyncio.Event

    @property
    def tracked(self) -> int: ...

    async def load(self) -> int: ...

    def refresh(self) -> None:
        """Read the registry's changes at the next turn instead of within a second."""
        ...

    async def run(self, stop: asyncio.Event) -> None: ...


def auto_prefers_batch(
    active_runs: int, *, batching: bool, rate_per_second: float, interval_seconds: float
) -> bool:
    """``auto``'s rule (see the module docstring); ``batching`` is the strategy in force."""
    capacity = rate_per_second * interval_seconds  # runs per-run polling can keep on time
    return active_runs > capacity * (AUTO_DOWN if batching else AUTO_UP)


class PollingStrategy:
    """Runs the configured poller and switches between them; see the module docstring."""

    def __init__(
        self,
        *,
        mode: Mode,
        scheduler: Poller,
        make_batch: Callable[[], BatchPoller],
        rate_per_second: float,
        interval_seconds: float,
        check_seconds: float = AUTO_CHECK_SECONDS,
    ) -> None:
        self._mode = mode
        self._scheduler = scheduler
        self._make_batch = make_batch
        self._batch: BatchPoller | None = None
        self._rate = rate_per_second
        self._interval = interval_seconds
        self._check = check_seconds
        self._current: Poller | None = None
        self._pinned = False  # DescribeRuns refused: per-run for the rest of the process
        self._log = structlog.get_logger("watcher.strategy")
        self.first_cycle_done = asyncio.Event()

    @property
    def strategy(self) -> str:
        """The strategy in force: ``per-run`` or ``batch`` (``auto`` resolves to one)."""
        return "batch" if isinstance(self._current, BatchPoller) else "per-run"

    @property
    def tracked(self) -> int:
        return self._current.tracked if self._current is not None else 0

    async def load(self) -> int:
        """Choose the first poller and let it read the registry; returns the active runs."""
        if self._mode == "batch":
            await self._use(self._batch_poller(), reason="configured")
        elif self._mode == "per-run":
            await self._use(self._scheduler, reason="configured")
        else:
            active = await self._scheduler.load()
            if self._wants_batch(active, batching=False):
                await self._use(self._batch_poller(), reason="auto")
            else:
                await self._use(self._scheduler, reason="auto", loaded=True)
        return self.tracked

    def refresh(self) -> None:
        """Pick up registry changes now (``POST /v1/runs``) instead of within a second."""
        if self._current is not None:
            self._current.refresh()

    def _batch_poller(self) -> BatchPoller:
        # One instance for the process: what it learnt (batch sizes per project) survives
        # a switch to per-run and back; load() replaces everything else.
        if self._batch is None:
            self._batch = self._make_batch()
        return self._batch

    def _wants_batch(self, active: int, *, batching: bool) -> bool:
        return auto_prefers_batch(
            active, batching=batching, rate_per_second=self._rate, interval_seconds=self._interval
        )

    async def _use(self, poller: Poller, *, reason: str, loaded: bool = False) -> None:
        active = poller.tracked if loaded else await poller.load()
        self._current = poller
        if poller.first_cycle_done.is_set():
            self.first_cycle_done.set()
        if reason != "fallback":  # the batch poller's own error line already says it
            self._log.info("polling_strategy", strategy=self.strategy, reason=reason, active=active)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set, switching pollers as the strategy says."""
        if self._current is None:
            await self.load()
        while True:
            poller = self._current
            assert poller is not None
            inner = asyncio.Event()
            task = asyncio.create_task(poller.run(inner), name=f"poll:{self.strategy}")
            ready = asyncio.create_task(self._mirror_ready(poller))
            try:
                following = await self._supervise(poller, task, inner, stop)
            finally:
                ready.cancel()
                if not task.done():  # only when this coroutine itself is cancelled
                    task.cancel()
                    await asyncio.wait({task})
            if following is None:
                return
            await self._use(following[0], reason=following[1])

    async def _mirror_ready(self, poller: Poller) -> None:
        await poller.first_cycle_done.wait()
        self.first_cycle_done.set()

    async def _supervise(
        self, poller: Poller, task: asyncio.Task[None], inner: asyncio.Event, stop: asyncio.Event
    ) -> tuple[Poller, str] | None:
        """Wait for ``stop`` or a reason to switch; returns the next poller, if any."""
        stopper = asyncio.ensure_future(stop.wait())
        timeout = self._check if self._mode == "auto" else None
        try:
            while True:
                done, _ = await asyncio.wait(
                    {task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if task in done:
                    task.result()  # a crash propagates: the daemon stops and is restarted
                    if stop.is_set():
                        return None
                    if not isinstance(poller, BatchPoller) or poller.refused is None:
                        raise RuntimeError("a poller stopped on its own")
                    # The batch poller already logged why, in its one line.
                    self._pinned = True
                    return self._scheduler, "fallback"
                if stop.is_set():
                    inner.set()
                    await task
                    return None
                if self._mode == "auto" and not self._pinned:
                    batching = isinstance(poller, BatchPoller)
                    if self._wants_batch(poller.tracked, batching=batching) != batching:
                        inner.set()
                        await task  # drains: in-flight requests finish, polls are flushed
                        if batching:
                            return self._scheduler, "auto"
                        return self._batch_poller(), "auto"
        finally:
            stopper.cancel()


def build_poller(
    options: StrategyOptions,
    *,
    scheduler: Poller,
    source: BatchSource,
    limiters: Mapping[str, PacingLimiter],
    **parts: Unpack[Collaborators],
) -> PollingStrategy:
    """The daemon's poller for ``[polling] strategy``, around the already built scheduler."""
    describe = limiters.get("DescribeRuns")
    status = limiters.get("GetRunStatus")

    def make_batch() -> BatchPoller:
        return BatchPoller(
            source=source,
            options=options.batch,
            describe_backlog=(lambda: describe.waiting) if describe else (lambda: 0),
            status_backlog=(lambda: status.waiting) if status else (lambda: 0),
            **parts,
        )

    return PollingStrategy(
        mode=options.mode,
        scheduler=scheduler,
        make_batch=make_batch,
        rate_per_second=options.rate_per_second,
        interval_seconds=options.interval_seconds,
    )
