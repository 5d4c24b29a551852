"""The dispatcher: outbox rows → notifiers, with retries, pacing and dead letters.

Every rule about *when* to send lives here, never in a notifier:

* at-least-once: a row is marked delivered only after its notifier returned; a crash or a
  stop in between re-sends it later (receivers deduplicate on the event id);
* order per (run, notifier): only the oldest pending row of a run is ever eligible, so a later
  event for a run waits while an earlier one to the same notifier is retrying;
* isolation: one worker per notifier, each with its own pace and queue, so a failing or slow
  destination never delays another;
* pacing: each worker keeps its destination's rate (:class:`~watcher.notifiers.base.Rate`,
  sliding windows counted from the *end* of earlier requests, so the service never sees more),
  queueing bursts instead of having them refused; a ``Retry-After`` pauses the whole worker;
* retries: the first within about a second, then doubling with full jitter (a uniform draw
  up to 1, 2, 4 ... s, capped at 300 s), never sooner than ``Retry-After`` (obeyed up to an
  hour); a row older than its notifier's ``max_age`` when an attempt fails is dead-lettered
  (so it gets at least one attempt, even after a long downtime), as is a row whose notifier
  failed permanently;
* each attempt is bounded by the notifier's ``timeout``; a timeout is retryable;
* digests: for a notifier with a :class:`~watcher.delivery.digest.DigestPolicy`,
  :func:`watcher.delivery.digest.plan`
  folds due rows of one group into one message (a ``digest`` event, or the event itself for a
  group of one) under the same pacing; every row in it is marked delivered only after that
  message succeeded, and on failure all of them retry together with one backoff (or are
  dead-lettered together for a permanent failure; by age, row by row). At most one message
  per group is in flight, so a group's digests, like a run's events, go out in order.

Rows are found by :meth:`Dispatcher.notify` (called right after the poller records events)
and by polling the outbox every ``poll_interval`` seconds (rows written by other processes,
retries coming due). Logs: ``notify_delivered``, ``notify_retry``, ``notify_failed``,
``notify_dead_lettered``, each bound to ``notifier``, ``run_uuid`` and ``event_id``; reasons
come from the notifiers already redacted, so no secret is logged or stored.

Wall-clock stamps come from the injected ``clock`` (the store's times are wall clock); waits
and pacing use the event loop's monotonic time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from structlog.typing import FilteringBoundLogger

from watcher.delivery.digest import Batch, DigestPolicy, Progress, digest_event, plan, run_key
from watcher.events import Event
from watcher.notifiers.base import Notifier, Permanent, Rate, Retryable
from watcher.notifiers.common import NotifierBase
from watcher.notifiers.registry import rates_for
from watcher.store.models import Delivery

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0
# A Retry-After is honoured up to an hour: a broken or hostile answer ("Retry-After: 9999999")
# must not silence a destination for days.
MAX_RETRY_AFTER_SECONDS = 3600.0
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_SCAN_LIMIT = 500

Outcome = Literal["delivered", "retry", "failed", "dead_lettered"]


class OutboxStore(Protocol):
    """The part of :class:`watcher.store.Store` the dispatcher uses."""

    def pending_deliveries(
        self, notifier: str | None = None, limit: int = 100
    ) -> list[Delivery]: ...

    def mark_delivered(self, delivery_id: int) -> None: ...

    def mark_retry(
        self, delivery_id: int, *, attempts: int, next_attempt_at: datetime, error: str
    ) -> None: ...

    def mark_dead(self, delivery_id: int, *, error: str, attempts: int | None = None) -> None: ...


class DeliveryObserver(Protocol):
    """Metrics hook: called once per finished attempt (``latency``: row creation to delivery)."""

    def delivery(self, *, notifier: str, outcome: Outcome, latency: float | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """How one notifier's deliveries are run."""

    max_age: float = 86400.0
    timeout: float = 10.0
    rates: tuple[Rate, ...] = ()
    max_in_flight: int = 8  # concurrent sends, never two for one run
    digest: DigestPolicy | None = None  # fold rows into digests (off by default)

    @classmethod
    def from_settings(cls, settings: NotifierBase) -> Policy:
        return cls(
            max_age=settings.max_age_seconds,
            timeout=settings.timeout_seconds,
            rates=rates_for(settings),
            digest=DigestPolicy.from_settings(settings.digest),
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def backoff(
    attempts: int,
    *,
    first: float = FIRST_RETRY_SECONDS,
    cap: float = MAX_RETRY_SECONDS,
    uniform: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempts`` (1-based): ``first·2^(n-1)``, capped, jittered.

    "Equal jitter" (between half and all of the step), not full jitter: retries of many rows
    still spread out, but the schedule stays predictable enough that a receiver back after a
    10 s outage is reached within about 16 s of the first failure (0.5-1, then 1-2, 2-4,
    4-8 s ...), as the interface promises ("bridged within about 20 s").
    """
    ceiling = min(cap, first * 2.0 ** min(max(attempts - 1, 0), 32))
    return ceiling * (0.5 + 0.5 * uniform())


def retry_delay(
    attempts: int, retry_after: float | None, *, uniform: Callable[[], float] = random.random
) -> float:
    """The backoff, but never sooner than the destination asked (``Retry-After``, capped)."""
    return max(backoff(attempts, uniform=uniform), honoured(retry_after))


def honoured(retry_after: float | None) -> float:
    """How much of a ``Retry-After`` is obeyed: all of it, up to an hour."""
    return min(max(retry_after or 0.0, 0.0), MAX_RETRY_AFTER_SECONDS)


async def attempt(notifier: Notifier, event: Event, *, time_limit: float) -> None:
    """One bounded delivery attempt; every failure comes out as Retryable or Permanent."""
    try:
        async with asyncio.timeout(time_limit):
            await notifier.send(event)
    except (Retryable, Permanent):
        raise
    except TimeoutError:
        raise Retryable(f"timed out after {time_limit:g} s") from None
    except Exception as exc:  # a notifier bug must not kill its worker or lose the row
        # Only the type: an exception's text may quote a URL with its token.
        raise Retryable(f"internal error in notifier: {type(exc).__name__}") from None


async def send_now(
    notifier: Notifier,
    event: Event,
    *,
    attempts: int = 5,
    deadline: float,
    time_limit: float = 10.0,
    uniform: Callable[[], float] = random.random,
) -> int:
    """Deliver ``event`` now, retrying by the usual rules; return the attempts it took.

    ``deadline`` is in event-loop time (``loop.time()``). Raises the last
    :class:`Retryable` when ``attempts`` are used up or the next wait would pass the deadline,
    and :class:`Permanent` at once. Used by ``omics-watcher test-notify``.
    """
    loop = asyncio.get_running_loop()
    for number in range(1, max(1, attempts) + 1):
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise Retryable("deadline passed before delivery")
        try:
            await attempt(notifier, event, time_limit=min(time_limit, remaining))
            return number
        except Retryable as exc:
            delay = retry_delay(number, exc.retry_after, uniform=uniform)
            if number >= attempts or loop.time() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class Pacer:
    """Sliding-window pacing for one destination; pure bookkeeping, the worker does the waiting.

    A window ``(count, seconds)`` admits a new request only when the request ``count`` places
    back has *finished* at least ``seconds`` ago (one still in flight blocks), so however long
    requests take to arrive, the destination never sees more than ``count`` per ``seconds``.
    """

    def __init__(self, rates: tuple[Rate, ...]) -> None:
        self.rates = rates
        self._windows = [window for rate in rates for window in rate.windows()]
        depth = max((count for count, _ in self._windows), default=0)
        self._history: deque[list[float]] = deque(maxlen=max(depth, 1))
        self._paused_until = -math.inf

    def delay(self, now: float) -> float:
        """Seconds until a request may start (``inf``: wait for one in flight to finish)."""
        wait = max(0.0, self._paused_until - now)
        for count, seconds in self._windows:
            if len(self._history) >= count:
                finished = self._history[-count][0]
                wait = max(wait, finished + seconds - now)
        return wait

    def start(self) -> list[float]:
        slot = [math.inf]  # finish time, unknown while in flight
        self._history.append(slot)
        return slot

    @staticmethod
    def finish(slot: list[float], now: float) -> None:
        slot[0] = now

    def pause(self, until: float) -> None:
        self._paused_until = max(self._paused_until, until)


@dataclass
class _Worker:
    name: str
    notifier: Notifier
    policy: Policy
    pacer: Pacer
    logger: FilteringBoundLogger
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    rescan: bool = True
    retired: bool = False
    batch: dict[int, Delivery] = dataclasses.field(default_factory=dict)  # by id, in order
    batch_full: bool = False
    next_scan: float = -math.inf
    in_flight: dict[int, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    in_flight_keys: set[str] = dataclasses.field(default_factory=set)
    busy_groups: set[str] = dataclasses.field(default_factory=set)  # digests in flight
    task: asyncio.Task[None] | None = None


# Events without a run (none exist today) are ordered on their own.
_run_key = run_key


class Dispatcher:
    """Delivers outbox rows to notifiers; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        store: OutboxStore,
        notifiers: Mapping[str, Notifier],
        policies: Mapping[str, Policy] | None = None,
        clock: Callable[[], datetime] = _utc_now,
        logger: FilteringBoundLogger,
        metrics: DeliveryObserver | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
        uniform: Callable[[], float] = random.random,
        progress: Callable[[str], Progress | None] | None = None,
    ) -> None:
        """``progress`` tells a digest where its run group stands (``group_progress``)."""
        self._store = store
        self._progress = progress
        self._clock = clock
        self._logger = logger
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._scan_limit = scan_limit
        self._uniform = uniform
        self._notifiers = dict(notifiers)
        self._policies = dict(policies or {})
        self._workers: dict[str, _Worker] = {}
        self._group: asyncio.TaskGroup | None = None
        self._stopping = False
        self._halt = asyncio.Event()
        self._abandon = False
        self._done: asyncio.Event | None = None

    # ---- control --------------------------------------------------------------------------

    def notify(self) -> None:
        """New rows were recorded: every worker looks at the outbox now."""
        for worker in self._workers.values():
            worker.rescan = True
            worker.wake.set()

    def replace_notifiers(
        self, notifiers: Mapping[str, Notifier], policies: Mapping[str, Policy] | None = None
    ) -> None:
        """Swap the notifier set (SIGHUP reload) without losing a row.

        Workers of removed notifiers finish their in-flight sends and stop; their rows stay
        pending (the caller decides whether to dead-letter them with the store's
        ``reassign_pending``). Kept notifiers switch to the new object on their next send.
        """
        self._notifiers = dict(notifiers)
        self._policies = dict(policies or {})
        for name, worker in list(self._workers.items()):
            if name not in self._notifiers:
                worker.retired = True
                worker.wake.set()
                del self._workers[name]
        for name, notifier in self._notifiers.items():
            policy = self._policies.get(name, Policy())
            kept = self._workers.get(name)
            if kept is None:
                if self._group is not None and not self._stopping:
                    self._start(name)
                continue
            kept.notifier = notifier
            if policy.rates != kept.policy.rates:
                kept.pacer = Pacer(policy.rates)
            kept.policy = policy
            kept.rescan = True
            kept.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set (or :meth:`drain` is called), then return.

        After the stop no worker waits for a retry, a pace or the next poll: rows due right now
        are still sent, everything else stays pending. :meth:`drain` bounds how long that and
        the in-flight sends may take.
        """
        self._done = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for name in self._notifiers:
                    self._start(name)
                waiters = {
                    group.create_task(stop.wait()),
                    group.create_task(self._halt.wait()),
                }
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                self._begin_stop()
        finally:
            self._group = None
            self._done.set()

    async def drain(self, deadline: float) -> int:
        """Stop, give in-flight sends until ``deadline`` (loop time), then cancel the rest.

        Returns how many sends were cancelled; their rows stay pending for the next start.
        """
        self._begin_stop()
        done = self._done
        if done is None or done.is_set():
            return 0
        remaining = deadline - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, remaining)):
                await done.wait()
                return 0
        self._abandon = True
        cancelled = 0
        for worker in self._workers.values():
            for task in worker.in_flight.values():
                cancelled += task.cancel()
            worker.wake.set()
        await done.wait()
        return cancelled

    def _begin_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._halt.set()
            for worker in self._workers.values():
                worker.rescan = True  # one last look for rows recorded just before the stop
                worker.wake.set()

    def _start(self, name: str) -> None:
        assert self._group is not None
        policy = self._policies.get(name, Policy())
        worker = _Worker(
            name=name,
            notifier=self._notifiers[name],
            policy=policy,
            pacer=Pacer(policy.rates),
            logger=self._logger.bind(notifier=name),
        )
        self._workers[name] = worker
        worker.task = self._group.create_task(self._work(worker), name=f"notify:{name}")

    # ---- one worker per notifier ----------------------------------------------------------

    async def _work(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as sends:
            while not worker.retired and not self._abandon:
                mono = loop.time()
                if worker.rescan or (mono >= worker.next_scan and not self._stopping):
                    self._scan(worker, mono)
                wait = self._launch(worker, sends, mono)
                if wait <= 0:
                    continue
                if self._stopping and not worker.in_flight:
                    break  # the final pass: nothing else can go right now
                worker.wake.clear()
                with contextlib.suppress(TimeoutError):
                    # While stopping, only a finishing send (or drain) ends the wait.
                    async with asyncio.timeout(None if self._stopping else wait):
                        await worker.wake.wait()
            # Let what is in flight finish (drain() cancels it at its deadline).
            while worker.in_flight:
                worker.wake.clear()
                await worker.wake.wait()

    def _scan(self, worker: _Worker, mono: float) -> None:
        rows = self._store.pending_deliveries(worker.name, limit=self._scan_limit)
        worker.batch = {row.id: row for row in rows}
        worker.batch_full = len(rows) >= self._scan_limit
        worker.rescan = False
        worker.next_scan = mono + self._poll_interval

    def _launch(self, worker: _Worker, sends: asyncio.TaskGroup, mono: float) -> float:
        """Start every send that may go now; return how long to wait (0: look again now)."""
        if worker.policy.digest is not None:
            return self._launch_digests(worker, worker.policy.digest, sends, mono)
        now = self._clock()
        wait = math.inf if self._stopping else max(0.0, worker.next_scan - mono)
        seen: set[str] = set()
        for delivery in worker.batch.values():
            key = _run_key(delivery)
            if key in seen:
                continue  # only the oldest pending row of a run may go
            seen.add(key)
            if delivery.id in worker.in_flight or key in worker.in_flight_keys:
                continue
            due_in = (delivery.next_attempt_at - now).total_seconds()
            if due_in > 0:
                wait = min(wait, due_in)
                continue
            if len(worker.in_flight) >= worker.policy.max_in_flight:
                return max(wait, 1e-3)  # a finishing send wakes the worker
            pace = worker.pacer.delay(mono)
            if pace > 0:
                return min(wait, pace)  # inf while a send blocks the window: it wakes us
            self._begin(worker, sends, delivery)
        if not worker.batch and worker.batch_full:
            # Everything seen is done and the outbox may hold more than one scan's worth.
            worker.rescan = True
            return 0.0
        return wait

    def _launch_digests(
        self, worker: _Worker, policy: DigestPolicy, sends: asyncio.TaskGroup, mono: float
    ) -> float:
        """The digest form of :meth:`_launch`: one send per ready group."""
        now = self._clock()
        wait = math.inf if self._stopping else max(0.0, worker.next_scan - mono)
        result = plan(
            worker.batch.values(),
            policy=policy,
            now=now,
            busy_runs=worker.in_flight_keys,
            busy_groups=worker.busy_groups,
            flush=self._stopping,  # the window is a preference; a stop sends what is due
        )
        if result.wake_at is not None:
            wait = min(wait, max(0.0, (result.wake_at - now).total_seconds()))
        for batch in result.ready:
            if len(worker.in_flight) >= worker.policy.max_in_flight:
                return max(wait, 1e-3)
            pace = worker.pacer.delay(mono)
            if pace > 0:
                return min(wait, pace)  # the rows stay grouped and gain company meanwhile
            self._begin_digest(worker, sends, batch)
        if not worker.batch and worker.batch_full:
            worker.rescan = True
            return 0.0
        return wait

    def _begin_digest(self, worker: _Worker, sends: asyncio.TaskGroup, batch: Batch) -> None:
        keys = {_run_key(row) for row in batch.rows}
        worker.in_flight_keys |= keys
        worker.busy_groups.add(batch.group)
        slot = worker.pacer.start()
        task = sends.create_task(self._deliver_digest(worker, batch, slot))
        marker = batch.rows[0].id  # rows are in flight at most once, so ids are unique keys
        worker.in_flight[marker] = task

        def finished(_: asyncio.Task[None]) -> None:
            worker.in_flight.pop(marker, None)
            worker.in_flight_keys.difference_update(keys)
            worker.busy_groups.discard(batch.group)
            worker.wake.set()

        task.add_done_callback(finished)

    def _digest_for(self, worker: _Worker, batch: Batch) -> Event:
        if len(batch.rows) == 1:
            return batch.rows[0].event
        policy = worker.policy.digest or DigestPolicy()
        progress = None
        if policy.group_by == "run_group" and batch.group and self._progress is not None:
            try:
                progress = self._progress(batch.group)
            except Exception as exc:  # the counts are a nicety; the events must still go
                worker.logger.warning("digest_progress_failed", error=type(exc).__name__)
        return digest_event(
            [row.event for row in batch.rows],
            group_by=policy.group_by,
            group=batch.group,
            progress=progress,
        )

    async def _deliver_digest(self, worker: _Worker, batch: Batch, slot: list[float]) -> None:
        loop = asyncio.get_running_loop()
        rows = batch.rows
        try:
            event = self._digest_for(worker, batch)
        except Exception as exc:  # a bug must not kill the worker or lose the rows
            worker.pacer.finish(slot, loop.time())
            failure = Retryable(f"internal error building a digest: {type(exc).__name__}")
            self._retry_together(worker, rows, failure, worker.logger.bind(group=batch.group))
            return
        log = worker.logger.bind(
            event_id=event.id, group=batch.group, events=len(rows), run_uuid=event.run_uuid
        )
        number = max(row.attempts for row in rows) + 1
        try:
            await attempt(worker.notifier, event, time_limit=worker.policy.timeout)
        except Retryable as exc:
            worker.pacer.finish(slot, loop.time())
            if exc.retry_after:
                worker.pacer.pause(loop.time() + honoured(exc.retry_after))
            self._retry_together(worker, rows, exc, log)
            return
        except Permanent as exc:
            worker.pacer.finish(slot, loop.time())
            log.warning("notify_failed", attempt=number, error=exc.reason, permanent=True)
            for row in rows:
                self._observe(worker, "failed", None)
                self._dead_letter(worker, row, exc.reason, row.attempts + 1, log)
            return
        except asyncio.CancelledError:
            worker.pacer.finish(slot, loop.time())
            raise
        worker.pacer.finish(slot, loop.time())
        now = self._clock()
        for row in rows:  # only now: every row of the message was sent
            self._store.mark_delivered(row.id)
            self._forget(worker, row.id)
            self._observe(worker, "delivered", (now - row.created_at).total_seconds())
        oldest = max((now - row.created_at).total_seconds() for row in rows)
        log.info("notify_delivered", attempt=number, latency_seconds=round(oldest, 3))

    def _retry_together(
        self,
        worker: _Worker,
        rows: tuple[Delivery, ...],
        exc: Retryable,
        log: FilteringBoundLogger,
    ) -> None:
        """One backoff for the whole digest; rows past ``max_age`` are dead-lettered."""
        number = max(row.attempts for row in rows) + 1
        now = self._clock()
        delay = retry_delay(number, exc.retry_after, uniform=self._uniform)
        next_at = now + timedelta(seconds=delay)
        for row in rows:
            age = (now - row.created_at).total_seconds()
            if age >= worker.policy.max_age:
                reason = f"gave up after {row.attempts + 1} attempts in {age:.0f} s: {exc.reason}"
                self._dead_letter(worker, row, reason, row.attempts + 1, log)
                continue
            self._store.mark_retry(
                row.id, attempts=row.attempts + 1, next_attempt_at=next_at, error=exc.reason
            )
            if row.id in worker.batch:
                worker.batch[row.id] = dataclasses.replace(
                    row, attempts=row.attempts + 1, next_attempt_at=next_at, last_error=exc.reason
                )
            self._observe(worker, "retry", None)
        log.warning(
            "notify_retry",
            attempt=number,
            error=exc.reason,
            retry_in_seconds=round(delay, 3),
            retry_after=exc.retry_after,
        )

    def _begin(self, worker: _Worker, sends: asyncio.TaskGroup, delivery: Delivery) -> None:
        key = _run_key(delivery)
        worker.in_flight_keys.add(key)
        # Take the pacing slot now, not when the task first runs: the launch loop goes on to
        # the next row before this task starts and must already count it.
        slot = worker.pacer.start()
        task = sends.create_task(self._deliver(worker, delivery, slot))
        worker.in_flight[delivery.id] = task

        def finished(_: asyncio.Task[None]) -> None:
            worker.in_flight.pop(delivery.id, None)
            worker.in_flight_keys.discard(key)
            worker.wake.set()

        task.add_done_callback(finished)

    async def _deliver(self, worker: _Worker, delivery: Delivery, slot: list[float]) -> None:
        loop = asyncio.get_running_loop()
        event = delivery.event
        log = worker.logger.bind(
            run_uuid=event.run_uuid, event_id=event.id, delivery_id=delivery.id
        )
        number = delivery.attempts + 1
        try:
            await attempt(worker.notifier, event, time_limit=worker.policy.timeout)
        except Retryable as exc:
            worker.pacer.finish(slot, loop.time())
            if exc.retry_after:
                # The destination speaks for all of its traffic: hold every row back.
                worker.pacer.pause(loop.time() + honoured(exc.retry_after))
            self._retry_or_give_up(worker, delivery, exc, log)
            return
        except Permanent as exc:
            worker.pacer.finish(slot, loop.time())
            log.warning("notify_failed", attempt=number, error=exc.reason, permanent=True)
            self._observe(worker, "failed", None)
            self._dead_letter(worker, delivery, exc.reason, number, log)
            return
        except asyncio.CancelledError:
            worker.pacer.finish(slot, loop.time())
            raise
        worker.pacer.finish(slot, loop.time())
        self._store.mark_delivered(delivery.id)
        self._forget(worker, delivery.id)
        latency = (self._clock() - delivery.created_at).total_seconds()
        log.info("notify_delivered", attempt=number, latency_seconds=round(latency, 3))
        self._observe(worker, "delivered", latency)

    def _retry_or_give_up(
        self, worker: _Worker, delivery: Delivery, exc: Retryable, log: FilteringBoundLogger
    ) -> None:
        number = delivery.attempts + 1
        now = self._clock()
        age = (now - delivery.created_at).total_seconds()
        if age >= worker.policy.max_age:
            reason = f"gave up after {number} attempts in {age:.0f} s: {exc.reason}"
            self._dead_letter(worker, delivery, reason, number, log)
            return
        delay = retry_delay(number, exc.retry_after, uniform=self._uniform)
        next_at = now + timedelta(seconds=delay)
        self._store.mark_retry(
            delivery.id, attempts=number, next_attempt_at=next_at, error=exc.reason
        )
        if delivery.id in worker.batch:
            worker.batch[delivery.id] = dataclasses.replace(
                delivery, attempts=number, next_attempt_at=next_at, last_error=exc.reason
            )
        log.warning(
            "notify_retry",
            attempt=number,
            error=exc.reason,
            retry_in_seconds=round(delay, 3),
            retry_after=exc.retry_after,
        )
        self._observe(worker, "retry", None)

    def _dead_letter(
        self,
        worker: _Worker,
        delivery: Delivery,
        reason: str,
        attempts: int,
        log: FilteringBoundLogger,
    ) -> None:
        self._store.mark_dead(delivery.id, error=reason, attempts=attempts)
        self._forget(worker, delivery.id)
        log.error("notify_dead_lettered", attempts=attempts, error=reason)
        self._observe(worker, "dead_lettered", None)

    @staticmethod
    def _forget(worker: _Worker, delivery_id: int) -> None:
        worker.batch.pop(delivery_id, None)

    def _observe(self, worker: _Worker, outcome: Outcome, latency: float | None) -> None:
        if self._metrics is not None:
            self._metrics.delivery(notifier=worker.name, outcome=outcome, latency=latency)
