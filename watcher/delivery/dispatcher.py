"""The dispatcher: outbox rows → notifiers, one worker per notifier, one path for every send.

Every rule about *when* to send lives in :mod:`watcher.delivery`, never in a notifier. Every
send is a :class:`~watcher.delivery.digest.Send` (one row, or the rows of a digest: a single
event is a send of one, as Alertmanager's ``Notify(ctx, ...alerts)`` takes a batch), and
every send takes the same path: **plan** (:func:`~watcher.delivery.digest.plan` picks what may
go), **begin** (a pacing slot, a task), **deliver** (one bounded attempt), **settle** (the
result applied to every row of the send together). The rules:

* at-least-once: a row is marked delivered only after the message carrying it succeeded; a
  crash or a stop in between re-sends it later (receivers deduplicate on the event id);
* order per (run, notifier): only the oldest pending row of a run is ever eligible, so a later
  event for a run waits while an earlier one to the same notifier is in flight or retrying;
* isolation: one worker per notifier, each with its own pace and queue, so a failing or slow
  destination never delays another;
* pacing (:mod:`~watcher.delivery.pacing`): each worker keeps its destination's rate,
  queueing bursts instead of having them refused; a ``Retry-After`` pauses the whole worker;
* retries (:mod:`~watcher.delivery.retry`): equal-jitter backoff capped at 5 min, never sooner
  than ``Retry-After``; all rows of a failed send retry together with one backoff; a row older
  than its notifier's ``max_age`` when an attempt fails is dead-lettered (so it gets at least
  one attempt, even after a long downtime), as is every row of a send that failed permanently;
* each attempt is bounded by the notifier's ``timeout``; a timeout is retryable;
* digests: for a notifier with a :class:`~watcher.delivery.digest.DigestPolicy` the plan folds
  due rows of one group into one send; at most one send per group is in flight, so a group's
  digests, like a run's events, go out in order;
* mute windows (:mod:`~watcher.delivery.muting`): while one of its notifier's windows is
  open, a worker plans nothing; at the window's end every held row is due and goes (folded
  into digests where the notifier has them), no attempt counted; time held in a window does
  not count towards ``max_age``, so a held row is never dead-lettered for waiting there;
* silences (:mod:`~watcher.delivery.silencer`): at the planning step, a row about to go whose
  event an active silence matches for the notifier is settled ``silenced`` and never sent.
* replicas: every attempt first awaits the ``gate`` (:func:`watcher.replica.lease_gate`), so
  a daemon that lost its lease begins no send of any kind (email too) and marks nothing.

Rows are found by :meth:`Dispatcher.notify` (called right after events are recorded) and by
looking every ``poll_interval`` seconds whether the outbox changed (rows written by other
processes: a CLI ``redeliver``, another replica's admin API): the store's
``outbox_version`` (:mod:`watcher.store.outbox_changes`, one cheap read on either backend)
tells, and only a change re-reads the rows. Retries, digest and mute windows come due from
the rows the last read holds. :meth:`Dispatcher.stop` ends it: one last look, what is due now is
sent, in-flight sends get until the deadline, the rest stays in the outbox. Logs:
``notify_delivered``, ``notify_retry``, ``notify_failed`` (per send), ``notify_dead_lettered``
(per row), bound to ``notifier``, ``run_uuid`` and ``event_id``; reasons come from the
notifiers already redacted, so no secret is logged or stored.

Wall-clock stamps come from the injected ``clock`` (the store's times are wall clock); waits
and pacing use the event loop's monotonic time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from structlog.typing import FilteringBoundLogger

from watcher.delivery.digest import DigestPolicy, Progress, Send, digest_event, plan, run_key
from watcher.delivery.muting import MuteInterval, MuteState, mute_state, unmuted_seconds
from watcher.delivery.pacing import Pacer, Slot
from watcher.delivery.retry import attempt, honoured, retry_delay
from watcher.delivery.silencer import SilenceCheck
from watcher.events import Event
from watcher.notifiers.base import Notifier, NotifyError, Permanent, Rate, Retryable
from watcher.statuses import DEFAULT_STATUSES, Statuses
from watcher.store.models import Delivery
from watcher.store.pg.lease import LeaseLost
from watcher.tasks import wait_set

DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_SCAN_LIMIT = 500

# What became of one row after one attempt (the ``outcome`` label of the deliveries metric).
DeliveryOutcome = Literal["delivered", "retry", "failed", "dead_lettered", "silenced"]


class OutboxStore(Protocol):
    """The part of the :class:`~watcher.store.api.AsyncStore` the dispatcher uses. A fenced
    mark of a daemon that lost its lease raises ``LeaseLost``: it ends the dispatcher's run
    (it is not caught here), so the lease supervisor can stop delivery."""

    async def pending_deliveries(
        self, notifier: str | None = None, limit: int = 100
    ) -> list[Delivery]: ...

    async def mark_delivered(self, delivery_id: int) -> None: ...

    async def mark_retry(
        self, delivery_id: int, *, attempts: int, next_attempt_at: datetime, error: str
    ) -> None: ...

    async def mark_dead(
        self, delivery_id: int, *, error: str, attempts: int | None = None
    ) -> None: ...

    async def mark_silenced(self, delivery_id: int, reason: str) -> None: ...

    async def outbox_version(self) -> Hashable: ...


class DeliveryObserver(Protocol):
    """Metrics hook, called per row per finished attempt.

    ``latency``: from the row's recording to its delivery (``delivered`` only, else ``None``).
    """

    def delivery(
        self, *, notifier: str, outcome: DeliveryOutcome, latency: float | None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """How one notifier's deliveries are run."""

    max_age: float = 86400.0
    timeout: float = 10.0
    rates: tuple[Rate, ...] = ()
    max_in_flight: int = 8  # concurrent sends, never two for one run
    digest: DigestPolicy | None = None  # fold rows into digests (off by default)
    mute: tuple[MuteInterval, ...] = ()  # hold rows while one of these windows is open


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class _Worker:
    name: str
    notifier: Notifier
    policy: Policy
    pacer: Pacer
    logger: FilteringBoundLogger
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    rescan: bool = True
    retired: bool = False
    # The last scan of the outbox, by id in outbox order; a settled row leaves it at once.
    pending: dict[int, Delivery] = dataclasses.field(default_factory=dict)
    scan_full: bool = False
    seen: Hashable | None = None  # the outbox version the last scan read
    next_scan: float = -math.inf
    # Sends in flight, by the id of their first row (a row is in flight at most once).
    in_flight: dict[int, Send] = dataclasses.field(default_factory=dict)
    # Mute windows: the last answer, the intervals it is for, rows of the scan it holds.
    mute: MuteState | None = None
    mute_of: tuple[MuteInterval, ...] = ()
    held: int = 0

    def busy_runs(self) -> set[str]:
        return {run_key(row) for send in self.in_flight.values() for row in send.rows}

    def busy_groups(self) -> set[str]:
        return {send.group for send in self.in_flight.values()}


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
        progress: Callable[[str], Awaitable[Progress | None]] | None = None,
        statuses: Statuses = DEFAULT_STATUSES,
        silences: SilenceCheck | None = None,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``progress`` tells a digest where its run group stands (``group_progress``);
        ``statuses`` how a digest counts its runs (succeeded, failed ...); ``silences``
        which rows to settle as silenced instead of sending (:meth:`_unsilenced`); ``gate``
        is awaited right before each attempt, whatever the notifier's kind (replicas: the
        lease's :func:`~watcher.replica.lease_gate`, which parks a send until it is
        cancelled once the lease is lost; ``None``, one daemon per state file: no gate)."""
        self._store = store
        self._gate = gate
        self._silences = silences
        self._progress = progress
        self._statuses = statuses
        self._clock = clock
        self._logger = logger
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._scan_limit = scan_limit
        self._uniform = uniform
        self._notifiers = dict(notifiers)
        self._policies = dict(policies or {})
        self._workers: dict[asyncio.Task[None], _Worker] = {}  # every live worker, by its task
        self._group: asyncio.TaskGroup | None = None  # while run() runs
        self._stopping = asyncio.Event()

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
        pending (the caller decides whether to dead-letter them). Kept notifiers switch to
        the new object on their next send.
        """
        self._notifiers = dict(notifiers)
        self._policies = dict(policies or {})
        active: set[str] = set()
        for worker in self._workers.values():
            if worker.retired:
                continue
            worker.wake.set()
            if worker.name not in self._notifiers:
                worker.retired = True
                continue
            active.add(worker.name)
            policy = self._policies.get(worker.name, Policy())
            worker.notifier = self._notifiers[worker.name]
            if policy.rates != worker.policy.rates:
                worker.pacer = Pacer(policy.rates)
            worker.policy = policy
            worker.rescan = True
        if self._group is not None and not self._stopping.is_set():
            for name in self._notifiers.keys() - active:
                self._start(name)

    async def run(self) -> None:
        """Deliver until :meth:`stop`; return once every worker has finished."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for name in self._notifiers:
                    self._start(name)
                # Holds the group open while no notifier is configured: a reload may add one.
                group.create_task(self._stopping.wait())
        finally:
            self._group = None

    async def stop(self, deadline: float) -> int:
        """Stop delivering by ``deadline`` (loop time); return how many sends were cut off.

        From now on no worker waits for a retry, a pace, a digest window or the next poll:
        after one last look at the outbox, rows due right now are still sent and in-flight
        sends may finish. At ``deadline`` whatever is still sending is cancelled; its rows
        stay pending for the next start (a cancelled attempt counts for nothing).
        """
        if not self._stopping.is_set():
            self._stopping.set()
            self.notify()  # one last look for rows recorded just before the stop
        live = dict(self._workers)
        if not live:
            return 0
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        _, late = await asyncio.wait(live, timeout=remaining)
        cut_off = 0
        for task in late:
            cut_off += len(live[task].in_flight)
            task.cancel()  # its TaskGroup cancels the sends in flight
        if late:
            await asyncio.wait(late)
        return cut_off

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
        task = self._group.create_task(self._work(worker), name=f"notify:{name}")
        self._workers[task] = worker
        task.add_done_callback(self._forget_worker)

    def _forget_worker(self, task: asyncio.Task[None]) -> None:
        self._workers.pop(task, None)

    def muted(self) -> dict[str, int]:
        """Rows each notifier holds in a mute window now (0: not muted), as far as its last
        outbox scan saw (at most ``scan_limit``); read by the metrics at scrape time."""
        return {w.name: w.held for w in list(self._workers.values()) if not w.retired}

    def _muted_for(self, worker: _Worker, now: datetime) -> float | None:
        """Seconds until the worker's mute window ends, or ``None`` when it may send now.

        The answer is kept until it may change (a window starts or ends, or a reload brings
        other intervals), so a notifier without a window open pays one comparison per plan.
        """
        intervals = worker.policy.mute
        state = worker.mute
        if state is None or worker.mute_of is not intervals or not state.holds_at(now):
            was = state is not None and state.until is not None
            state = worker.mute = mute_state(intervals, now)
            worker.mute_of = intervals
            if state.until is not None and not was:
                until = state.until.isoformat()
                worker.logger.info("notify_muted", until=until, held=len(worker.pending))
            elif state.until is None and was:
                worker.logger.info("notify_unmuted", released=len(worker.pending))
        if state.until is None:
            worker.held = 0
            return None
        worker.held = len(worker.pending)
        return max(0.0, (state.until - now).total_seconds())

    # ---- one worker per notifier ----------------------------------------------------------

    async def _work(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        # Leaving the group lets the sends in flight finish (stop() cancels them at its deadline).
        async with asyncio.TaskGroup() as sends:
            while not worker.retired:
                stopping = self._stopping.is_set()
                mono = loop.time()
                if worker.rescan or (mono >= worker.next_scan and not stopping):
                    await self._look(worker, mono)
                wait = await self._launch(worker, sends, mono, stopping=stopping)
                if wait <= 0 or worker.rescan:  # rescan: notify() came during the look
                    continue
                if stopping and not worker.in_flight:
                    break  # the final pass: nothing else can go right now
                worker.wake.clear()
                # While stopping, only a finishing send (or the deadline) ends the wait.
                await wait_set(worker.wake, None if stopping else wait)

    async def _look(self, worker: _Worker, mono: float) -> None:
        """Re-read the worker's pending rows if they may differ from the last read.

        Rows due later (retries, digest and mute windows) are in the last read with their
        times, so only a write can change what there is to send: the store's
        ``outbox_version`` is read first (one cheap read on either backend), and while it is
        the one read before the last scan the rows are not read again. A notify, a full
        last scan (``scan_limit`` rows: more exist) or no scan yet always re-reads. The
        version is taken before the rows, so a write landing during the read shows at the
        next look.
        """
        forced = worker.rescan or worker.scan_full or worker.seen is None
        worker.rescan = False  # a notify() during the awaits below asks for another look
        version = await self._store.outbox_version()
        if forced or version != worker.seen:
            rows = await self._store.pending_deliveries(worker.name, limit=self._scan_limit)
            worker.pending = {row.id: row for row in rows}
            worker.scan_full = len(rows) >= self._scan_limit
            worker.seen = version
        worker.next_scan = mono + self._poll_interval

    async def _launch(
        self, worker: _Worker, sends: asyncio.TaskGroup, mono: float, *, stopping: bool
    ) -> float:
        """Begin every send that may go now; return how long to wait (0: look again now)."""
        now = self._clock()
        wait = math.inf if stopping else max(0.0, worker.next_scan - mono)
        held_for = self._muted_for(worker, now)
        if held_for is not None:  # a mute window: nothing goes, even when stopping
            return min(wait, held_for)
        planned = plan(
            worker.pending.values(),
            policy=worker.policy.digest,
            now=now,
            busy_runs=worker.busy_runs(),
            busy_groups=worker.busy_groups(),
            flush=stopping,  # a digest's window is a preference; a stop sends what is due
            room=worker.policy.max_in_flight - len(worker.in_flight),  # a finish wakes us
        )
        if planned.wake_at is not None:
            wait = min(wait, max(0.0, (planned.wake_at - now).total_seconds()))
        if planned.ready and self._silences is not None:
            await self._silences.refresh()  # reads the store at most once a second
        for planned_send in planned.ready:
            send = await self._unsilenced(worker, planned_send, now)
            if send is None:
                wait = 0.0  # rows of its run behind it may go now: plan again
                continue
            pace = worker.pacer.delay(mono)
            if pace > 0:
                # inf while a send blocks the window (its end wakes us); digest rows stay
                # grouped meanwhile and gain company.
                return min(wait, pace)
            self._begin(worker, sends, send)
        if not worker.pending and worker.scan_full:
            # Everything seen is settled and the outbox may hold more than one scan's worth.
            worker.rescan = True
            return 0.0
        return wait

    async def _unsilenced(self, worker: _Worker, send: Send, now: datetime) -> Send | None:
        """The planning step's silence check: rows whose event an active silence matches for
        this notifier are settled ``silenced`` (never sent); the rest of the send goes on.
        ``None``: nothing of it is left. Only rows about to go are checked, so a row waiting
        for a retry is silenced at its next attempt."""
        if self._silences is None:
            return send
        kept: list[Delivery] = []
        for row in send.rows:
            silence = self._silences.silencing(row.event, worker.name, now)
            if silence is None:
                kept.append(row)
                continue
            await self._store.mark_silenced(row.id, f"silenced by silence {silence.id}")
            worker.pending.pop(row.id, None)
            worker.logger.info(
                "notify_silenced",
                run_uuid=row.event.run_uuid,
                event_id=row.event.id,
                delivery_id=row.id,
                silence_id=silence.id,
            )
            self._observe(worker, "silenced", None)
        if len(kept) == len(send.rows):
            return send
        return dataclasses.replace(send, rows=tuple(kept)) if kept else None

    # ---- one send: begin, deliver, settle -------------------------------------------------

    def _begin(self, worker: _Worker, sends: asyncio.TaskGroup, send: Send) -> None:
        # Take the pacing slot now, not when the task first runs: the launch loop goes on to
        # the next send before this task starts and must already count it.
        slot = worker.pacer.start()
        marker = send.rows[0].id
        worker.in_flight[marker] = send
        task = sends.create_task(self._deliver(worker, send, slot))

        def finished(_: asyncio.Task[None]) -> None:
            worker.in_flight.pop(marker, None)
            worker.wake.set()

        task.add_done_callback(finished)

    async def _deliver(self, worker: _Worker, send: Send, slot: Slot) -> None:
        """One bounded attempt at one send, then :meth:`_settle` its rows together."""
        loop = asyncio.get_running_loop()
        event: Event | None = None
        failure: NotifyError | None = None
        try:
            event = await self._message(worker, send)
            if self._gate is not None:
                await self._gate()  # outside the attempt's time limit: parking is no failure
            await attempt(worker.notifier, event, time_limit=worker.policy.timeout)
        except (Retryable, Permanent) as exc:
            failure = exc
        finally:  # a cancelled attempt too: the destination may have seen the request
            worker.pacer.finish(slot, loop.time())
        if isinstance(failure, Retryable) and failure.retry_after:
            # The destination speaks for all of its traffic: hold every send back.
            worker.pacer.pause(loop.time() + honoured(failure.retry_after))
        await self._settle(worker, send, failure, self._message_log(worker, send, event))

    async def _message(self, worker: _Worker, send: Send) -> Event:
        """The event a send carries: its row's own, or a digest of its rows."""
        if len(send.rows) == 1:
            return send.rows[0].event
        policy = worker.policy.digest or DigestPolicy()
        progress = None
        if policy.group_by == "run_group" and send.group and self._progress is not None:
            try:
                progress = await self._progress(send.group)
            except LeaseLost:
                raise  # not ours to send any more
            except Exception as exc:  # the counts are a nicety; the events must still go
                worker.logger.warning("digest_progress_failed", error=type(exc).__name__)
        try:
            return digest_event(
                [row.event for row in send.rows],
                group_by=policy.group_by,
                group=send.group,
                progress=progress,
                statuses=self._statuses,
            )
        except Exception as exc:  # a bug must not kill the worker or lose the rows
            raise Retryable(f"internal error building a digest: {type(exc).__name__}") from None

    @staticmethod
    def _message_log(worker: _Worker, send: Send, event: Event | None) -> FilteringBoundLogger:
        """The send's logger: its message (``None``: a digest that could not be built)."""
        if event is None:
            return worker.logger.bind(group=send.group, events=len(send.rows))
        if len(send.rows) == 1:
            return worker.logger.bind(
                run_uuid=event.run_uuid, event_id=event.id, delivery_id=send.rows[0].id
            )
        return worker.logger.bind(
            run_uuid=event.run_uuid, event_id=event.id, group=send.group, events=len(send.rows)
        )

    async def _settle(
        self, worker: _Worker, send: Send, failure: NotifyError | None, log: FilteringBoundLogger
    ) -> None:
        """Apply one attempt's result to every row of the send together."""
        rows = send.rows
        number = (rows[0].attempts if len(rows) == 1 else max(r.attempts for r in rows)) + 1
        now = self._clock()
        if failure is None:
            oldest = 0.0
            for row in rows:  # only now: the message carrying every row was sent
                await self._store.mark_delivered(row.id)
                worker.pending.pop(row.id, None)
                latency = (now - row.created_at).total_seconds()
                oldest = max(oldest, latency)
                self._observe(worker, "delivered", latency)
            log.info("notify_delivered", attempt=number, latency_seconds=round(oldest, 3))
        elif isinstance(failure, Retryable):
            await self._retry(worker, send, failure, number=number, now=now, log=log)
        else:
            log.warning("notify_failed", attempt=number, error=failure.reason, permanent=True)
            for row in send.rows:
                self._observe(worker, "failed", None)
                await self._dead_letter(worker, row, failure.reason)

    async def _retry(
        self,
        worker: _Worker,
        send: Send,
        failure: Retryable,
        *,
        number: int,
        now: datetime,
        log: FilteringBoundLogger,
    ) -> None:
        """One backoff for every row of the send; a row past ``max_age`` is dead-lettered."""
        delay = retry_delay(number, failure.retry_after, uniform=self._uniform)
        next_at = now + timedelta(seconds=delay)
        retried = 0
        for row in send.rows:
            age = (now - row.created_at).total_seconds()
            if age >= worker.policy.max_age and (  # time held in a mute window does not count
                unmuted_seconds(worker.policy.mute, row.created_at, now) >= worker.policy.max_age
            ):
                tries = row.attempts + 1
                reason = (
                    f"gave up after {tries} attempt{'s' if tries != 1 else ''} in {age:.0f} s: "
                    f"{failure.reason}"
                )
                await self._dead_letter(worker, row, reason)
                continue
            await self._store.mark_retry(
                row.id, attempts=row.attempts + 1, next_attempt_at=next_at, error=failure.reason
            )
            if row.id in worker.pending:
                worker.pending[row.id] = dataclasses.replace(
                    row,
                    attempts=row.attempts + 1,
                    next_attempt_at=next_at,
                    last_error=failure.reason,
                )
            self._observe(worker, "retry", None)
            retried += 1
        if retried:
            log.warning(
                "notify_retry",
                attempt=number,
                error=failure.reason,
                retry_in_seconds=round(delay, 3),
                retry_after=failure.retry_after,
            )

    async def _dead_letter(self, worker: _Worker, row: Delivery, reason: str) -> None:
        attempts = row.attempts + 1
        await self._store.mark_dead(row.id, error=reason, attempts=attempts)
        worker.pending.pop(row.id, None)
        log = worker.logger.bind(
            run_uuid=row.event.run_uuid, event_id=row.event.id, delivery_id=row.id
        )
        log.error("notify_dead_lettered", attempts=attempts, error=reason)
        self._observe(worker, "dead_lettered", None)

    def _observe(self, worker: _Worker, outcome: DeliveryOutcome, latency: float | None) -> None:
        if self._metrics is not None:
            self._metrics.delivery(notifier=worker.name, outcome=outcome, latency=latency)
