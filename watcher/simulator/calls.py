"""The task tree of a simulated run: GetRunCalls answers, failures JSON, job logs.

Every run executes the same five steps, one after the other, across its RUNNING time. Levels
follow Tencent's published convention (tccli example "查询子作业详情"): ``Path`` ``/`` lists the
root; the calls inside a sub-workflow or a scatter are listed with ``Path = "/" + RunId`` of
that call (``RunType`` ``Workflow`` or ``Scatter``), and carry that id as ``ParentId``::

    /                                 ParentId = the run's UUID
      <wf>.fastqc              Scatter   step 0    -> /<its RunId>: shards 0-1 (Task)
      <wf>.align               Task      step 1
      <wf>.variant_calling     Workflow  steps 2-3 -> /<its RunId>:
          variant_calling.haplotype_caller  Scatter  step 2 -> /<its RunId>: shards 0-2
          variant_calling.merge_vcfs        Task     step 3
      <wf>.report              Task      step 4

Any other Path (a CallName, a task's RunId, a container not started yet, nested segments)
names nothing: ``InvalidParameterValue``. A call is listed once its step started (as
Cromwell does). A run that fails or is canceled stops at a seeded step ``L`` (the nested,
scattered haplotype_caller most often): its steps are spread over ``L + 1`` equal slices of
RUNNING time, one shard of step ``L`` fails (or all its shards are canceled). Everything is
recomputed from the run's snapshot; nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from watcher.simulator.metadata import BUCKET, is_failure, rfc3339, workflow_name
from watcher.simulator.runs import FINISHING, Run, Snapshot

COMPLETE = "COMPLETE"
RUNNING = "RUNNING"
WORKFLOW = "Workflow"
SCATTER = "Scatter"
STEPS = 5
SUB = "variant_calling"


@dataclass(frozen=True, slots=True)
class CallDef:
    short: str  # task name without the workflow prefix
    step: int
    shards: int  # 0: not scattered
    nested: bool  # inside the variant_calling sub-workflow
    command: str
    cpu: int
    memory_gb: int


CALLS: tuple[CallDef, ...] = (
    CallDef("fastqc", 0, 2, False, "fastqc -t 2 -o qc/ {sample}_R{shard1}.fq.gz", 2, 4),
    CallDef("align", 1, 0, False, "bwa-mem2 mem -t 16 GRCh38.fa {sample}_R1.fq.gz", 16, 32),
    CallDef(
        "haplotype_caller",
        2,
        3,
        True,
        "gatk HaplotypeCaller -R GRCh38.fa -I {sample}.bam -L chr{shard1} -O {sample}.g.vcf.gz",
        4,
        16,
    ),
    CallDef("merge_vcfs", 3, 0, True, "gatk MergeVcfs -O {sample}.g.vcf.gz", 2, 8),
    CallDef("report", 4, 0, False, "multiqc -o report/ .", 1, 2),
)


@dataclass(frozen=True, slots=True)
class Job:
    """One task execution (a call, or one shard of a scattered call) at one moment."""

    call: CallDef
    shard: int  # -1 when not scattered
    job_id: str
    status: str  # "" when not started yet
    start: float | None  # wall clock
    end: float | None
    failed: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a run stops (``last`` step) and which shard fails, if it fails."""

    slices: int
    last: int
    fail_call: CallDef | None
    fail_shard: int
    end_status: str  # status given to the jobs of ``last`` when the run ends abnormally


def plan_of(snap: Snapshot) -> Plan:
    if snap.kind != FINISHING or snap.outcome in ("SUCCESS", "COMPLETE"):
        return Plan(STEPS, STEPS - 1, None, -1, COMPLETE)
    u = snap.fail_draw
    # Most failures are in the nested scatter, so that walking Path is exercised.
    call = CALLS[2] if u < 0.6 else CALLS[int((u - 0.6) / 0.4 * len(CALLS)) % len(CALLS)]
    shard = int(u * 1000) % call.shards if call.shards else -1
    if is_failure(snap.outcome):
        return Plan(call.step + 1, call.step, call, shard, snap.outcome)
    return Plan(call.step + 1, call.step, None, -1, snap.outcome)


