"""Wire shapes of runs: RunMetadata (GetRunStatus) and Run items (DescribeRuns).

Field names, order and value conventions follow the API page's example and the official SDK's
models: every RunMetadata field is present; Input/Output/Runtime/ErrorMessage are JSON *inside
strings* (``"{}"`` when empty); times are RFC 3339 with the ``+08:00`` offset, ``""`` when
unset; ``EndTime`` is set only once a run reached its outcome.
Pure functions of a :class:`~watcher.simulator.runs.Run` and its
:class:`~watcher.simulator.runs.Snapshot`; no I/O, no clock of their own.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

from watcher.simulator.runs import Run, Snapshot

_UTC8 = 8 * 3600
BUCKET = "cos://omics-sim-1250000000"
WORKFLOWS: tuple[str, ...] = ("germline_wgs", "rnaseq_quant", "somatic_wes")
# Outcomes that are not failures: no failures JSON, no failed task.
NOT_FAILED = frozenset({"SUCCESS", "COMPLETE", "CANCELED", "ABORTED"})


def rfc3339(wall: float | None) -> str:
    """``2022-10-31T14:11:23+08:00`` (whole seconds, Beijing time) or ``""`` for ``None``."""
    if wall is None:
        return ""
    tm = time.gmtime(int(wall) + _UTC8)
    return "%04d-%02d-%02dT%02d:%02d:%02d+08:00" % tm[:6]  # noqa: UP031 (fastest here)


def workflow_name(run: Run) -> str:
    return WORKFLOWS[zlib.crc32(run.application_id.encode()) % len(WORKFLOWS)]


def is_failure(status: str) -> bool:
    return status not in NOT_FAILED


def workflow_input(run: Run) -> str:
    wf, sample = workflow_name(run), run.user_defined_id
    return json.dumps(
        {
            f"{wf}.sample_id": sample,
            f"{wf}.reads_r1": f"{BUCKET}/fastq/{sample}_R1.fq.gz",
            f"{wf}.reads_r2": f"{BUCKET}/fastq/{sample}_R2.fq.gz",
            f"{wf}.reference": f"{BUCKET}/ref/GRCh38.fa",
        }
    )


def workflow_output(run: Run) -> str:
    wf, sample = workflow_name(run), run.user_defined_id
    base = f"{BUCKET}/outputs/{run.run_uuid}"
    return json.dumps(
        {f"{wf}.vcf": f"{base}/{sample}.vcf.gz", f"{wf}.report": f"{base}/{sample}.html"}
    )


def _at(run: Run, offset: float | None) -> str:
    return "" if offset is None else rfc3339(run.created_wall + offset)


class Statics:
    """Per-run strings that never change (name, Input, SubmitTime), built on first use and
    kept for the ``size`` most recently first-used runs, so memory stays bounded."""

    def __init__(self, size: int = 16384) -> None:
        self._size = size
        self._cache: dict[str, tuple[str, str, str]] = {}

    def get(self, run: Run) -> tuple[str, str, str]:
        found = self._cache.get(run.run_uuid)
        if found is None:
            if len(self._cache) >= self._size:
                del self._cache[next(iter(self._cache))]  # oldest first
            found = (workflow_name(run), workflow_input(run), _at(run, 0.0))
            self._cache[run.run_uuid] = found
        return found


def run_metadata(
    run: Run, snap: Snapshot, *, error_message: str, statics: Statics
) -> dict[str, Any]:
    """The workflow-level RunMetadata object GetRunStatus answers with."""
    succeeded = snap.ended is not None and snap.status in ("SUCCESS", "COMPLETE")
    name, input_json, submitted = statics.get(run)
    return {
        "CallCached": False,
        "CallName": name,
        "Command": "",
        "EndTime": _at(run, snap.ended),
        "ErrorMessage": error_message,
        "Input": input_json,
        "JobId": "",
        "Output": workflow_output(run) if succeeded else "{}",
        "ParentId": run.run_uuid,
        "PostProcess": False,
        "Preprocess": False,
        "RunId": run.run_uuid,
        "RunType": "Workflow",
        "Runtime": "{}",
        "ScatterIndex": "",
        "StartTime": _at(run, snap.started),
        "Status": snap.status,
        "Stderr": "",
        "Stdout": "",
        "SubmitTime": submitted,
        "WorkDir": "",
        "Meta": "",
    }


def run_item(run: Run, snap: Snapshot, *, error_message: str, statics: Statics) -> dict[str, Any]:
    """One element of DescribeRuns' ``Runs`` (the SDK's ``Run`` model)."""
    _, input_json, submitted = statics.get(run)
    return {
        "RunUuid": run.run_uuid,
        "ProjectId": run.project_id,
        "ApplicationId": run.application_id,
        "RunGroupId": run.run_group_id,
        "EnvironmentId": "env-sim0001",
        "UserDefinedId": run.user_defined_id,
        "TableId": "",
        "TableRowUuid": "",
        "Status": snap.status,
        "Input": input_json,
        "Option": {
            "FailureMode": "NoNewCalls",
            "UseCallCache": False,
            "UseErrorOnHold": False,
            "FinalWorkflowOutputsDir": f"{BUCKET}/outputs/{run.run_uuid}",
            "UseRelativeOutputPaths": True,
            "AddRunInfoToOutputDir": False,
        },
        "ExecutionTime": {
            "SubmitTime": submitted,
            "StartTime": _at(run, snap.started),
            "EndTime": _at(run, snap.ended),
        },
        "Cache": {"CacheClearDelay": 0, "CacheClearTime": "", "CacheCleared": False},
        "ErrorMessage": error_message,
        "CreateTime": submitted,
        "UpdateTime": _at(run, snap.since),
    }
