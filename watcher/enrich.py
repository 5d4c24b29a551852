"""Failure enrichment: why a run failed, told with GetRunCalls and GetRunJobLog.

On a transition into a failing status (as the injected :class:`~watcher.statuses.Statuses`
says: terminal and a failure, so never ``SUCCEEDED`` or ``PREEMPTED``) the
:class:`~watcher.recorder.Recorder` asks
:meth:`FailureEnricher.failure` for the event's ``data.failure``: ``{"task", "message",
"stderr_tail"}``, the first failing call, its error and the end of its stderr. The walk
starts at Path ``/`` and descends into failing sub-workflows and scatters the way Tencent
documents it (tccli example "查询子作业详情"): ``Path = "/" + RunId`` of a call whose
``RunType`` is ``Workflow`` or ``Scatter`` (its children carry that id as ``ParentId``), never
the CallName; the GetRunJobLog of a task below the root gets the ``Path`` it was listed under.
The failing task that ended first is the cause, later failures are usually consequences.
A level that answers ``InvalidParameter*`` (a server that does not know that Path) is skipped:
the walk keeps what it found (the container's own error) and goes on with the other branches;
a GetRunJobLog refused with ``InvalidParameter*`` for its Path is asked once more without it.

Invariants:

- Never raises (cancellation from outside excepted): an API error, a malformed answer or the
  overall timeout ends the walk, is logged once (``failure_enrichment_incomplete``), and
  whatever was found so far is returned, missing fields as ``""``. A failure to explain a
  failure must never hold back or lose the event. It is not reported to the pollers'
  :class:`~watcher.polling.outages.Outages`: that line is what names the event left without
  details, and a walk only starts right after a poll was answered, so its failures cannot
  tell an unreachable API, while one run's failing GetRunCalls would open a polling outage.
- Bounded: at most ``max_depth`` levels and ``max_listings`` GetRunCalls requests, one
  GetRunJobLog request, all within ``timeout`` seconds (``[polling] enrich_timeout_seconds``),
  counted from the detection: no event waits longer for its details. The requests go
  through the client's GetRunCalls and GetRunJobLog limiters (one each, Tencent's budget is
  per action), never the GetRunStatus one, so status polling is not slowed down by it.
- Oldest failure first under a burst: every request of every walk waits in one shared
  priority queue per action (:class:`StepQueue`) and at most ``lanes`` of them are handed to
  the client (its limiter) at a time. The key is when the walk started, so a run detected
  earlier finishes its walk (root, deeper levels, the log) before a later run's requests go
  out; the limiter's own first-come-first-served line is never more than ``lanes`` long. A
  burst beyond the budget then delays the last runs, not all of them, and those nearest
  their deadline are served first. ``lanes`` (a few tenths of a second of the rate) is
  enough to keep the budget busy at a round trip of ``lanes / rate`` seconds.
- ``stderr_tail`` holds at most ``tail_bytes`` UTF-8 bytes and starts at a line boundary
  (unless a single last line is longer than the budget); ``message`` is one line.
- One enricher serves every run concurrently; its only state is the two step queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from watcher.omics.errors import OmicsError
from watcher.omics.models import RunMetadata, parse_json_text
from watcher.statuses import Statuses

DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_TAIL_BYTES = 4096
DEFAULT_MAX_DEPTH = 4
DEFAULT_MAX_LISTINGS = 12
DEFAULT_LANES = 8
MESSAGE_MAX_CHARS = 2000

METADATA_FILE_NOTE = (
    "GetRunCalls lists no task for this run, as for Nextflow runs: its nextflow.log can be "
    "fetched with GetRunMetadataFile (Key nextflow.log); the download URL that call returns "
    "is short-lived, so none is included here."
)


class CallsSource(Protocol):
    """The two Omics actions enrichment needs (:class:`~watcher.omics.client.OmicsClient`)."""

    async def get_run_calls(
        self, run_uuid: str, project_id: str = "", path: str = "/"
    ) -> list[RunMetadata]: ...

    async def get_run_job_log(
        self,
        run_uuid: str,
        job_id: str,
        log_type: str = "stderr",
        project_id: str = "",
        path: str = "",
    ) -> str: ...


def error_text(raw: str | None) -> str:
    """The first meaningful line of an ErrorMessage.

    A Cromwell failures array (``[{"message": ..., "causedBy": [...]}]``) is followed along
    its first ``causedBy`` chain to the root cause (the outer messages are "Workflow failed"
    and the like); ``"{}"`` and ``""`` mean no error; text that is not JSON is kept as it is.
    """
    parsed = parse_json_text(raw)
    message = ""
    if isinstance(parsed, str):
        message = parsed
    elif isinstance(parsed, list):
        message = _root_cause(parsed)
    elif isinstance(parsed, dict):
        value = parsed.get("message")
        message = value if isinstance(value, str) else ""
    for line in message.splitlines():
        line = line.strip()
        if line:
            return line[:MESSAGE_MAX_CHARS]
    return ""


def _root_cause(failures: Sequence[Any]) -> str:
    """The deepest non-empty message along the first ``causedBy`` chain."""
    found = ""
    node: Any = failures
    for _ in range(32):  # a failures tree is shallow; never loop on a pathological one
        if not isinstance(node, list) or not node or not isinstance(node[0], dict):
            break
        first = node[0]
        message = first.get("message")
        if isinstance(message, str) and message.strip():
            found = message
        node = first.get("causedBy")
    return found


def tail(text: str, limit: int) -> str:
    """The end of ``text`` in at most ``limit`` UTF-8 bytes, cut at a line boundary.

    Trailing whitespace is dropped first. If the last line alone is longer than ``limit``,
    its end is kept (never a partial character).
    """
    text = text.rstrip()
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    if limit <= 0:
        return ""
    cut = data[len(data) - limit :]
    newline = cut.find(b"\n")
    if newline != -1:
        cut = cut[newline + 1 :]
    return cut.decode("utf-8", errors="ignore")


@dataclass(frozen=True, slots=True)
class _Candidate:
    call: RunMetadata
    path: str  # the Path it was listed under (GetRunJobLog gets the same)
    order: int  # discovery order, to break EndTime ties deterministically

    @property
    def is_task(self) -> bool:
        return bool(self.call.JobId) and (self.call.RunType or "Task") not in CONTAINER_TYPES

    def sort_key(self) -> tuple[int, float, int]:
        end = self.call.end_time
        # A failed task without an EndTime is less likely the first one: it goes last.
        return (0, end.timestamp(), self.order) if end is not None else (1, 0.0, self.order)


def _task_name(call: RunMetadata) -> str:
    name = call.CallName or call.JobId or ""
    index = (call.ScatterIndex or "").strip()
    if name and index and index not in ("-1", "NA"):
        return f"{name}[{index}]"
    return name


# RunTypes whose calls are listed one level down, at ``Path = "/" + RunId``.
CONTAINER_TYPES: frozenset[str] = frozenset({"Workflow", "Scatter"})


def _child_path(call: RunMetadata) -> str:
    """The Path listing the calls inside ``call`` (``""`` when it has no RunId to name)."""
    return "/" + call.RunId if call.RunId else ""


def _is_bad_path(exc: OmicsError) -> bool:
    return exc.code.startswith("InvalidParameter")


@dataclass(frozen=True, slots=True)
class _Walk:
    """One run's walk: what to ask about, and when it started (its place in the queues)."""

    run_uuid: str
    project_id: str
    started: float


