"""Simulator lifecycles, task trees and logs, driven in-process with injected clocks.

These are the simulator's pure parts: schedules are a function of (seed, index, elapsed
time), so every test here runs instantly with a fake clock and checks exact outcomes.
The HTTP protocol, auth, rate limit and faults are in ``test_simulator.py``.
"""

from __future__ import annotations

import itertools
import json
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from support import FakeClock

from watcher.simulator import ApiError, Simulator, SimulatorConfig

TERMINAL = {"SUCCESS", "EXECUTOR_ERROR", "CANCELED"}


START = datetime.fromtimestamp(1_800_000_000, UTC)


def make(config: SimulatorConfig) -> tuple[Simulator, FakeClock]:
    clock = FakeClock(START)
    return Simulator(config, monotonic=clock.monotonic, wall=clock.wall), clock


def offsets(sim: Simulator, clock: FakeClock) -> list[tuple[str, str | None, str, float]]:
    return [
        (t.run_uuid, t.previous, t.status, round(t.at - clock.epoch, 6)) for t in sim.timeline()
    ]


def test_same_seed_same_runs_and_schedules() -> None:
    config = SimulatorConfig(runs=40, seed=11)
    a, clock_a = make(config)
    b, clock_b = make(config)
    clock_a.advance(30)
    clock_b.advance(30)
    assert a.run_uuids == b.run_uuids
    assert offsets(a, clock_a) == offsets(b, clock_b)
    other, clock_c = make(SimulatorConfig(runs=40, seed=12))
    clock_c.advance(30)
    assert set(other.run_uuids).isdisjoint(a.run_uuids)
    assert offsets(other, clock_c) != offsets(a, clock_a)
    # Run i does not depend on how many runs there are.
    fewer, _ = make(SimulatorConfig(runs=5, seed=11))
    assert fewer.run_uuids == a.run_uuids[:5]


def test_finishing_runs_all_end_within_the_configured_time_and_follow_the_mix() -> None:
    sim, clock = make(SimulatorConfig(runs=150, seed=3))
    assert {sim.status(u) for u in sim.run_uuids} == {"QUEUED"}
    clock.advance(14.01)  # defaults: at most 2 + 2 + 10 s
    outcomes = Counter(sim.status(u) for u in sim.run_uuids)
    assert set(outcomes) <= TERMINAL
    assert 80 <= outcomes["SUCCESS"] <= 130  # 70 % of 150, seeded
    assert outcomes["EXECUTOR_ERROR"] > 10
    assert outcomes["CANCELED"] > 3
    for run_uuid in sim.run_uuids[:20]:
        statuses = [t.status for t in sim.timeline(run_uuid)]
        assert statuses[:3] == ["QUEUED", "INITIALIZING", "RUNNING"]
        assert statuses[3] in TERMINAL
        assert len(statuses) == 4


def test_metadata_times_follow_the_lifecycle() -> None:
    config = SimulatorConfig(
        runs=1,
        seed=1,
        outcomes={"SUCCESS": 1},
        queued_seconds=(1, 1),
        initializing_seconds=(1, 1),
        running_seconds=(2, 2),
    )
    sim, clock = make(config)
    run_uuid = sim.run_uuids[0]

    def meta() -> dict[str, Any]:
        metadata: dict[str, Any] = sim.call("GetRunStatus", {"RunUuid": run_uuid})["Metadata"]
        return metadata

    first = meta()
    assert first["Status"] == "QUEUED"
    assert first["StartTime"] == first["EndTime"] == ""
    assert first["SubmitTime"].endswith("+08:00")
    assert first["RunId"] == first["ParentId"] == run_uuid
    assert first["RunType"] == "Workflow"
    assert first["ErrorMessage"] == "{}"
    assert first["Output"] == "{}"
    assert json.loads(first["Input"])  # JSON inside a string
    clock.advance(1.5)
    assert meta()["Status"] == "INITIALIZING"
    assert meta()["StartTime"] != ""
    assert meta()["EndTime"] == ""
    clock.advance(1.0)
    assert meta()["Status"] == "RUNNING"
    assert meta()["EndTime"] == ""
    clock.advance(2.0)
    done = meta()
    assert done["Status"] == "SUCCESS"
    assert done["EndTime"] > done["StartTime"] > ""
    assert json.loads(done["Output"])
    assert sim.stats(timeline=False)["polls"][run_uuid] == 7  # one per call above


