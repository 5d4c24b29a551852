"""One poll of one run: GetRunStatus, what its answer means, and what gets recorded.

Both pollers ask GetRunStatus about single runs: the per-run
:class:`~watcher.polling.per_run.Scheduler` about every run in turn, the
:class:`~watcher.polling.batch.BatchPoller` about the runs DescribeRuns showed changed or
missing (its follow-ups). An answer must mean the same thing to both, so it is read here once:

- :func:`action_for`: the classifier, a pure table from how an Omics call ended (success or
  one of :mod:`watcher.omics.errors`) to what a poller does about it. DescribeRuns answers
  go through the same table in the batch poller.
- :class:`PolledRun`: a poller's state of one run (both pollers keep one per tracked run).
- :class:`RunPoll`: ask, classify and act: record a changed status, count a quiet poll, back
  the run off, pause all polling, drop a run that does not exist, survive a bug. It answers
  with a :class:`Polled` saying when the run wants asking again; *where* that goes (the
  scheduler's heap, the batch poller's follow-up queue) each poller decides for itself.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from watcher.omics.errors import (
    AuthError,
    BadRequest,
    ClockSkew,
    OmicsError,
    RunNotFound,
    Throttled,
)
from watcher.polling.common import (
    BAD_REQUEST_BACKOFF_SECONDS,
    AuthPause,
    Metadata,
    RegistryFeed,
    StatusSource,
    backoff_delay,
    record_status,
)
from watcher.polling.outages import Outages
from watcher.recorder import Recorder
from watcher.service.metrics import Metrics
from watcher.store import StateError
from watcher.store.pg.lease import LeaseLost


class Action(enum.Enum):
    """What a poller does after an Omics call; the value is the ``polls_total`` outcome."""

    ANSWERED = "ok"  # compare the status with the registry's; record it if it moved
    NOT_FOUND = "not_found"  # RunNotExist: record run.not_found, stop polling the run
    RETRY_NOW = "throttled"  # the limiter slows down; the run keeps its place in line
    PAUSE = "auth"  # credentials or permissions: pause all polling, retry at its end
    BACK_OFF = "transient"  # try the run again later, backing off per consecutive failure
    BAD_REQUEST = "bad_request"  # our request is malformed: log it, retry rarely
    CRASHED = "crashed"  # not an API outcome: a bug of ours; the run is retried slowly


def action_for(error: OmicsError | None) -> Action:
    """How an Omics call ended (``None``: it succeeded) → what to do. Pure.

    Unknown and transient errors back off: an error we cannot place must never end the
    watch of a run nor stop polling.
    """
    if error is None:
        return Action.ANSWERED
    if isinstance(error, RunNotFound):
        return Action.NOT_FOUND
    if isinstance(error, Throttled):
        return Action.RETRY_NOW
    if isinstance(error, AuthError):  # ClockSkew and TokenExpired too
        return Action.PAUSE
    if isinstance(error, BadRequest):
        return Action.BAD_REQUEST
    return Action.BACK_OFF


def pause_reason(error: OmicsError) -> str:
    """The reason :class:`~watcher.polling.common.AuthPause` logs for ``error``."""
    return f"clock skew: {error.code}" if isinstance(error, ClockSkew) else error.code


@dataclass(slots=True)
class PolledRun:
    """A poller's state of one run: small, because there may be 100,000 of them."""

    project: str  # the ProjectId requests name (the configured default filled in)
    status: str | None  # the status the registry holds, as far as this poller knows
    checked: float = -math.inf  # batch: monotonic time of the last DescribeRuns including it
    token: int = 0  # the heap or queue entry current for this run; others are stale
    errors: int = 0  # consecutive failed GetRunStatus calls
    retry_at: float = 0.0  # batch: no follow-up before this monotonic time


@dataclass(frozen=True, slots=True)
class Polled:
    """How one poll went and when the run wants asking again (if it is still tracked).

    ``retry_in``: seconds before the next request after a failure or a crash (0: as soon
    as there is room); ``superseded``: another process recorded first, so look again soon.
    """

    action: Action
    retry_in: float = 0.0
    changed: bool = False
    superseded: bool = False

    @property
    def on_schedule(self) -> bool:
        """Answered and recorded (or quiet): the run is next due at its regular time."""
        return self.action is Action.ANSWERED and not self.superseded

    @property
    def again_now(self) -> bool:
        """Not answered, through nobody's fault of this run: ask again first in line."""
        return self.action in (Action.RETRY_NOW, Action.PAUSE)

    @property
    def label(self) -> str:
        return "changed" if self.changed else self.action.value


# The quiet poll's answer (most polls): immutable, so one for all instead of one per poll.
QUIET = Polled(Action.ANSWERED)
_CRASHED = Action.CRASHED.value
_OK = Action.ANSWERED.value  # QUIET.label, without the enum's descriptor per poll


@dataclass(frozen=True, slots=True)
class RunPollOptions:
    interval_seconds: float  # the backoff base (at least a second)
    crash_retry_seconds: float  # a poll that died of a bug is retried after this long
    metric_prefix: str = ""  # "follow_up_": the batch poller counts its follow-ups apart