class _Findings:
    """What the walk has learned so far; read even when the walk is cut short."""

    def __init__(self, fallback_message: str) -> None:
        self.task = ""
        self.message = fallback_message
        self.stderr_tail = ""
        self.note = ""
        self.listings = 0

    def as_dict(self) -> dict[str, str]:
        out = {"task": self.task, "message": self.message, "stderr_tail": self.stderr_tail}
        if self.note:
            out["metadata_file_note"] = self.note
        return out


@dataclass(frozen=True, slots=True)
class EnrichLimits:
    """How far enriching one failure goes: seconds in all, stderr bytes kept, GetRunCalls
    depth and listings; and ``lanes``, the requests of each action handed to the client at
    once (built by :func:`watcher.options.enrich_limits` from the configured budgets)."""

    timeout: float = DEFAULT_TIMEOUT_SECONDS
    tail_bytes: int = DEFAULT_TAIL_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_listings: int = DEFAULT_MAX_LISTINGS
    lanes: int = DEFAULT_LANES

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.tail_bytes < 0 or self.max_depth < 1 or self.max_listings < 1:
            raise ValueError("timeout > 0, tail_bytes >= 0, max_depth >= 1, max_listings >= 1")
        if self.lanes < 1:
            raise ValueError("lanes >= 1")