def test_metadata_has_every_sdk_field() -> None:
    models = pytest.importorskip("tencentcloud.omics.v20221128.models")
    sim, clock = make(SimulatorConfig(runs=3, seed=2))
    clock.advance(3)
    meta = sim.call("GetRunStatus", {"RunUuid": sim.run_uuids[0]})["Metadata"]
    expected = {name[1:] for name in vars(models.RunMetadata())}
    assert set(meta) == expected
    run = sim.call("DescribeRuns", {"Limit": 1})["Runs"][0]
    assert set(run) == {name[1:] for name in vars(models.Run())}
    assert set(run["ExecutionTime"]) == {"SubmitTime", "StartTime", "EndTime"}


def test_forever_hung_and_unknown_detour() -> None:
    config = SimulatorConfig(
        runs=30,
        seed=4,
        kinds={"forever": 1, "hung": 1, "finishing": 1},
        hung_status="INITIALIZING",
        unknown_status="PAUSED_BY_ADMIN",
        unknown_fraction=1.0,
        outcomes={"SUCCESS": 1},
    )
    sim, clock = make(config)
    clock.advance(1_000_000)
    kinds = Counter(sim.snapshot(u).kind for u in sim.run_uuids)
    assert set(kinds) == {"forever", "hung", "finishing"}
    for run_uuid in sim.run_uuids:
        snap = sim.snapshot(run_uuid)
        statuses = [t.status for t in sim.timeline(run_uuid)]
        if snap.kind == "forever":
            assert snap.status == "RUNNING"
            assert not snap.terminal
            assert statuses == ["QUEUED", "INITIALIZING", "RUNNING"]
        elif snap.kind == "hung":
            assert snap.status == "INITIALIZING"
            assert statuses == ["QUEUED", "INITIALIZING"]
        else:
            assert statuses == [
                "QUEUED",
                "INITIALIZING",
                "RUNNING",
                "PAUSED_BY_ADMIN",
                "RUNNING",
                "SUCCESS",
            ]


def test_flapping_runs_change_at_random_bounded_intervals_forever() -> None:
    config = SimulatorConfig(
        runs=5,
        seed=5,
        kinds={"flapping": 1},
        flap_period_seconds=2.0,
        queued_seconds=(0, 0.1),
        initializing_seconds=(0, 0.1),
    )
    sim, clock = make(config)
    clock.advance(200)
    for run_uuid in sim.run_uuids:
        changes = sim.timeline(run_uuid)
        flaps = [t for t in changes if t.previous in ("RUNNING", "PAUSED")]
        assert len(flaps) > 80
        gaps = [b.at - a.at for a, b in itertools.pairwise(flaps)]
        assert min(gaps) > 1.0
        assert max(gaps) < 3.0
        assert len({round(g, 3) for g in gaps}) > 10  # random, not periodic
        assert all(t.previous != t.status for t in changes)
        assert changes[-1].status == sim.status(run_uuid)
    # The status at any past moment is the last change before it.
    run_uuid = sim.run_uuids[0]
    history = sim.timeline(run_uuid)
    replay, replay_clock = make(config)
    for _step in range(1, 400):
        replay_clock.advance(0.5)
        now = replay_clock.wall()
        expected = [t.status for t in history if t.at <= now][-1]
        assert replay.status(run_uuid) == expected


