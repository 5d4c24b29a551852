"""What every poller shares: the registry feed, the auth pause, backoff and recording rules.

The per-run :class:`~watcher.polling.per_run.Scheduler` and the DescribeRuns
:class:`~watcher.polling.batch.BatchPoller` decide differently *whom* to ask and *how*, but must
agree on everything else. The building blocks live here (the loop that assembles them is
:mod:`watcher.polling.loop`, one poll of one run :mod:`watcher.polling.run_poll`):

- :class:`StatusSource`, :class:`RunLister`: the two Omics calls pollers make.

- :class:`RegistryFeed`: the poller's view of the registry. A snapshot, then the cheap
  ``changes_since`` feed (runs tracked or untracked by other processes), and a buffer of
  quiet polls flushed to the store in one transaction.
- :class:`AuthPause`: credential and permission failures pause all polling, with one log
  line when the pause starts and one when it ends, probing again after growing pauses
  (and telling :class:`~watcher.polling.outages.Outages`, which readiness reads).
- :func:`backoff_delay`: exponential backoff with jitter for a failing run or batch.
- :class:`Naps`: the pollers' one sleep: until a deadline, a wake-up or stop.
- :func:`record_status`: hand a changed status to the :class:`~watcher.recorder.Recorder`
  and read back what the registry holds afterwards (another process may have recorded
  first: then the registry is believed, never the poller's memory).
- :func:`task_failed`: log a poll task that died; a :class:`~watcher.store.StateError` among
  them stops the poller (the daemon exits 3), because the run whose result could not be
  written would otherwise never be polled again, without a trace. A
  :class:`~watcher.store.pg.lease.LeaseLost` stops it too (this daemon is no longer the
  active one; its lease supervisor decides what comes next).

Nothing here sends a request; time comes from an injected monotonic clock.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from watcher.omics.models import RunsFilter
from watcher.polling.outages import Outages
from watcher.recorder import Recorder
from watcher.service.metrics import Metrics
from watcher.store import ActiveRun, StateError
from watcher.store.pg.lease import LeaseLost

REFRESH_SECONDS = 1.0  # how often the registry's change feed is read
# GetRunStatus permits go out four at a time (PacingLimiter's ``group``, given it in
# connect.build_limiters): every poll is one, and on a small VM most of a request's CPU is the
# wake-up around it, so four per wake-up is the largest saving a steady daemon has (issue 12;
# benchmarks/REPORT.md, "Permits in groups"). The pollers keep a group's worth queued.
STATUS_GROUP = 4
STATUS_BACKLOG = STATUS_GROUP  # GetRunStatus requests allowed to wait for a permit at once
DESCRIBE_BACKLOG = 2  # DescribeRuns requests allowed to wait for a permit at once
MAX_BACKOFF_SECONDS = 600.0
BAD_REQUEST_BACKOFF_SECONDS = 900.0
FIRST_AUTH_PAUSE_SECONDS = 15.0
MAX_AUTH_PAUSE_SECONDS = 300.0
DESCRIBE_LIMIT = 100  # DescribeRuns' largest Limit (and its largest RunUuid filter)


class Metadata(Protocol):
    """The parts of a GetRunStatus answer a poller needs."""

    @property
    def Status(self) -> str: ...  # Tencent's field name, as the API model keeps it

    @property
    def raw(self) -> Mapping[str, Any]: ...


class StatusSource(Protocol):
    async def get_run_status(self, run_uuid: str, project_id: str = "") -> Metadata: ...


class RunSummaryLike(Protocol):
    """The parts of a DescribeRuns item the batch poller and discovery read."""

    @property
    def RunUuid(self) -> str: ...

    @property
    def Status(self) -> str: ...

    @property
    def RunGroupId(self) -> str | None: ...

    @property
    def update_time(self) -> datetime | None: ...


_Listed_co = TypeVar("_Listed_co", covariant=True)


class RunLister(Protocol[_Listed_co]):
    """One DescribeRuns page (the Omics client), listing runs as ``_Listed_co``."""

    async def describe_runs(
        self,
        *,
        project_id: str = "",
        filters: Sequence[RunsFilter] = (),
        limit: int = DESCRIBE_LIMIT,
        offset: int = 0,
    ) -> tuple[int, Sequence[_Listed_co]]: ...


def max_in_flight(rate_per_second: float, request_timeout_seconds: float) -> int:
    """Requests one action may have open at once: a full timeout's worth at the rate, plus
    headroom, so hung requests cannot pile up without bound."""
    return max(8, math.ceil(rate_per_second * min(request_timeout_seconds, 10)) + 4)


def backoff_delay(errors: int, *, base: float, rng: random.Random) -> float:
    """Seconds to wait after the ``errors``-th consecutive failure (1, 2, ...)."""
    delay: float = min(base * 2.0 ** (errors - 1), MAX_BACKOFF_SECONDS)
    return delay * rng.uniform(0.5, 1.0)  # full-ish jitter: failing runs don't march together


class FeedStore(Protocol):
    """The part of the :class:`~watcher.store.api.AsyncStore` the registry feed reads."""

    async def snapshot(self) -> tuple[int, list[ActiveRun]]: ...

    async def changes_since(self, cursor: int) -> tuple[int, list[ActiveRun], list[str]]: ...

    async def record_polls(self, polled: Sequence[tuple[str, datetime]]) -> None: ...


# A poll's own failure that must stop the poller instead of being logged and retried.
StopsPolling = StateError | LeaseLost


class RegistryFeed:
    """A poller's cursor over the registry, and its buffer of polls that found no news."""

    def __init__(self, store: FeedStore) -> None:
        self._store = store
        self.cursor = 0
        self._polled: list[tuple[str, datetime]] = []

    async def snapshot(self) -> list[ActiveRun]:
        """Every active run; the change feed continues from here."""
        self.cursor, runs = await self._store.snapshot()
        return runs

    async def changes(self) -> tuple[list[ActiveRun], list[str]]:
        """``(tracked or re-tracked, untracked)`` since the last call; flushes polls first."""
        await self.flush()
        self.cursor, added, removed = await self._store.changes_since(self.cursor)
        return added, removed

    def polled(self, run_uuid: str, at: datetime) -> None:
        """A successful poll without news; written at the next :meth:`flush`."""
        self._polled.append((run_uuid, at))

    async def flush(self) -> None:
        if self._polled:
            polled, self._polled = self._polled, []
            await self._store.record_polls(polled)


