"""The batch poller: many runs' statuses per DescribeRuns call, recorded from the answer.

At 20 GetRunStatus calls a second, 10,000 runs are each seen every 500 s. DescribeRuns with
a ``RunUuid`` filter answers for up to 100 runs at once from its own budget, and each of its
``Run`` items carries ``Status``, ``ErrorMessage``, ``ExecutionTime`` and ``UpdateTime``: enough
to record a transition (and a run's first observation) without asking GetRunStatus. So a run
group of 1,000 samples finishing together costs 10 DescribeRuns, not 1,000 GetRunStatus.

How a cycle goes:

- Active runs are grouped by project (the filter is per project). Each project keeps its
  runs in a queue in round-robin order: the front is the run checked longest ago, runs never
  checked (newly tracked) go to the very front. A batch is the first ``size`` runs of one
  project's queue, which then move to the back. The next batch comes from the project whose
  front run is most overdue, ``interval_seconds`` after its last check; when the budget
  cannot keep up, every front is overdue and the projects take turns in proportion to their
  runs, so nobody starves.
- Each DescribeRuns passes the DescribeRuns limiter; at most ``DESCRIBE_BACKLOG`` requests wait
  for it, so a run tracked meanwhile still makes the next batch (picked up within ~2 s).
- A listed status equal to the registry's is a quiet poll. A different one is ordered
  against what the registry recorded (below): *newer* is recorded from the ``Run`` itself,
  through the same :func:`~watcher.polling.common.record_status` (Recorder, EventSink,
  compare-and-set on the previous status) as every other observation; *stale* is ignored;
  *ambiguous* gets one GetRunStatus (a follow-up: the same
  :class:`~watcher.polling.run_poll.RunPoll` the per-run scheduler uses), which records only
  a status GetRunStatus itself shows. A run's first observation (no status yet) is recorded
  from the list directly.
- A run missing from the answer gets one GetRunStatus too, which tells ``RunNotExist``
  (``run.not_found``) from a run DescribeRuns merely did not list.
- Failing statuses are recorded like any other; the recorder's failure enrichment
  (GetRunCalls, GetRunJobLog) runs on them as it does for a GetRunStatus observation.

The event's ``metadata`` for a listed observation is the RunMetadata fields a ``Run`` fills,
under their RunMetadata names (:func:`listed_metadata`): ``Status``, ``ErrorMessage``,
``SubmitTime``, ``StartTime``, ``EndTime`` (from ``ExecutionTime``), plus the Run's
``UpdateTime``, which RunMetadata lacks. Renderers read the same keys from either shape.

Ordering: a list may lag behind GetRunStatus
--------------------------------------------
A DescribeRuns answer can show a run as it was seconds ago (the simulator's
``list_lag_seconds``). A run must never move backwards or repeat a status because of an
older answer. A ``Run`` says when its status last changed (``UpdateTime``: whole seconds, the
API's clock), so a listed status ``L`` that differs from the recorded ``R`` is compared with
what is known about when ``R`` held (:class:`StatusReference`, kept per run and rebuilt from
the registry at load):

- ``R`` was recorded from a list (the stored metadata carries its ``UpdateTime`` ``u``):
  ``L`` changed in a later second (``UpdateTime(L) > u``) → *newer*, record; in an earlier
  second → *stale*: the list's view predates the change to ``R``; ignore; the same second →
  *ambiguous*: two changes within one second cannot be ordered from whole seconds; confirm.
- ``R`` was seen by GetRunStatus at our wall time ``s`` (the registry's ``status_since``
  for a GetRunStatus-recorded status, or a later follow-up that found it unchanged):
  ``UpdateTime(L) >= s + M`` → *newer*; ``UpdateTime(L) + 1 <= s - M`` → *stale* (``L``
  began before a moment ``R`` held, and the list still shows no later change); otherwise
  *ambiguous*. ``M`` (``CLOCK_MARGIN_SECONDS``, 1 s) covers the request's network time and
  a small clock difference between this host and the API; the rule assumes the host clock is
  NTP-synchronised within that margin.
- Both known: stale if either says stale, newer only if both say newer, else ambiguous.
  Neither known (a discovery baseline, or another process recorded the status) or no
  parsable ``UpdateTime`` → *ambiguous*.

Never ignored forever: a *stale* verdict that keeps coming back for ``STALE_CONFIRM_SECONDS``
(30 s; a list lag is seconds) is confirmed with one GetRunStatus anyway, so a wrong clock or
a wrong reference costs at most one request per run per 30 s, never a lost change. A
GetRunStatus answer always wins: it is current.

Switching strategies: per-run observations carry no ``UpdateTime``; what the poller needs is
already in the registry: a status recorded from a list keeps its ``UpdateTime`` in the stored
metadata, one recorded from GetRunStatus its ``status_since`` (the observation time, from
which ``M`` is subtracted). :meth:`~watcher.store.Store.status_references` reads them at
load, so per-run → batch, batch → per-run → batch and restarts order answers the same way.

Failures: throttling puts the batch back at the front (the client's limiter slows down);
credential failures pause all polling (:class:`~watcher.polling.common.AuthPause`); transient
failures leave the batch at the back (it is retried next cycle) and back the project off
only while every request fails. A refused filter (``InvalidParameter*``) halves that
project's batch size and retries. A one-value filter refused for a project while
DescribeRuns works for others (a malformed ProjectId, say) turns that project *direct*: its
runs get a GetRunStatus each per cycle. When DescribeRuns is refused for permissions, or
refuses even a one-value filter before it ever worked, the poller logs one
``batch_polling_unavailable`` line, sets :attr:`BatchPoller.refused` and returns, and the
caller polls per run instead (:mod:`watcher.polling.strategy`).

A follow-up fails as a per-run poll does (the same classifier,
:func:`~watcher.polling.run_poll.action_for`): throttled or paused, it stays first in line;
failed, it backs off; crashed on a bug of ours, its run waits ``crash_retry_seconds`` (so
does a listed record that crashed).

Invariants: the store is the truth (statuses are read from it at load and refresh, written
only by the recorder); one record or follow-up per run at a time; no status is recorded
that neither a newer ``Run`` nor GetRunStatus showed; every run in the registry is in exactly
one project queue (stale entries are skipped by token).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Unpack

from watcher.omics.errors import OmicsError, is_permission_refusal
from watcher.omics.models import RunsFilter, parse_time
from watcher.polling.common import (
    DESCRIBE_BACKLOG,
    DESCRIBE_LIMIT,
    STATUS_BACKLOG,
    RunLister,
    RunSummaryLike,
    StatusSource,
    backoff_delay,
    max_in_flight,
    record_status,
)
from watcher.polling.loop import Collaborators, PollingLoop
from watcher.polling.run_poll import (
    Action,
    PolledRun,
    RunPollOptions,
    action_for,
    pause_reason,
)
from watcher.store import ActiveRun, StateError
from watcher.store.pg.lease import LeaseLost

MAX_BATCH = DESCRIBE_LIMIT  # one DescribeRuns page answers the whole filter


CLOCK_MARGIN_SECONDS = 1.0  # network time of a request plus host/API clock difference
STALE_CONFIRM_SECONDS = 30.0  # a stale verdict this old is confirmed with GetRunStatus


class ExecutionTimeLike(Protocol):
    """``Run.ExecutionTime``."""

    @property
    def SubmitTime(self) -> str | None: ...

    @property
    def StartTime(self) -> str | None: ...

    @property
    def EndTime(self) -> str | None: ...


class ListedRun(RunSummaryLike, Protocol):
    """The parts of a DescribeRuns ``Run`` the poller records from."""

    @property
    def ErrorMessage(self) -> str | None: ...

    @property
    def ExecutionTime(self) -> ExecutionTimeLike | None: ...

    @property
    def UpdateTime(self) -> str | None: ...


class BatchSource(StatusSource, RunLister[ListedRun], Protocol):
    """What the poller calls: GetRunStatus and one DescribeRuns page (the Omics client)."""


def listed_metadata(run: ListedRun) -> dict[str, str]:
    """A batch-observed event's ``metadata``: the RunMetadata fields a ``Run`` fills.

    Same names and conventions as GetRunStatus' RunMetadata (``""`` when unset), plus the
    Run's ``UpdateTime`` (which RunMetadata lacks; the stuck checker and the ordering rule
    read it back from the registry).
    """
    times = run.ExecutionTime
    return {
        "Status": run.Status,
        "ErrorMessage": run.ErrorMessage or "",
        "SubmitTime": (times.SubmitTime if times is not None else None) or "",
        "StartTime": (times.StartTime if times is not None else None) or "",
        "EndTime": (times.EndTime if times is not None else None) or "",
        "UpdateTime": run.UpdateTime or "",
    }


@dataclass(frozen=True, slots=True)
class ListedStatus:
    """A listed observation in the shape :func:`record_status` takes (``Status``, ``raw``)."""

    Status: str
    raw: dict[str, str]


def update_seconds(run: ListedRun) -> float | None:
    """The Run's ``UpdateTime`` as unix seconds; ``None`` when missing or unparsable."""
    moment = parse_time(run.UpdateTime)
    return None if moment is None else moment.timestamp()


