"""The four simulated Omics actions: parameter validation and answers.

Each handler takes the request's JSON object and the current monotonic time and returns the
payload of ``Response`` (without ``RequestId``), or raises
:class:`~watcher.simulator.protocol.ApiError` with the code Tencent would use:
``MissingParameter``, ``InvalidParameter`` (wrong type), ``InvalidParameterValue`` (out of
range, unsupported filter, too many filter values), ``UnknownParameter``,
``ResourceNotFound.RunNotExist``.

Project scoping: a blank or missing ``ProjectId`` means the region's default project (the
first configured one); a run is found only within its own project.
DescribeRuns lists newest runs first (creation order, descending), so paging is stable while
no run is submitted. It shows every run as it was ``list_lag()`` seconds ago (status, times,
ErrorMessage, the Status filter, ``UpdateTime`` = the last change it shows); GetRunStatus,
GetRunCalls and GetRunJobLog always answer the present.
GetRunCalls and GetRunJobLog take ``Path`` as :mod:`watcher.simulator.calls` describes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from watcher.simulator.calls import (
    Job,
    calls_at,
    failed_job,
    failures_json,
    job_log,
    jobs,
    resolve_path,
)
from watcher.simulator.metadata import Statics, is_failure, run_item, run_metadata
from watcher.simulator.protocol import ApiError
from watcher.simulator.runs import Run, RunBook, Snapshot

MISSING = "MissingParameter"
INVALID = "InvalidParameter"
INVALID_VALUE = "InvalidParameterValue"
UNKNOWN_PARAMETER = "UnknownParameter"
RUN_NOT_EXIST = "ResourceNotFound.RunNotExist"
NOT_FOUND = "ResourceNotFound"

FILTER_NAMES: tuple[str, ...] = (
    "RunGroupId",
    "Status",
    "RunUuid",
    "ApplicationId",
    "UserDefinedId",
)
_PARAMS: dict[str, frozenset[str]] = {
    "GetRunStatus": frozenset({"RunUuid", "ProjectId"}),
    "DescribeRuns": frozenset({"ProjectId", "Limit", "Offset", "Filters"}),
    "GetRunCalls": frozenset({"RunUuid", "Path", "ProjectId"}),
    "GetRunJobLog": frozenset({"RunUuid", "JobId", "LogType", "ProjectId", "Path"}),
}


def _check_known(action: str, params: dict[str, Any]) -> None:
    unknown = sorted(set(params) - _PARAMS[action])
    if unknown:
        raise ApiError(UNKNOWN_PARAMETER, f"The parameter `{unknown[0]}` is not recognized.")


def _string(params: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = params.get(name)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ApiError(INVALID, f"The parameter `{name}` must be a string.")
    if required and not value:
        raise ApiError(MISSING, f"The request is missing a required parameter `{name}`.")
    return value


def _integer(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(INVALID, f"The parameter `{name}` must be an integer.")
    if not low <= value <= high:
        raise ApiError(
            INVALID_VALUE, f"The value of `{name}` is {value}; it must be within [{low}, {high}]."
        )
    return value


class Actions:
    """Answers for one :class:`~watcher.simulator.runs.RunBook`."""

    def __init__(
        self,
        *,
        book: RunBook,
        max_filter_values: Callable[[], int],
        polls: Counter[str],
        list_lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._book = book
        self._list_lag = list_lag
        self._life = book.lifecycles
        self._max_filter_values = max_filter_values
        self._polls = polls
        self._statics = Statics()
        self.handlers: dict[str, Callable[[dict[str, Any], float], dict[str, Any]]] = {
            "GetRunStatus": self.get_run_status,
            "DescribeRuns": self.describe_runs,
            "GetRunCalls": self.get_run_calls,
            "GetRunJobLog": self.get_run_job_log,
        }

    # -- helpers ---------------------------------------------------------------------------

    def _project(self, params: dict[str, Any]) -> str:
        return _string(params, "ProjectId") or self._book.default_project

    def _run(self, params: dict[str, Any], now: float) -> Run:
        run_uuid = _string(params, "RunUuid", required=True)
        run = self._book.by_uuid.get(run_uuid)
        if run is None or run.project_id != self._project(params):
            raise ApiError(RUN_NOT_EXIST, f"The run {run_uuid} does not exist.")
        return run

    def snapshot(self, run: Run, now: float) -> Snapshot:
        return self._life.snapshot(run, now - run.created_mono)

    def jobs(self, run: Run, snap: Snapshot) -> list[Job]:
        tq, ti, tr = self._life.durations_of(run)
        return jobs(run, snap, run.created_wall + tq + ti, tr)

    def _failures(self, run: Run, snap: Snapshot) -> str | None:
        """The failures JSON of a run that ended in failure, else ``None``."""
        if snap.ended is None or not is_failure(snap.status):
            return None
        return failures_json(run, failed_job(self.jobs(run, snap)))

    # -- actions ---------------------------------------------------------------------------

    def get_run_status(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        _check_known("GetRunStatus", params)
        run = self._run(params, now)
        self._polls[run.run_uuid] += 1
        snap = self.snapshot(run, now)
        error = self._failures(run, snap) or "{}"
        return {"Metadata": run_metadata(run, snap, error_message=error, statics=self._statics)}

    def _filters(self, params: dict[str, Any]) -> list[tuple[str, frozenset[str]]]:
        raw = params.get("Filters")
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ApiError(INVALID, "The parameter `Filters` must be an array.")
        out: list[tuple[str, frozenset[str]]] = []
        limit = self._max_filter_values()
        for i, item in enumerate(raw):
            where = f"Filters.{i}"
            if not isinstance(item, dict):
                raise ApiError(INVALID, f"`{where}` must be an object with Name and Values.")
            name, values = item.get("Name"), item.get("Values")
            if not isinstance(name, str) or not name:
                raise ApiError(MISSING, f"The request is missing `{where}.Name`.")
            if name not in FILTER_NAMES:
                raise ApiError(
                    INVALID_VALUE,
                    f"`{where}.Name` {name!r} is not supported; use one of "
                    f"{', '.join(FILTER_NAMES)}.",
                )
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ApiError(INVALID, f"`{where}.Values` must be an array of strings.")
            if not values:
                raise ApiError(INVALID_VALUE, f"`{where}.Values` must not be empty.")
            if len(values) > limit:
                raise ApiError(
                    INVALID_VALUE,
                    f"`{where}.Values` has {len(values)} values; at most {limit} values are "
                    "allowed in one filter.",
                )
            out.append((name, frozenset(values)))
        return out

    def _candidates(self, filters: list[tuple[str, frozenset[str]]]) -> Iterable[Run]:
        """Runs that may match, newest first, narrowed with the indexes when a filter allows."""
        book = self._book
        for name, values in filters:
            if name == "RunUuid":
                found = (book.by_uuid.get(v) for v in values)
                return sorted((r for r in found if r), key=lambda r: -r.index)
        for name, values in filters:
            if name == "RunGroupId":
                groups = (book.by_group.get(v, []) for v in values)
                return sorted((r for g in groups for r in g), key=lambda r: -r.index)
        return reversed(book.runs)

    def describe_runs(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        _check_known("DescribeRuns", params)
        project = self._project(params)
        limit = _integer(params, "Limit", 10, 1, 100)
        offset = _integer(params, "Offset", 0, 0, 2**31 - 1)
        filters = self._filters(params)
        now -= self._list_lag()  # the list's view of time
        status_values = [v for n, v in filters if n == "Status"]
        fields = {
            "RunGroupId": lambda r: r.run_group_id,
            "RunUuid": lambda r: r.run_uuid,
            "ApplicationId": lambda r: r.application_id,
            "UserDefinedId": lambda r: r.user_defined_id,
        }
        matched: list[tuple[Run, Snapshot | None]] = []
        for run in self._candidates(filters):
            if run.project_id != project:
                continue
            if not all(fields[n](run) in v for n, v in filters if n != "Status"):
                continue
            snap = None
            if status_values:
                snap = self.snapshot(run, now)
                if not all(snap.status in v for v in status_values):
                    continue
            matched.append((run, snap))
        items = []
        for run, maybe in matched[offset : offset + limit]:
            snap = maybe or self.snapshot(run, now)
            error = self._failures(run, snap) or ""
            items.append(run_item(run, snap, error_message=error, statics=self._statics))
        return {"TotalCount": len(matched), "Runs": items}

    def get_run_calls(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        _check_known("GetRunCalls", params)
        run = self._run(params, now)
        path = _string(params, "Path") or "/"
        snap = self.snapshot(run, now)
        calls = calls_at(run, self.jobs(run, snap), path)
        if calls is None:
            raise ApiError(INVALID_VALUE, f"The path {path!r} does not exist in this run.")
        return {"Calls": calls}

    def get_run_job_log(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        _check_known("GetRunJobLog", params)
        run = self._run(params, now)
        job_id = _string(params, "JobId", required=True)
        log_type = _string(params, "LogType", required=True)
        path = _string(params, "Path")
        if log_type not in ("stdout", "stderr"):
            raise ApiError(INVALID_VALUE, "`LogType` must be stdout or stderr.")
        snap = self.snapshot(run, now)
        all_jobs = self.jobs(run, snap)
        if resolve_path(run, all_jobs, path) is None:
            raise ApiError(INVALID_VALUE, f"The path {path!r} does not exist in this run.")
        job = next((j for j in all_jobs if j.job_id == job_id), None)
        if job is None:
            raise ApiError(NOT_FOUND, f"The job {job_id} does not exist in this run.")
        return {"Content": job_log(run, job, log_type)}