class AuthPause:
    """Pause all polling while credentials or permissions fail; one log line per episode."""

    def __init__(
        self,
        *,
        log: Any,
        metrics: Metrics,
        clock: Callable[[], float],
        outages: Outages | None = None,
    ) -> None:
        self._log = log
        self._metrics = metrics
        self._clock = clock
        self._outages = outages or Outages(host="")
        self.until = 0.0  # monotonic time the current pause ends (0: not paused)
        self._seconds = 0.0
        self._reason: str | None = None

    @property
    def paused(self) -> bool:
        """True from the first auth failure until a request succeeds again."""
        return self._reason is not None

    def pause(self, reason: str) -> None:
        now = self._clock()
        if self.until > now:
            return  # answers to requests already in flight when the pause began
        self._seconds = min(
            MAX_AUTH_PAUSE_SECONDS, max(FIRST_AUTH_PAUSE_SECONDS, self._seconds * 2)
        )
        self.until = now + self._seconds
        if self._reason is None:
            self._log.error(
                "polling_paused",
                reason=reason,
                hint="check credentials, permissions and the system clock; retrying slowly",
            )
            self._metrics.polling_paused.set(1)
        self._reason = reason
        self._outages.paused(reason)

    def resume(self) -> None:
        """A request was answered (called after every successful answer)."""
        self._outages.answered()
        if self._reason is not None:
            self._log.info("polling_resumed", after=self._reason)
            self._metrics.polling_paused.set(0)
        self._reason = None
        self._seconds = 0.0
        self.until = 0.0


class Naps:
    """A poller loop's sleep: until ``seconds`` pass, :meth:`wake` is called or stop is set.

    A wake-up outside a nap is moot: the loop re-checks everything before it naps again.
    One future and one timer per nap, no task: naps happen tens of times a second, and on
    small VMs every avoidable wake-up of the process costs about a quarter of a millisecond
    of CPU.
    """

    def __init__(self) -> None:
        self._nap: asyncio.Future[None] | None = None  # set while the loop sleeps

    def watch(self, stop: asyncio.Event) -> asyncio.Future[Any]:
        """A future done when ``stop`` is set, which ends the current nap; cancel it at exit."""
        stopper = asyncio.ensure_future(stop.wait())
        stopper.add_done_callback(lambda _: self.wake())
        return stopper

    async def sleep(self, seconds: float, stopper: asyncio.Future[Any]) -> None:
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

    def wake(self) -> None:
        _end_nap(self._nap)


def _end_nap(nap: asyncio.Future[None] | None) -> None:
    if nap is not None and not nap.done():
        nap.set_result(None)


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What the registry holds after :func:`record_status`.

    ``active``: the run is still to be polled (tracked, not terminal, not stopped);
    ``status``: its status now; ``superseded``: another process recorded first, so the
    poller's idea of the previous status was stale and it should look again soon.
    """

    active: bool
    status: str | None
    superseded: bool


async def record_status(
    recorder: Recorder,
    *,
    run_uuid: str,
    project_id: str,
    previous: str | None,
    metadata: Metadata,
) -> RecordResult:
    """Record ``previous -> metadata.Status`` (the caller saw them differ)."""
    recorded = await recorder.status_changed(
        run_uuid, project_id, previous, metadata.Status, metadata.raw
    )
    if recorded.event is None:
        stored = recorded.stored
        if stored is None or stored.terminal or stored.stopped:
            return RecordResult(active=False, status=None, superseded=True)
        return RecordResult(active=True, status=stored.status, superseded=True)
    return RecordResult(
        active=not recorded.event.terminal, status=metadata.Status, superseded=False
    )


def task_failed(task: asyncio.Task[None], *, log: Any, event: str) -> StopsPolling | None:
    """Log ``task`` if it died; return its :class:`StateError` (or ``LeaseLost``) when that
    is why.

    The caller keeps the first such error and re-raises it from its main loop, exactly as a
    failed write there would: a state file that cannot take what polling saw (locked, full,
    corrupted) must stop the daemon loudly, not drop runs one by one.
    """
    if task.cancelled() or task.exception() is None:
        return None
    return work_failed(task.exception(), log=log, event=event)


def work_failed(error: BaseException | None, *, log: Any, event: str) -> StopsPolling | None:
    """Log poll work that died of ``error`` (a reused worker's poll: it has no task of its
    own to die with); return the error when it stops the poller (see above)."""
    if isinstance(error, LeaseLost):
        log.warning(event, error=str(error))
        return error
    log.error(event, error=repr(error))
    return error if isinstance(error, StateError) else None