@dataclass(slots=True)
class StatusReference:
    """When the registry's status of one run is known to have held (module docstring)."""

    update_time: float | None = None  # its UpdateTime (API clock, whole seconds), from a Run
    seen_at: float | None = None  # our wall time of a GetRunStatus answer showing it
    stale_since: float | None = None  # monotonic: a stale verdict first ignored then


class Order(enum.Enum):
    """A listed status that differs from the recorded one is..."""

    NEWER = "newer"  # recorded from the Run
    STALE = "stale"  # an older view than what is recorded: ignored
    AMBIGUOUS = "ambiguous"  # confirmed with one GetRunStatus


def order(
    listed: float | None, ref: StatusReference, *, margin: float = CLOCK_MARGIN_SECONDS
) -> Order:
    """Order a listed status (changed at second ``listed``) against ``ref``. Pure."""
    if listed is None:
        return Order.AMBIGUOUS
    verdicts = []
    if ref.update_time is not None:
        if listed > ref.update_time:
            verdicts.append(Order.NEWER)
        elif listed < ref.update_time:
            verdicts.append(Order.STALE)
        else:
            verdicts.append(Order.AMBIGUOUS)
    if ref.seen_at is not None:
        if listed >= ref.seen_at + margin:
            verdicts.append(Order.NEWER)
        elif listed + 1 <= ref.seen_at - margin:
            verdicts.append(Order.STALE)
        else:
            verdicts.append(Order.AMBIGUOUS)
    if Order.STALE in verdicts:
        return Order.STALE
    if verdicts and all(v is Order.NEWER for v in verdicts):
        return Order.NEWER
    return Order.AMBIGUOUS