def test_describe_runs_filters_and_paging() -> None:
    config = SimulatorConfig(
        runs=60, seed=6, runs_per_group=10, applications=2, project_ids=("prj-a", "prj-b")
    )
    sim, clock = make(config)
    clock.advance(5)
    # Projects alternate by run group: groups 0, 2, 4 in prj-a.
    everything = sim.call("DescribeRuns", {"Limit": 100})
    assert everything["TotalCount"] == 30
    assert {r["ProjectId"] for r in everything["Runs"]} == {"prj-a"}
    in_b = sim.call("DescribeRuns", {"ProjectId": "prj-b", "Limit": 100})
    assert in_b["TotalCount"] == 30
    assert {r["ProjectId"] for r in in_b["Runs"]} == {"prj-b"}
    assert sim.call("DescribeRuns", {"ProjectId": "prj-zzz"}) == {"TotalCount": 0, "Runs": []}
    # Default Limit 10; paging visits everything once, newest first.
    first = sim.call("DescribeRuns", {})
    assert len(first["Runs"]) == 10
    assert first["TotalCount"] == 30
    seen: list[str] = []
    for offset in range(0, 30, 7):
        page = sim.call("DescribeRuns", {"Limit": 7, "Offset": offset})
        seen += [r["RunUuid"] for r in page["Runs"]]
    assert seen == [r["RunUuid"] for r in everything["Runs"]]
    assert seen == [u for u in reversed(sim.run_uuids) if u in set(seen)]
    assert sim.call("DescribeRuns", {"Offset": 30})["Runs"] == []

    runs = everything["Runs"]
    groups = sorted({r["RunGroupId"] for r in runs})
    # Values ORed within a filter.
    two = sim.call(
        "DescribeRuns", {"Limit": 100, "Filters": [{"Name": "RunGroupId", "Values": groups[:2]}]}
    )
    assert two["TotalCount"] == 20
    # Filters ANDed.
    statuses = Counter(r["Status"] for r in runs if r["RunGroupId"] == groups[0])
    status, count = statuses.most_common(1)[0]
    both = sim.call(
        "DescribeRuns",
        {
            "Limit": 100,
            "Filters": [
                {"Name": "RunGroupId", "Values": [groups[0]]},
                {"Name": "Status", "Values": [status]},
            ],
        },
    )
    assert both["TotalCount"] == count
    assert all(r["Status"] == status and r["RunGroupId"] == groups[0] for r in both["Runs"])
    by_uuid = sim.call(
        "DescribeRuns",
        {"Filters": [{"Name": "RunUuid", "Values": [runs[3]["RunUuid"], runs[5]["RunUuid"]]}]},
    )
    assert [r["RunUuid"] for r in by_uuid["Runs"]] == [runs[3]["RunUuid"], runs[5]["RunUuid"]]
    app = runs[0]["ApplicationId"]
    by_app = sim.call(
        "DescribeRuns", {"Limit": 100, "Filters": [{"Name": "ApplicationId", "Values": [app]}]}
    )
    assert 0 < by_app["TotalCount"] < 30
    assert all(r["ApplicationId"] == app for r in by_app["Runs"])
    udid = runs[4]["UserDefinedId"]
    by_udid = sim.call("DescribeRuns", {"Filters": [{"Name": "UserDefinedId", "Values": [udid]}]})
    assert [r["UserDefinedId"] for r in by_udid["Runs"]] == [udid]


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [
        ({"Limit": 101}, "InvalidParameterValue", "Limit"),
        ({"Limit": 0}, "InvalidParameterValue", "Limit"),
        ({"Limit": "10"}, "InvalidParameter", "Limit"),
        ({"Offset": -1}, "InvalidParameterValue", "Offset"),
        ({"Filters": [{"Name": "Owner", "Values": ["x"]}]}, "InvalidParameterValue", "Owner"),
        ({"Filters": [{"Name": "Status", "Values": []}]}, "InvalidParameterValue", "empty"),
        ({"Filters": [{"Name": "Status", "Values": "RUNNING"}]}, "InvalidParameter", "Values"),
        ({"Filters": "Status=RUNNING"}, "InvalidParameter", "Filters"),
        (
            {"Filters": [{"Name": "RunUuid", "Values": [f"u{i}" for i in range(6)]}]},
            "InvalidParameterValue",
            "at most 5 values",
        ),
        ({"Page": 2}, "UnknownParameter", "Page"),
    ],
)
def test_describe_runs_refusals(params: dict[str, Any], code: str, words: str) -> None:
    sim, _ = make(SimulatorConfig(runs=3, max_filter_values=5))
    with pytest.raises(ApiError) as caught:
        sim.call("DescribeRuns", params)
    assert caught.value.code == code
    assert words in caught.value.message
    # Exactly at the limit is fine.
    ok = sim.call("DescribeRuns", {"Filters": [{"Name": "RunUuid", "Values": sim.run_uuids}]})
    assert ok["TotalCount"] == 3