@runtime_checkable
class QuickStatusSource(Protocol):
    """A source that can answer GetRunStatus without building the whole API model.

    :meth:`~watcher.omics.client.OmicsClient.run_status`: same call, same errors, an answer
    with only ``Status`` and ``raw``, which is all a poll reads. Most polls are quiet, so
    validating every field of every answer was a tenth of the daemon's CPU.
    """

    async def run_status(self, run_uuid: str, project_id: str = "") -> Metadata: ...


class ErrorStore(Protocol):
    """Where a failed poll's backoff is written (the :class:`~watcher.store.api.AsyncStore`)."""

    async def record_error(
        self, run_uuid: str, *, consecutive_errors: int, next_poll_after: datetime | None
    ) -> None: ...


class RunPoll:
    """GetRunStatus for one run → :func:`action_for` → act; see the module docstring.

    ``runs`` is the poller's own table: a run that is gone (not found, terminal, no longer
    tracked) is removed from it here, and only after the registry says so.
    """

    def __init__(
        self,
        *,
        runs: dict[str, PolledRun],
        source: StatusSource,
        recorder: Recorder,
        store: ErrorStore,
        feed: RegistryFeed,
        pause: AuthPause,
        outages: Outages,
        metrics: Metrics,
        log: Any,
        wall_clock: Callable[[], datetime],
        rng: random.Random,
        options: RunPollOptions,
    ) -> None:
        self._runs = runs
        self._status = (
            source.run_status if isinstance(source, QuickStatusSource) else source.get_run_status
        )
        self._recorder = recorder
        self._store = store
        self._feed = feed
        self._pause = pause
        self._outages = outages
        self._metrics = metrics
        self._log = log
        self._wall = wall_clock
        self._rng = rng
        self._opt = options
        # polls_total's child per outcome: labels() validates and locks on every call.
        self._counted: dict[str, Callable[[], None]] = {}

    async def poll(self, run_uuid: str, run: PolledRun) -> Polled:
        """One poll; raises only :class:`~watcher.store.StateError` and
        :class:`~watcher.store.pg.lease.LeaseLost` (the poller stops)."""
        label = _CRASHED
        try:
            try:
                metadata = await self._status(run_uuid, run.project)
            except OmicsError as exc:
                polled = await self._failed(run_uuid, run, exc)
                label = polled.label
                return polled
            self._pause.resume()
            run.errors = 0
            if metadata.Status == run.status:
                # Quiet, as most polls are: no coroutine beyond this one. (For a batch
                # follow-up: DescribeRuns saw another status than GetRunStatus does now; it
                # changed back, or the listing lags. Nothing happened.)
                self._feed.polled(run_uuid, self._wall())
                label = _OK
                return QUIET
            polled = await self._changed(run_uuid, run, metadata)
            label = polled.label
            return polled
        except (StateError, LeaseLost):
            raise
        except Exception as exc:
            # A bug, not an API error: keep watching the run, slowly, rather than forget it
            # until the next restart (or retry it in a tight loop).
            self._log.error("poll_crashed", run_uuid=run_uuid, error=repr(exc))
            return Polled(Action.CRASHED, retry_in=self._opt.crash_retry_seconds)
        finally:
            self._count(label)

    def _count(self, label: str) -> None:
        inc = self._counted.get(label)
        if inc is None:
            outcome = self._opt.metric_prefix + label
            inc = self._counted[label] = self._metrics.polls.labels(outcome=outcome).inc
        inc()

    async def _failed(self, run_uuid: str, run: PolledRun, exc: OmicsError) -> Polled:
        action = action_for(exc)
        if action is Action.NOT_FOUND:
            await self._recorder.not_found(run_uuid, run.project, run.status)
            self._runs.pop(run_uuid, None)
        elif action is Action.RETRY_NOW:
            self._metrics.throttled.inc()
        elif action is Action.PAUSE:
            self._pause.pause(pause_reason(exc))
        elif action is Action.BAD_REQUEST:
            self._log.error("poll_bad_request", run_uuid=run_uuid, code=exc.code, error=exc.message)
            return Polled(action, retry_in=BAD_REQUEST_BACKOFF_SECONDS)
        else:
            return Polled(action, retry_in=await self._back_off(run_uuid, run, exc))
        return Polled(action)

    async def _back_off(self, run_uuid: str, run: PolledRun, exc: OmicsError) -> float:
        run.errors += 1
        delay = backoff_delay(run.errors, base=max(self._opt.interval_seconds, 1.0), rng=self._rng)
        # One line per outage and a summary while it lasts, not one per run (Outages).
        self._outages.failed(
            exc,
            runs=(run_uuid,),
            event="poll_failed",
            run_uuid=run_uuid,
            errors=run.errors,
            retry_in=round(delay, 1),
        )
        await self._store.record_error(
            run_uuid,
            consecutive_errors=run.errors,
            next_poll_after=self._wall() + timedelta(seconds=delay),
        )
        return delay

    async def _changed(self, run_uuid: str, run: PolledRun, metadata: Metadata) -> Polled:
        recorded = await record_status(
            self._recorder,
            run_uuid=run_uuid,
            project_id=run.project,
            previous=run.status,
            metadata=metadata,
        )
        if not recorded.active:
            self._runs.pop(run_uuid, None)
        else:
            # Superseded: another process recorded first; the registry's status is believed.
            run.status = recorded.status
        return Polled(Action.ANSWERED, changed=True, superseded=recorded.superseded)