def job_id(run: Run, call: CallDef, shard: int) -> str:
    digest = hashlib.blake2b(f"{run.run_uuid}/{call.short}/{shard}".encode(), digest_size=8)
    return "job-" + digest.hexdigest()


def _uuid_of(label: str) -> str:
    digest = hashlib.blake2b(label.encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


def subworkflow_id(run: Run | str) -> str:
    """The RunId of the run's sub-workflow (given the run or its UUID)."""
    return _uuid_of(f"{run if isinstance(run, str) else run.run_uuid}/{SUB}")


def scatter_id(run: Run, call: CallDef) -> str:
    return _uuid_of(f"{run.run_uuid}/{call.short}/scatter")


def jobs(run: Run, snap: Snapshot, running_start: float, running_seconds: float) -> list[Job]:
    """All jobs of the run; ``running_start`` is the wall time RUNNING began."""
    plan = plan_of(snap)
    done = snap.progress * plan.slices  # steps finished, fractionally
    ended = snap.ended is not None
    out: list[Job] = []
    for call in CALLS:
        for shard in range(call.shards) if call.shards else (-1,):
            start = running_start + running_seconds * call.step / plan.slices
            status, end, failed = "", None, False
            if call.step > plan.last or (not ended and (done <= 0 or done < call.step)):
                status = ""
            elif ended and call.step == plan.last and plan.end_status != COMPLETE:
                end = running_start + running_seconds
                if plan.fail_call is None:
                    status = plan.end_status
                elif shard == plan.fail_shard:
                    status, failed = plan.end_status, True
                else:
                    status = COMPLETE
            elif done >= call.step + 1 or ended:
                status = COMPLETE
                end = running_start + running_seconds * (call.step + 1) / plan.slices
            else:
                status = RUNNING
            out.append(Job(call, shard, job_id(run, call, shard), status, start, end, failed))
    return out


def task_failure(run: Run, job: Job) -> dict[str, Any]:
    index = f"{job.shard}" if job.shard >= 0 else "NA"
    return {
        "message": (
            f"Job {SUB if job.call.nested else workflow_name(run)}.{job.call.short}:{index}:1 "
            "exited with return code 137 which has not been declared as a valid return code. "
            "See 'continueOnReturnCode' runtime attribute for more details."
        ),
        "causedBy": [],
    }


def failures_json(run: Run, failed: Job | None) -> str:
    """The Cromwell-style failures array of a failed workflow (``"{}"`` when none)."""
    if failed is None:
        return "{}"
    return json.dumps([{"message": "Workflow failed", "causedBy": [task_failure(run, failed)]}])


def failed_job(all_jobs: list[Job]) -> Job | None:
    return next((j for j in all_jobs if j.failed), None)


def _work_dir(run: Run, job: Job) -> str:
    base = f"{BUCKET}/runs/{run.run_uuid}/"
    if job.call.nested:
        base += f"call-{SUB}/{SUB}/{subworkflow_id(run)}/"
    base += f"call-{job.call.short}/"
    return base + (f"shard-{job.shard}/" if job.shard >= 0 else "")


def _task_metadata(run: Run, job: Job, parent: str) -> dict[str, Any]:
    wf = SUB if job.call.nested else workflow_name(run)
    sample = run.user_defined_id
    work_dir = _work_dir(run, job)
    output = {f"{wf}.{job.call.short}.out": f"{work_dir}out/{sample}.dat"}
    return {
        "CallCached": False,
        "CallName": f"{wf}.{job.call.short}",
        "Command": job.call.command.format(sample=sample, shard1=job.shard + 1),
        "EndTime": rfc3339(job.end),
        "ErrorMessage": json.dumps([task_failure(run, job)]) if job.failed else "{}",
        "Input": json.dumps({f"{wf}.{job.call.short}.sample": sample}),
        "JobId": job.job_id,
        "Output": json.dumps(output) if job.status == COMPLETE else "{}",
        "ParentId": parent,
        "PostProcess": False,
        "Preprocess": False,
        "RunId": _uuid_of(f"{run.run_uuid}/{job.call.short}/{job.shard}/task"),
        "RunType": "Task",
        "Runtime": json.dumps(
            {
                "cpu": job.call.cpu,
                "memory": f"{job.call.memory_gb} GB",
                "docker": "omics-sim/tools:1.0",
            }
        ),
        "ScatterIndex": str(job.shard) if job.shard >= 0 else "",
        "StartTime": rfc3339(job.start),
        "Status": job.status,
        "Stderr": work_dir + "stderr",
        "Stdout": work_dir + "stdout",
        "SubmitTime": rfc3339(job.start),
        "WorkDir": work_dir,
        "Meta": "",
    }


def _aggregate(inner: list[Job]) -> tuple[str, float | None, Job | None]:
    """Status, EndTime and failed job of a container whose jobs are ``inner`` (some started)."""
    started = [j for j in inner if j.status]
    failed = failed_job(inner)
    others = [j.status for j in started if j.status not in (COMPLETE, RUNNING)]
    if failed is not None:
        status = failed.status
    elif any(j.status == RUNNING for j in started) or len(started) < len(inner):
        status = others[0] if others else RUNNING
    else:
        status = others[0] if others else COMPLETE
    ends = [j.end for j in started]
    end = None if status == RUNNING or None in ends else max(e for e in ends if e is not None)
    return status, end, failed


@dataclass(frozen=True, slots=True)
class Container:
    """A sub-workflow or a scatter: listed at the level above, its calls at ``"/" + run_id``."""

    run_id: str
    parent_id: str
    run_type: str  # "Workflow" or "Scatter"
    call_name: str
    work_dir: str
    jobs: tuple[Job, ...]  # every job below it (started or not)


def _container_metadata(run: Run, box: Container) -> dict[str, Any]:
    started = [j for j in box.jobs if j.status]
    status, end, failed = _aggregate(list(box.jobs))
    if box.run_type == WORKFLOW:
        error = failures_json(run, failed)
    else:
        error = json.dumps([task_failure(run, failed)]) if failed is not None else "{}"
    short = box.call_name.rsplit(".", 1)[-1]
    return {
        "CallCached": False,
        "CallName": box.call_name,
        "Command": "",
        "EndTime": rfc3339(end),
        "ErrorMessage": error,
        "Input": json.dumps({f"{short}.sample": run.user_defined_id}),
        "JobId": "",
        "Output": "{}",
        "ParentId": box.parent_id,
        "PostProcess": False,
        "Preprocess": False,
        "RunId": box.run_id,
        "RunType": box.run_type,
        "Runtime": "{}",
        "ScatterIndex": "",
        "StartTime": rfc3339(started[0].start),
        "Status": status,
        "Stderr": "",
        "Stdout": "",
        "SubmitTime": rfc3339(started[0].start),
        "WorkDir": box.work_dir,
        "Meta": "",
    }


def _level(run: Run, all_jobs: list[Job], parent: str, nested: bool) -> list[Job | Container]:
    """The entries of one level, in step order: tasks, scatters and the sub-workflow."""
    out: list[Job | Container] = []
    base = f"{BUCKET}/runs/{run.run_uuid}/"
    prefix = SUB if nested else workflow_name(run)
    if nested:
        base += f"call-{SUB}/{SUB}/{subworkflow_id(run)}/"
    for call in CALLS:
        mine = tuple(j for j in all_jobs if j.call is call)
        if call.nested and not nested:
            if not out or not (isinstance(out[-1], Container) and out[-1].run_type == WORKFLOW):
                inner = tuple(j for j in all_jobs if j.call.nested)
                name, work_dir = f"{workflow_name(run)}.{SUB}", f"{base}call-{SUB}/"
                out.append(Container(subworkflow_id(run), parent, WORKFLOW, name, work_dir, inner))
        elif call.nested == nested and call.shards:
            run_id = scatter_id(run, call)
            name = f"{prefix}.{call.short}"
            out.append(Container(run_id, parent, SCATTER, name, f"{base}call-{call.short}/", mine))
        elif call.nested == nested:
            out.extend(mine)
    return out


def _containers(run: Run, all_jobs: list[Job]) -> dict[str, Container]:
    """Every container that has started (so is listed at its level), by RunId."""
    found: dict[str, Container] = {}
    for entry in _level(run, all_jobs, run.run_uuid, False):
        if isinstance(entry, Container) and any(j.status for j in entry.jobs):
            found[entry.run_id] = entry
    if subworkflow_id(run) in found:
        for entry in _level(run, all_jobs, subworkflow_id(run), True):
            if isinstance(entry, Container) and any(j.status for j in entry.jobs):
                found[entry.run_id] = entry
    return found


def _listing(run: Run, entries: list[Job | Container], parent: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in entries:
        if isinstance(entry, Container):
            if any(j.status for j in entry.jobs):
                out.append(_container_metadata(run, entry))
        elif entry.status:
            out.append(_task_metadata(run, entry, parent))
    return out


def resolve_path(run: Run, all_jobs: list[Job], path: str) -> str | None:
    """The RunId a Path names (the run's own UUID for ``/`` or ``""``); ``None`` when it names
    no started sub-workflow or scatter of this run (a task's RunId names nothing either)."""
    key = path.strip()
    if key in ("", "/"):
        return run.run_uuid
    if not key.startswith("/") or "/" in key[1:]:
        return None
    return key[1:] if key[1:] in _containers(run, all_jobs) else None


def calls_at(run: Run, all_jobs: list[Job], path: str) -> list[dict[str, Any]] | None:
    """GetRunCalls' ``Calls`` for ``path`` (``/`` or ``"/" + RunId`` of a Workflow or Scatter
    listed at the level above); ``None`` when the path names nothing."""
    target = resolve_path(run, all_jobs, path)
    if target is None:
        return None
    if target == run.run_uuid:
        return _listing(run, _level(run, all_jobs, target, False), target)
    box = _containers(run, all_jobs)[target]
    if box.run_type == WORKFLOW:
        return _listing(run, _level(run, all_jobs, target, True), target)
    return _listing(run, list(box.jobs), target)


def _log_lines(run: Run, job: Job, log_type: str) -> Iterator[str]:
    name = f"{job.call.short}" + (f" shard {job.shard}" if job.shard >= 0 else "")
    stamp = rfc3339(job.start)
    if log_type == "stdout":
        yield f"{stamp} starting {name} for {run.user_defined_id}"
        for i in range(1, 4):
            yield f"{stamp} {name}: processed {i * 250000} records"
        if job.status == COMPLETE:
            yield f"{rfc3339(job.end)} {name}: done"
        return
    yield f"{stamp} INFO  {job.call.short} - using {job.call.cpu} threads"
    yield f"{stamp} INFO  {job.call.short} - reference GRCh38.fa loaded"
    if job.failed:
        yield f"{rfc3339(job.end)} WARN  {job.call.short} - GC overhead above 98%"
        yield (
            f"{rfc3339(job.end)} ERROR {job.call.short} - exited with code 137: "
            "java.lang.OutOfMemoryError: Java heap space"
        )


def job_log(run: Run, job: Job, log_type: str) -> str:
    """The text GetRunJobLog answers; empty until the job started."""
    if not job.status:
        return ""
    return "\n".join(_log_lines(run, job, log_type)) + "\n"