def test_get_run_status_refusals() -> None:
    sim, _ = make(SimulatorConfig(runs=2, project_ids=("prj-a", "prj-b"), runs_per_group=1))
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "MissingParameter"),
        ({"RunUuid": ""}, "MissingParameter"),
        ({"RunUuid": 7}, "InvalidParameter"),
        ({"RunUuid": "84232c68-a016-4668-b2e3-168a175d6f29"}, "ResourceNotFound.RunNotExist"),
        # Run 1 lives in prj-b: not found in the default project, nor in another one.
        ({"RunUuid": sim.run_uuids[1]}, "ResourceNotFound.RunNotExist"),
        ({"RunUuid": sim.run_uuids[0], "ProjectId": "prj-b"}, "ResourceNotFound.RunNotExist"),
    ]
    for params, code in cases:
        with pytest.raises(ApiError) as caught:
            sim.call("GetRunStatus", params)
        assert caught.value.code == code, params
    found = sim.call("GetRunStatus", {"RunUuid": sim.run_uuids[1], "ProjectId": "prj-b"})
    assert found["Metadata"]["RunId"] == sim.run_uuids[1]


def _walk_failure(sim: Simulator, run_uuid: str) -> tuple[dict[str, Any], list[str]]:
    """The failed task, found the way a client would: follow failed sub-workflows and
    scatters with ``Path = "/" + RunId`` (Tencent's convention); children carry that id as
    ParentId."""
    path, visited, parent = "/", [], run_uuid
    while True:
        visited.append(path)
        calls = sim.call("GetRunCalls", {"RunUuid": run_uuid, "Path": path})["Calls"]
        assert {c["ParentId"] for c in calls} == {parent}
        failed = [c for c in calls if c["Status"] == "EXECUTOR_ERROR"]
        assert len(failed) == 1, calls
        if failed[0]["RunType"] == "Task":
            return failed[0], visited
        assert failed[0]["RunType"] in ("Workflow", "Scatter")
        parent = failed[0]["RunId"]
        path = "/" + parent


def test_failed_run_has_one_failed_task_reachable_through_paths_with_logs() -> None:
    sim, clock = make(SimulatorConfig(runs=0, seed=8))
    run_uuid = sim.submit_run(outcome="EXECUTOR_ERROR", durations=(0.5, 0.5, 2.0))
    assert sim.call("GetRunCalls", {"RunUuid": run_uuid})["Calls"] == []  # QUEUED: none yet
    clock.advance(3.5)
    assert sim.status(run_uuid) == "EXECUTOR_ERROR"
    meta = sim.call("GetRunStatus", {"RunUuid": run_uuid})["Metadata"]
    failures = json.loads(meta["ErrorMessage"])
    assert failures[0]["message"] == "Workflow failed"
    task, visited = _walk_failure(sim, run_uuid)
    assert task["JobId"]
    assert task["Stderr"].endswith("stderr")
    assert json.loads(task["ErrorMessage"])[0]["message"] in failures[0]["causedBy"][0]["message"]
    stderr = sim.call(
        "GetRunJobLog",
        {"RunUuid": run_uuid, "JobId": task["JobId"], "LogType": "stderr", "Path": visited[-1]},
    )["Content"]
    assert stderr.rstrip().splitlines()[-1].split()[1] == "ERROR"
    stdout = sim.call(
        "GetRunJobLog", {"RunUuid": run_uuid, "JobId": task["JobId"], "LogType": "stdout"}
    )["Content"]
    assert "ERROR" not in stdout
    assert stdout


def test_nested_failures_are_common_and_successful_runs_complete_every_call() -> None:
    sim, clock = make(SimulatorConfig(runs=0, seed=9))
    failed = [sim.submit_run(outcome="EXECUTOR_ERROR", durations=(0, 0, 1)) for _ in range(12)]
    ok = sim.submit_run(outcome="SUCCESS", durations=(0, 0, 1))
    clock.advance(2)
    depths = Counter(len(_walk_failure(sim, u)[1]) for u in failed)
    assert depths[3] >= 4  # a shard of the scatter inside the sub-workflow: a third Path
    calls = sim.call("GetRunCalls", {"RunUuid": ok, "Path": "/"})["Calls"]
    assert {c["Status"] for c in calls} == {"COMPLETE"}
    assert [c["RunType"] for c in calls] == ["Scatter", "Task", "Workflow", "Task"]
    fastqc = next(c for c in calls if c["CallName"].endswith(".fastqc"))
    shards = sim.call("GetRunCalls", {"RunUuid": ok, "Path": "/" + fastqc["RunId"]})["Calls"]
    assert [c["ScatterIndex"] for c in shards] == ["0", "1"]
    assert {c["ParentId"] for c in shards} == {fastqc["RunId"]}
    sub = next(c for c in calls if c["RunType"] == "Workflow")
    inner = sim.call("GetRunCalls", {"RunUuid": ok, "Path": "/" + sub["RunId"]})["Calls"]
    assert [c["RunType"] for c in inner] == ["Scatter", "Task"]
    assert all(c["ParentId"] == sub["RunId"] for c in inner)
    deepest = sim.call("GetRunCalls", {"RunUuid": ok, "Path": "/" + inner[0]["RunId"]})["Calls"]
    assert len(deepest) == 3
    assert len({c["RunId"] for c in calls + inner + deepest}) == 4 + 2 + 3