# The order enrichment requests are served in (see the module docstring); the others are
# kept to measure against (benchmarks/enrich_bench.py): "level" serves the root listing of
# every failed run before any deeper level, "arrival" is the limiter's own order.
Order = Literal["oldest-run", "level", "arrival"]
StepKey = tuple[float, ...]


class StepQueue:
    """At most ``lanes`` holders at once; waiters are let in smallest key first.

    A waiter cancelled (its walk timed out) leaves the line; one cancelled just after it
    was let in passes its turn on.
    """

    def __init__(self, lanes: int) -> None:
        self._lanes = lanes
        self._busy = 0
        self._live = 0  # waiters not cancelled (the heap may hold cancelled ones)
        self._waiting: list[tuple[StepKey, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return self._live

    @contextlib.asynccontextmanager
    async def turn(self, key: StepKey) -> AsyncIterator[None]:
        if self._busy < self._lanes and not self._live:
            self._busy += 1
        else:
            turn = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (key, next(self._order), turn))
            self._live += 1
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # let in, but cancelled before it ran: pass it on
                else:
                    self._live -= 1
                    turn.cancel()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._busy -= 1
        while self._waiting and self._busy < self._lanes:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                self._live -= 1
                self._busy += 1
                turn.set_result(None)


class _Steps:
    """The two step queues and the order they serve; shared by every walk."""

    def __init__(self, lanes: int, order: Order) -> None:
        self.calls = StepQueue(lanes)
        self.logs = StepQueue(lanes)
        self._key: Callable[[float, int], StepKey] = {
            "oldest-run": lambda started, depth: (started, depth),
            "level": lambda started, depth: (depth, started),
            "arrival": lambda started, depth: (time.monotonic(),),
        }[order]

    def key(self, started: float, depth: int) -> StepKey:
        return self._key(started, depth)


class FailureEnricher:
    """Finds the first failing call of a failed run; see the module docstring."""

    def __init__(
        self,
        *,
        client: CallsSource,
        statuses: Statuses,
        limits: EnrichLimits | None = None,
        order: Order = "oldest-run",
    ) -> None:
        self._client = client
        self._statuses = statuses
        self._limits = limits or EnrichLimits()
        self._steps = _Steps(self._limits.lanes, order)
        self._log = structlog.get_logger("watcher.enrich")

    @property
    def failing(self) -> frozenset[str]:
        """Run statuses whose transition gets enriched (the vocabulary's failing ones)."""
        return self._statuses.failing

    async def failure(
        self, run_uuid: str, project_id: str, metadata: Mapping[str, Any]
    ) -> dict[str, str]:
        """``{"task", "message", "stderr_tail"}`` (``""`` when unknown), never an exception.

        ``metadata`` is the run's RunMetadata as GetRunStatus returned it; its ErrorMessage
        is the message used when no failing call can be found. ``"metadata_file_note"`` is
        added when GetRunCalls lists no call at all (Nextflow runs).
        """
        raw_error = metadata.get("ErrorMessage")
        found = _Findings(error_text(raw_error if isinstance(raw_error, str) else None))
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._limits.timeout):
                await self._walk(_Walk(run_uuid, project_id, started), found)
        except TimeoutError:
            self._incomplete(run_uuid, found, started, reason="timeout")
        except OmicsError as exc:
            self._incomplete(run_uuid, found, started, reason=exc.code, error=exc.message)
        except Exception as exc:  # a bug or a surprise must not cost the event
            self._incomplete(run_uuid, found, started, reason=type(exc).__name__, error=str(exc))
        else:
            self._log.info(
                "failure_enriched",
                run_uuid=run_uuid,
                task=found.task,
                listings=found.listings,
                stderr_bytes=len(found.stderr_tail.encode()),
                seconds=round(time.monotonic() - started, 3),
            )
        return found.as_dict()

    def _incomplete(
        self,
        run_uuid: str,
        found: _Findings,
        started: float,
        *,
        reason: str,
        error: str = "",
    ) -> None:
        self._log.warning(
            "failure_enrichment_incomplete",
            run_uuid=run_uuid,
            reason=reason,
            error=error[:300],
            task=found.task,
            listings=found.listings,
            seconds=round(time.monotonic() - started, 3),
        )

    def _is_failing(self, call: RunMetadata) -> bool:
        return self._statuses.is_failed_call(call.Status)

    async def _walk(self, walk: _Walk, found: _Findings) -> None:
        best = await self._find(walk, found)
        if best is None:
            return
        job_id = best.call.JobId
        if not best.is_task or not job_id:
            return
        try:
            text = await self._job_log(walk, job_id, best.path)
        except OmicsError as exc:
            if best.path in ("", "/") or not _is_bad_path(exc):
                raise
            # Tencent's own example reads a sub-task's log by JobId alone.
            text = await self._job_log(walk, job_id, "")
        found.stderr_tail = tail(text, self._limits.tail_bytes)

    async def _job_log(self, walk: _Walk, job_id: str, path: str) -> str:
        async with self._steps.logs.turn(self._steps.key(walk.started, self._limits.max_depth)):
            return await self._client.get_run_job_log(
                walk.run_uuid, job_id, "stderr", project_id=walk.project_id, path=path
            )

    async def _listing(self, walk: _Walk, path: str, depth: int) -> list[RunMetadata]:
        async with self._steps.calls.turn(self._steps.key(walk.started, depth)):
            return await self._client.get_run_calls(walk.run_uuid, walk.project_id, path)

    async def _find(self, walk: _Walk, found: _Findings) -> _Candidate | None:
        """Breadth-first over failing sub-workflows and scatters; updates ``found`` as it
        learns. A deeper level refused as an invalid Path is skipped (logged)."""
        level = ["/"]
        seen = {"/"}
        tasks: list[_Candidate] = []
        workflows: list[_Candidate] = []
        order = 0
        for depth in range(self._limits.max_depth):
            next_level: list[str] = []
            for path in level:
                if found.listings >= self._limits.max_listings:
                    break
                found.listings += 1
                try:
                    calls = await self._listing(walk, path, depth)
                except OmicsError as exc:
                    if depth == 0 or not _is_bad_path(exc):
                        raise
                    self._log.info("failure_path_refused", run_uuid=walk.run_uuid, path=path)
                    continue
                if depth == 0 and not calls:
                    found.note = METADATA_FILE_NOTE
                for call in calls:
                    if not self._is_failing(call):
                        continue
                    candidate = _Candidate(call, path, order)
                    order += 1
                    if candidate.is_task:
                        tasks.append(candidate)
                    else:
                        workflows.append(candidate)
                        child = _child_path(call)
                        if child and child not in seen:
                            seen.add(child)
                            next_level.append(child)
                self._record(found, tasks, workflows)
            if not next_level:
                break
            level = next_level
        return self._best(tasks, workflows)

    @staticmethod
    def _best(tasks: list[_Candidate], workflows: list[_Candidate]) -> _Candidate | None:
        if tasks:
            return min(tasks, key=_Candidate.sort_key)
        if workflows:
            return min(workflows, key=_Candidate.sort_key)
        return None

    def _record(
        self, found: _Findings, tasks: list[_Candidate], workflows: list[_Candidate]
    ) -> None:
        best = self._best(tasks, workflows)
        if best is None:
            return
        found.task = _task_name(best.call)
        message = error_text(best.call.ErrorMessage)
        if message:
            found.message = message