@dataclass(frozen=True, slots=True)
class BatchOptions:
    interval_seconds: float
    terminal: frozenset[str]
    batch_size: int = MAX_BATCH
    describe_rate_per_second: float = 20.0
    status_rate_per_second: float = 20.0
    request_timeout_seconds: float = 10.0
    default_project_id: str = ""
    drain_seconds: float = 5.0  # at stop, how long in-flight requests may still take
    crash_retry_seconds: float = 60.0  # a follow-up that died of a bug is retried after this

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be within 1..{MAX_BATCH}")


@dataclass(slots=True)
class _Project:
    project_id: str
    size: int  # batch size; halved (and remembered) when the API refuses long filters
    queue: deque[tuple[int, str]] = field(default_factory=deque)  # (token, run_uuid)
    errors: int = 0  # consecutive failed DescribeRuns calls
    retry_at: float = 0.0
    direct: bool = False  # DescribeRuns refuses this project: GetRunStatus for each run


class BatchPoller(PollingLoop):
    """Polls tracked runs in DescribeRuns batches; see the module docstring."""

    def __init__(
        self,
        *,
        source: BatchSource,
        options: BatchOptions,
        describe_backlog: Callable[[], int] = lambda: 0,
        status_backlog: Callable[[], int] = lambda: 0,
        **parts: Unpack[Collaborators],  # store, recorder, wall_clock; metrics, rng
    ) -> None:
        self._store = parts["store"]
        self._recorder = parts["recorder"]
        super().__init__(
            source=source,
            logger="watcher.batch",
            run_poll=RunPollOptions(
                interval_seconds=options.interval_seconds,
                crash_retry_seconds=options.crash_retry_seconds,
                # Counted apart from the DescribeRuns checks, which count every run in a batch.
                metric_prefix="follow_up_",
            ),
            drain_seconds=options.drain_seconds,
            **parts,
        )
        self._source = source
        self._opt = options
        self._describe_backlog = describe_backlog
        self._status_backlog = status_backlog
        self._projects: dict[str, _Project] = {}
        self._tokens = itertools.count(1)
        self._describing: set[asyncio.Task[None]] = set()
        self._following: set[asyncio.Task[None]] = set()
        self._recording: set[asyncio.Task[None]] = set()  # statuses recorded from a Run
        self._refs: dict[str, StatusReference] = {}  # what each recorded status is ordered by
        self._unstarted_describes = 0  # tasks created that have not reached the limiter yet
        self._unstarted_follows = 0
        self._follow_queue: deque[str] = deque()
        self._follow_pending: set[str] = set()  # follow-up queued or in flight, or recording
        self._max_describes = max_in_flight(
            options.describe_rate_per_second, options.request_timeout_seconds
        )
        self._max_follows = max_in_flight(
            options.status_rate_per_second, options.request_timeout_seconds
        )
        self.refused: str | None = None  # why DescribeRuns cannot be used, once it is known
        self._described = False  # some DescribeRuns call succeeded: it works, in principle

    # -- registry -------------------------------------------------------------------------

    def _project_of(self, active: ActiveRun) -> str:
        return active.project_id or self._opt.default_project_id

    def _enqueue(self, run_uuid: str, run: PolledRun, *, front: bool) -> None:
        project = self._projects.get(run.project)
        if project is None:
            project = self._projects[run.project] = _Project(run.project, self._opt.batch_size)
        run.token = next(self._tokens)
        if front:
            project.queue.appendleft((run.token, run_uuid))
        else:
            project.queue.append((run.token, run_uuid))

    async def load(self) -> int:
        """Read every active run from the registry, replacing what was known; returns how many."""
        self._runs.clear()
        for project in self._projects.values():
            project.queue.clear()
        self._follow_queue.clear()
        self._follow_pending.clear()
        self._unstarted_describes = self._unstarted_follows = 0
        self._loaded = True
        active_runs = await self._feed.snapshot()
        self._refs = await self._references(None)
        now, wall_now = self._now(), self._wall().timestamp()

        def last_polled(active: ActiveRun) -> float:
            return -math.inf if active.last_polled_at is None else active.last_polled_at

        # Queue order is round-robin order: never polled first, then longest ago.
        for active in sorted(active_runs, key=last_polled):
            checked = -math.inf
            if active.last_polled_at is not None:
                checked = now - (wall_now - active.last_polled_at)
            run = PolledRun(self._project_of(active), active.status, checked)
            self._runs[active.run_uuid] = run
            self._enqueue(active.run_uuid, run, front=False)
        batches = sum(math.ceil(len(p.queue) / p.size) for p in self._projects.values())
        self._first_wave = min(batches, max(1, math.ceil(self._opt.describe_rate_per_second)))
        if self._first_wave == 0:
            self.first_cycle_done.set()
        return len(self._runs)

    async def _refresh(self) -> None:
        """Pick up runs tracked or untracked by other processes; flush poll times."""
        added, removed = await self._feed.changes()
        for run_uuid in removed:
            self._runs.pop(run_uuid, None)
            self._refs.pop(run_uuid, None)
        if added:
            self._refs.update(await self._references([active.run_uuid for active in added]))
        for active in added:
            project = self._project_of(active)
            known = self._runs.get(active.run_uuid)
            if known is None:
                run = PolledRun(project, active.status)  # first in its project's queue
                self._runs[active.run_uuid] = run
                self._enqueue(active.run_uuid, run, front=True)
            elif known.project != project:  # re-tracked with a corrected project
                known.project = project
                self._enqueue(active.run_uuid, known, front=True)
        if added:
            self._naps.wake()

    async def _references(self, run_uuids: list[str] | None) -> dict[str, StatusReference]:
        """What the registry says about when each run's status held (all active: ``None``)."""
        known = await self._store.status_references(run_uuids)
        return {
            run_uuid: StatusReference(update_time=update_time, seen_at=seen_at)
            for run_uuid, (update_time, seen_at) in known.items()
        }

    def batch_size(self, project_id: str) -> int:
        """The batch size in force for ``project_id`` (after any adaptation)."""
        project = self._projects.get(project_id or self._opt.default_project_id)
        return project.size if project is not None else self._opt.batch_size

    # -- main loop ------------------------------------------------------------------------

    async def _work(self, now: float, stop: asyncio.Event) -> float | None:
        return min(self._launch_follow_ups(), self._launch_batches(now))

    def _tasks(self) -> Iterable[asyncio.Task[None]]:
        return self._describing | self._following | self._recording

    def _finished(self) -> bool:
        return self.refused is not None  # the strategy polls per run from here on

    def _head(self, project: _Project) -> PolledRun | None:
        queue = project.queue
        while queue:
            token, run_uuid = queue[0]
            run = self._runs.get(run_uuid)
            if run is not None and run.token == token:
                return run
            queue.popleft()  # stale: untracked, finished, moved or re-queued
        return None

    def _launch_batches(self, now: float) -> float:
        """Start every batch that is due and fits the backlog; seconds until the next try."""
        while True:
            best: tuple[float, _Project] | None = None
            for project in self._projects.values():
                head = self._head(project)
                if head is None:
                    continue
                due = max(head.checked + self._opt.interval_seconds, project.retry_at)
                if best is None or due < best[0]:
                    best = (due, project)
            if best is None:
                return math.inf
            due, project = best
            if due > now:
                return due - now
            waiting = self._unstarted_describes + self._describe_backlog()
            if waiting >= DESCRIBE_BACKLOG or len(self._describing) >= self._max_describes:
                # Requests already queue for the limiter: keep the runs in the queue, where
                # a newly tracked run can still get into the next batch.
                return 0.5 / self._opt.describe_rate_per_second
            self._launch_batch(project, now)

    def _launch_batch(self, project: _Project, now: float) -> None:
        batch: list[tuple[str, float]] = []  # (run_uuid, when it was checked before)
        queue = project.queue
        for _ in range(len(queue)):  # each entry at most once: taken ones go to the back
            if len(batch) >= project.size:
                break
            token, run_uuid = queue.popleft()
            run = self._runs.get(run_uuid)
            if run is None or run.token != token:
                continue
            batch.append((run_uuid, run.checked))
            run.checked = now
            queue.append((token, run_uuid))
        if project.direct:
            for run_uuid, _ in batch:
                self._follow_up(run_uuid, self._runs[run_uuid])
            return
        self._unstarted_describes += 1
        task = asyncio.create_task(self._describe(project, batch), name="describe-runs")
        self._describing.add(task)
        task.add_done_callback(self._describe_done)

    def _describe_done(self, task: asyncio.Task[None]) -> None:
        self._describing.discard(task)
        self._naps.wake()
        self._task_done(task, event="batch_poll_crashed")

    def _launch_follow_ups(self) -> float:
        """Start queued GetRunStatus follow-ups that fit the backlog; seconds until next try."""
        while self._follow_queue:
            waiting = self._unstarted_follows + self._status_backlog()
            if waiting >= STATUS_BACKLOG or len(self._following) >= self._max_follows:
                return 0.5 / self._opt.status_rate_per_second
            run_uuid = self._follow_queue.popleft()
            run = self._runs.get(run_uuid)
            if run is None:
                self._follow_pending.discard(run_uuid)
                continue
            self._unstarted_follows += 1
            task = asyncio.create_task(self._follow(run_uuid, run), name=f"follow:{run_uuid}")
            self._following.add(task)
            task.add_done_callback(self._follow_done)
        return math.inf

    def _follow_done(self, task: asyncio.Task[None]) -> None:
        self._following.discard(task)
        self._task_done(task, event="poll_crashed")

    # -- one batch ------------------------------------------------------------------------

    async def _describe(self, project: _Project, batch: list[tuple[str, float]]) -> None:
        self._unstarted_describes -= 1  # from here the request queues in the limiter
        uuids = [run_uuid for run_uuid, _ in batch]
        outcome = ""
        try:
            _, summaries = await self._source.describe_runs(
                project_id=project.project_id,
                filters=[RunsFilter("RunUuid", uuids)],
                limit=len(uuids),
            )
        except OmicsError as exc:
            outcome = self._describe_failed(project, batch, exc).value
        else:
            self._pause.resume()
            self._described = True
            project.errors = 0
            project.retry_at = 0.0
            self._compare(uuids, summaries)
        finally:
            if outcome:
                self._metrics.polls.labels(outcome=outcome).inc(len(uuids))
            self._answered()

    def _describe_failed(
        self, project: _Project, batch: list[tuple[str, float]], exc: OmicsError
    ) -> Action:
        action = action_for(exc)
        if action is Action.RETRY_NOW:
            self._metrics.throttled.inc()
            self._put_back(project, batch)
        elif action is Action.PAUSE:
            if is_permission_refusal(exc.code):
                self._refuse(exc)
            else:
                self._pause.pause(pause_reason(exc))
                self._put_back(project, batch)
        elif action is Action.BAD_REQUEST:
            self._shrink(project, batch, exc)
        else:  # BACK_OFF (DescribeRuns names no single run: a NOT_FOUND is no answer either)
            action = Action.BACK_OFF
            self._project_failed(project, batch, exc)
        return action

    def _compare(self, uuids: list[str], summaries: Sequence[ListedRun]) -> None:
        requested = set(uuids)
        answered: set[str] = set()
        wall = self._wall()
        counts = dict.fromkeys(("ok", "changed", "stale", "confirm", "pending", "missing"), 0)
        for summary in summaries:
            run_uuid = summary.RunUuid
            if run_uuid not in requested or run_uuid in answered:
                continue
            answered.add(run_uuid)
            run = self._runs.get(run_uuid)
            if run is None:
                continue  # untracked or finished while the request was out
            outcome = self._listed(run_uuid, run, summary)
            counts[outcome] += 1
            if outcome == "ok":
                self._feed.polled(run_uuid, wall)
        for run_uuid in requested - answered:
            run = self._runs.get(run_uuid)
            if run is not None:
                # Not listed: GetRunStatus tells a run that is gone (RunNotExist) from one
                # DescribeRuns merely did not show.
                counts["missing"] += 1
                self._follow_up(run_uuid, run)
        for outcome, count in counts.items():
            if count:
                self._metrics.polls.labels(outcome=outcome).inc(count)

    def _listed(self, run_uuid: str, run: PolledRun, summary: ListedRun) -> str:
        """Act on one listed run; the ``polls_total`` outcome."""
        ref = self._refs.get(run_uuid)
        if summary.Status == run.status:
            if ref is not None:
                ref.stale_since = None
            return "ok"
        if run_uuid in self._follow_pending or run.retry_at > self._now():
            return "pending"  # a follow-up or a record is under way (or a crash cools down)
        verdict = Order.NEWER if run.status is None else self._order(run_uuid, ref, summary)
        if verdict is Order.NEWER:
            self._record_listed(run_uuid, run, summary)
            return "changed"
        if verdict is Order.STALE:
            return "stale"
        self._follow_up(run_uuid, run)
        return "confirm"

    def _order(self, run_uuid: str, ref: StatusReference | None, summary: ListedRun) -> Order:
        if ref is None:
            ref = self._refs[run_uuid] = StatusReference()
        verdict = order(update_seconds(summary), ref)
        if verdict is not Order.STALE:
            return verdict
        now = self._now()
        if ref.stale_since is None:
            ref.stale_since = now
        elif now - ref.stale_since >= STALE_CONFIRM_SECONDS:
            # The list keeps contradicting the registry: never ignore it for good.
            ref.stale_since = None
            return Order.AMBIGUOUS
        return Order.STALE

    def _put_back(self, project: _Project, batch: list[tuple[str, float]]) -> None:
        """The batch was not answered: its runs return to the front, as overdue as before."""
        for run_uuid, checked in reversed(batch):
            run = self._runs.get(run_uuid)
            if run is not None and run.project == project.project_id:
                run.checked = checked
                self._enqueue(run_uuid, run, front=True)

    def _shrink(self, project: _Project, batch: list[tuple[str, float]], exc: OmicsError) -> None:
        if len(batch) <= 1:
            if not self._described:
                self._refuse(exc)  # DescribeRuns has never worked: it will not for us
                return
            # It works for other projects, so something about this one is refused (an
            # unknown or malformed ProjectId, say): check its runs one by one, like per-run.
            if not project.direct:
                project.direct = True
                self._log.warning(
                    "batch_project_direct",
                    project_id=project.project_id,
                    code=exc.code,
                    error=exc.message,
                    hint="DescribeRuns refuses this project; its runs are polled one by one",
                )
            self._put_back(project, batch)
            return
        size = max(1, len(batch) // 2)
        # Several long batches may be refused at once: each one halves from its own length,
        # so they agree on one size instead of halving it once per answer.
        if size < project.size:
            project.size = size
            self._log.warning(
                "batch_size_reduced",
                project_id=project.project_id,
                batch_size=size,
                code=exc.code,
                error=exc.message,
            )
        self._put_back(project, batch)

    def _project_failed(
        self, project: _Project, batch: list[tuple[str, float]], exc: OmicsError
    ) -> None:
        # The batch's runs stay at the back and are retried next cycle, so one failing batch
        # (or one poisonous run in it) never holds the others up. The project waits only
        # while every request fails: the API is down or the network is.
        project.errors += 1
        delay = backoff_delay(project.errors, base=1.0, rng=self._rng)
        project.retry_at = self._now() + delay
        self._outages.failed(
            exc,
            runs=[run_uuid for run_uuid, _ in batch],
            event="batch_poll_failed",
            project_id=project.project_id,
            errors=project.errors,
            retry_in=round(delay, 1),
        )

    def _refuse(self, exc: OmicsError) -> None:
        if self.refused is not None:
            return
        self.refused = f"{exc.code}: {exc.message}" if exc.message else exc.code
        self._log.error(
            "batch_polling_unavailable",
            code=exc.code,
            error=exc.message,
            fallback="per-run",
            hint="DescribeRuns was refused, so each run is polled with GetRunStatus instead; "
            "allow DescribeRuns for these credentials and restart to poll in batches",
        )
        self._naps.wake()

    # -- one follow-up --------------------------------------------------------------------

    def _follow_up(self, run_uuid: str, run: PolledRun) -> None:
        if run_uuid in self._follow_pending or run.retry_at > self._now():
            return
        self._follow_pending.add(run_uuid)
        if run.status is None:
            # Never observed (just tracked): ahead of the changes queued before it, as the
            # scheduler puts never-polled runs first, so a new run is reported within seconds
            # even while a burst of changes waits for the GetRunStatus budget.
            self._follow_queue.appendleft(run_uuid)
        else:
            self._follow_queue.append(run_uuid)
        self._naps.wake()

    async def _follow(self, run_uuid: str, run: PolledRun) -> None:
        self._unstarted_follows -= 1
        again = False
        try:
            polled = await self._one.poll(run_uuid, run)
            if run_uuid in self._runs:  # not gone (not found, terminal, untracked)
                if polled.action is Action.ANSWERED:
                    # GetRunStatus showed the registry's status now (or another process's,
                    # when superseded: then nothing is known about when it held).
                    ref = StatusReference()
                    if not polled.superseded:
                        ref.seen_at = self._wall().timestamp()
                        known = self._refs.get(run_uuid)
                        if known is not None and not polled.changed:
                            ref.update_time = known.update_time  # still a bound: see order()
                    self._refs[run_uuid] = ref
                if polled.again_now:
                    again = True
                elif polled.retry_in:
                    run.retry_at = self._now() + polled.retry_in  # failed or crashed
                else:
                    run.retry_at = 0.0
        finally:
            if again:
                self._follow_queue.appendleft(run_uuid)  # still pending: first in line
                self._naps.wake()
            else:
                self._follow_pending.discard(run_uuid)

    # -- one status recorded from a Run ---------------------------------------------------

    def _record_listed(self, run_uuid: str, run: PolledRun, summary: ListedRun) -> None:
        self._follow_pending.add(run_uuid)  # no follow-up nor second record meanwhile
        task = asyncio.create_task(self._record(run_uuid, run, summary), name=f"record:{run_uuid}")
        self._recording.add(task)
        task.add_done_callback(self._record_done)

    def _record_done(self, task: asyncio.Task[None]) -> None:
        self._recording.discard(task)
        self._task_done(task, event="record_crashed")

    async def _record(self, run_uuid: str, run: PolledRun, summary: ListedRun) -> None:
        """Record the listed status (the recorder may enrich a failure first)."""
        try:
            recorded = await record_status(
                self._recorder,
                run_uuid=run_uuid,
                project_id=run.project,
                previous=run.status,
                metadata=ListedStatus(summary.Status, listed_metadata(summary)),
            )
            if not recorded.active:
                self._runs.pop(run_uuid, None)
                self._refs.pop(run_uuid, None)
            elif recorded.superseded:  # another process recorded first: believe the registry
                run.status = recorded.status
                self._refs[run_uuid] = StatusReference()
            else:
                run.status = recorded.status
                self._refs[run_uuid] = StatusReference(update_time=update_seconds(summary))
        except (StateError, LeaseLost):
            raise
        except Exception:
            run.retry_at = self._now() + self._opt.crash_retry_seconds  # logged when done
            raise
        finally:
            self._follow_pending.discard(run_uuid)