def test_job_log_refusals() -> None:
    sim, _clock = make(SimulatorConfig(runs=1, seed=1))
    run_uuid = sim.run_uuids[0]
    base = {"RunUuid": run_uuid, "JobId": "job-0000", "LogType": "stdout"}
    for params, code in [
        ({**base, "JobId": ""}, "MissingParameter"),
        ({**base, "LogType": "both"}, "InvalidParameterValue"),
        (base, "ResourceNotFound"),
    ]:
        with pytest.raises(ApiError) as caught:
            sim.call("GetRunJobLog", params)
        assert caught.value.code == code


def test_running_run_shows_progress_in_calls() -> None:
    sim, clock = make(SimulatorConfig(runs=0))
    run_uuid = sim.submit_run(outcome="SUCCESS", durations=(0, 0, 10))
    seen = []
    for _ in range(10):
        clock.advance(1.0)
        calls = sim.call("GetRunCalls", {"RunUuid": run_uuid})["Calls"]
        seen.append((len(calls), sum(c["Status"] == "RUNNING" for c in calls)))
    counts = [n for n, _ in seen]
    assert counts == sorted(counts)
    assert counts[0] < counts[-1]
    assert all(running >= 1 for _, running in seen[:-1])


def test_submitted_runs_and_memory_stays_small() -> None:
    sim, clock = make(SimulatorConfig(runs=2))
    new = sim.submit_run(run_group_id="rg-new", user_defined_id="S-1", kind="forever")
    assert sim.run_uuids[-1] == new
    assert sim.status(new) == "QUEUED"
    found = sim.call("DescribeRuns", {"Filters": [{"Name": "RunGroupId", "Values": ["rg-new"]}]})
    assert [r["UserDefinedId"] for r in found["Runs"]] == ["S-1"]
    with pytest.raises(ValueError, match="already exists"):
        sim.submit_run(run_uuid=new)
    with pytest.raises(ValueError, match="unknown kind"):
        sim.submit_run(kind="zombie")

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        big, clock = make(SimulatorConfig(runs=10_000, kinds={"forever": 1}))
        clock.advance(3600)
        for run_uuid in big.run_uuids[::50]:
            big.status(run_uuid)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 10_000 * 600  # 100,000 runs in well under 100 MB


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"runs": -1}, "runs"),
        ({"running_seconds": (5, 1)}, "running_seconds"),
        ({"kinds": {"zombie": 1}}, "unknown"),
        ({"outcomes": {"SUCCESS": 0}}, "positive sum"),
        ({"fault_rate": 1.5}, "fault_rate"),
        ({"fault_kinds": ("gremlins",)}, "gremlins"),
        ({"rate_limits": {"GetRunStats": 5}}, "GetRunStats"),
        ({"flap_statuses": ("RUNNING",)}, "flap_statuses"),
        ({"secret_id": "AKIDx"}, "go together"),
        ({"project_ids": ()}, "project_ids"),
    ],
)
def test_config_is_validated(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        SimulatorConfig(**options)


def test_per_action_limits_and_given_credentials() -> None:
    config = SimulatorConfig(
        runs=0, rate_limits={"DescribeRuns": 2}, secret_id="AKIDsim", secret_key="key", token="t"
    )
    sim, _ = make(config)
    assert sim.rate_limit("DescribeRuns") == 2
    assert sim.rate_limit("GetRunStatus") == 20
    assert (sim.secret_id, sim.secret_key, sim.token) == ("AKIDsim", "key", "t")
    sim.set_rate_limit(7)
    assert sim.stats(timeline=False)["rate_limits"] == dict.fromkeys(
        ("GetRunStatus", "DescribeRuns", "GetRunCalls", "GetRunJobLog"), 7
    )
    with pytest.raises(ValueError, match="unknown action"):
        sim.set_rate_limit(1, action="Nope")
