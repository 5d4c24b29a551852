"""What the simulator models for bursts and distance: run groups that move together,
DescribeRuns answers that lag GetRunStatus, complete ``Run`` objects, Tencent's Path
convention for GetRunCalls/GetRunJobLog, and a network delay counted where Tencent counts.

Lifecycle tests run in-process with a fake clock (exact); the network tests measure real
round trips from a client against a serving simulator.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from support import FakeClock

from watcher.simulator import ApiError, Simulator, SimulatorConfig, running_simulator
from watcher.simulator.calls import subworkflow_id
from watcher.simulator.metadata import rfc3339

START = datetime.fromtimestamp(1_800_000_000, UTC)
RFC3339_BEIJING = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$")
RUN_FIELDS = [
    "RunUuid",
    "ProjectId",
    "ApplicationId",
    "RunGroupId",
    "EnvironmentId",
    "UserDefinedId",
    "TableId",
    "TableRowUuid",
    "Status",
    "Input",
    "Option",
    "ExecutionTime",
    "Cache",
    "ErrorMessage",
    "CreateTime",
    "UpdateTime",
]


def make(config: SimulatorConfig) -> tuple[Simulator, FakeClock]:
    clock = FakeClock(START)
    return Simulator(config, monotonic=clock.monotonic, wall=clock.wall), clock


def change_times(sim: Simulator, uuids: list[str]) -> dict[str, list[float]]:
    """Wall times of every change into each status, over the given runs."""
    out: dict[str, list[float]] = defaultdict(list)
    wanted = set(uuids)
    for t in sim.timeline():
        if t.run_uuid in wanted and t.previous is not None:
            out["end" if t.status not in ("INITIALIZING", "RUNNING") else t.status].append(t.at)
    return out


def list_all(sim: Simulator, **params: Any) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = sim.call("DescribeRuns", {"Limit": 100, **params})["Runs"]
    return runs


# -- run groups move together -----------------------------------------------------------------


def test_generated_groups_move_within_their_spread() -> None:
    config = SimulatorConfig(
        runs=60,
        runs_per_group=30,
        group_spread_seconds=2.0,
        queued_seconds=(1.0, 20.0),
        initializing_seconds=(1.0, 20.0),
        running_seconds=(5.0, 60.0),
    )
    sim, clock = make(config)
    clock.advance(200)
    by_group: dict[str, list[str]] = defaultdict(list)
    for run in list_all(sim):
        by_group[run["RunGroupId"]].append(run["RunUuid"])
    assert sorted(len(v) for v in by_group.values()) == [30, 30]
    firsts = []
    for uuids in by_group.values():
        times = change_times(sim, uuids)
        assert set(times) == {"INITIALIZING", "RUNNING", "end"}
        for status, at in times.items():
            assert len(at) == 30
            assert max(at) - min(at) < 2.0, status  # the whole group within the spread
        firsts.append(min(times["end"]))
        outcomes = {sim.status(u) for u in uuids}
        assert "SUCCESS" in outcomes
        assert outcomes & {"EXECUTOR_ERROR", "CANCELED"}  # some fail (the default mix)
    assert abs(firsts[0] - firsts[1]) > 2.0  # groups have their own durations
    # Same seed, same burst.
    again, clock2 = make(config)
    clock2.advance(200)
    assert [t.at - clock.epoch for t in sim.timeline()] == [
        t.at - clock2.epoch for t in again.timeline()
    ]


def test_a_submitted_group_queues_starts_and_finishes_within_the_spread() -> None:
    sim, clock = make(SimulatorConfig(runs=5))
    clock.advance(3)
    uuids = sim.submit_group(200, spread_seconds=1.5, durations=(1.0, 2.0, 10.0))
    assert len(set(uuids)) == 200
    assert {sim.group_of(u) for u in uuids} == {sim.group_of(uuids[0])}
    assert sim.group_of(uuids[0]) not in {sim.group_of(u) for u in sim.run_uuids[:5]}
    assert {sim.status(u) for u in uuids} == {"QUEUED"}  # all queued at once
    clock.advance(20)
    times = change_times(sim, uuids)
    t0 = clock.epoch + 3
    for status, low in (("INITIALIZING", 1.0), ("RUNNING", 3.0), ("end", 13.0)):
        offsets = [t - t0 for t in times[status]]
        assert len(offsets) == 200
        assert low <= min(offsets), status
        assert max(offsets) < low + 1.5, status
        assert max(offsets) - min(offsets) > 1.0  # spread out, not one instant
    outcomes = {sim.status(u) for u in uuids}
    assert {"SUCCESS", "EXECUTOR_ERROR"} <= outcomes
    listed = list_all(sim, Filters=[{"Name": "RunGroupId", "Values": [sim.group_of(uuids[0])]}])
    assert len(listed) == 100
    with pytest.raises(ValueError, match="count"):
        sim.submit_group(0)


async def test_group_hook_over_http(session: aiohttp.ClientSession) -> None:
    async with running_simulator(SimulatorConfig(runs=0)) as sim:
        body = {"count": 5, "spread_seconds": 0.5, "durations": [0, 0, 1], "outcome": "SUCCESS"}
        async with session.post(sim.endpoint + "/_sim/groups", json=body) as resp:
            assert resp.status == 201
            made = await resp.json()
        assert made["run_uuids"] == sim.run_uuids
        assert {sim.group_of(u) for u in made["run_uuids"]} == {made["run_group_id"]}
        async with session.post(sim.endpoint + "/_sim/groups", json={"count": "x"}) as resp:
            assert resp.status == 400


# -- DescribeRuns lags GetRunStatus -------------------------------------------------------------


def test_the_list_shows_runs_as_they_were_lag_seconds_ago() -> None:
    sim, clock = make(SimulatorConfig(runs=0, list_lag_seconds=2.0))
    run = sim.submit_run(outcome="EXECUTOR_ERROR", durations=(1.0, 1.0, 3.0))
    seen: list[tuple[str, str]] = []
    for _ in range(16):
        clock.advance(0.5)
        (item,) = list_all(sim)
        live = sim.call("GetRunStatus", {"RunUuid": run})["Metadata"]["Status"]
        seen.append((item["Status"], live))
        # Exactly the status of two seconds ago, with the update time of that status.
        past = [t for t in sim.timeline(run) if t.at <= clock.wall() - 2.0]
        assert item["Status"] == (past[-1].status if past else "QUEUED")
        assert item["UpdateTime"] == rfc3339(past[-1].at if past else clock.epoch)
        # The Status filter sees the list's view too.
        found = list_all(sim, Filters=[{"Name": "Status", "Values": [item["Status"]]}])
        assert [r["RunUuid"] for r in found] == [run]
    lists, lives = [s for s, _ in seen], [s for _, s in seen]
    assert lists[4:] == lives[:-4]  # four half-second steps behind
    assert lists[-1] == "EXECUTOR_ERROR"
    (item,) = list_all(sim)
    assert "exited with return code 137" in item["ErrorMessage"]
    assert item["ExecutionTime"]["EndTime"] == rfc3339(clock.epoch + 5.0)
    # Changed at runtime; 0 gives the present.
    sim.set_list_lag(0)
    clock.advance(0.1)
    assert list_all(sim)[0]["Status"] == sim.status(run)
    with pytest.raises(ValueError, match="lag"):
        sim.set_list_lag(-1)


async def test_list_lag_hook(session: aiohttp.ClientSession) -> None:
    async with running_simulator(SimulatorConfig(runs=1)) as sim:
        async with session.post(sim.endpoint + "/_sim/list-lag", json={"seconds": 3}) as resp:
            assert (await resp.json()) == {"list_lag_seconds": 3.0}
        assert sim.stats(timeline=False)["list_lag_seconds"] == 3.0


# -- complete Run objects ------------------------------------------------------------------------


def test_run_objects_carry_every_field_with_beijing_whole_second_times() -> None:
    sim, clock = make(SimulatorConfig(runs=0))
    clock.advance(0.25)  # creation off a whole second: times are still whole seconds
    done = sim.submit_run(outcome="SUCCESS", durations=(1.3, 1.1, 2.2))
    queued = sim.submit_run(kind="forever", durations=(60, 1, 1))
    clock.advance(9.0)
    items = {r["RunUuid"]: r for r in list_all(sim)}
    for run_uuid, item in items.items():
        assert list(item) == RUN_FIELDS
        assert set(item["ExecutionTime"]) == {"SubmitTime", "StartTime", "EndTime"}
        assert set(item["Option"]) >= {"FailureMode", "UseCallCache", "FinalWorkflowOutputsDir"}
        assert set(item["Cache"]) == {"CacheClearDelay", "CacheClearTime", "CacheCleared"}
        json.loads(item["Input"])
        for value in (item["CreateTime"], item["UpdateTime"], item["ExecutionTime"]["SubmitTime"]):
            assert RFC3339_BEIJING.match(value), value
        # UpdateTime: the last status change, as the list shows it.
        last = sim.timeline(run_uuid)[-1]
        assert item["UpdateTime"] == rfc3339(last.at)
        assert item["Status"] == last.status
    assert items[done]["Status"] == "SUCCESS"
    assert RFC3339_BEIJING.match(items[done]["ExecutionTime"]["EndTime"])
    assert items[done]["ErrorMessage"] == ""
    assert items[queued]["UpdateTime"] == items[queued]["CreateTime"]
    assert items[queued]["ExecutionTime"]["StartTime"] == ""


async def test_the_official_sdk_knows_every_run_field() -> None:
    pytest.importorskip("tencentcloud.omics")
    from tencentcloud.omics.v20221128 import models

    model_fields = [name.lstrip("_") for name in vars(models.Run())]
    assert model_fields == RUN_FIELDS
    async with running_simulator(SimulatorConfig(runs=3)) as sim:
        items = sim.call("DescribeRuns", {})["Runs"]
        response = models.DescribeRunsResponse()
        response._deserialize({"TotalCount": 3, "Runs": items, "RequestId": "r"})
        assert [r.RunUuid for r in response.Runs] == [i["RunUuid"] for i in items]
        assert response.Runs[0].ExecutionTime.SubmitTime.endswith("+08:00")


# -- GetRunCalls and GetRunJobLog: Path = "/" + RunId ----------------------------------------


def test_paths_name_run_ids_of_workflows_and_scatters_only() -> None:
    sim, clock = make(SimulatorConfig(runs=0))
    run = sim.submit_run(outcome="SUCCESS", durations=(0, 0, 1))
    early = sim.submit_run(outcome="SUCCESS", durations=(0, 0, 100))
    clock.advance(2)

    def calls(run_uuid: str, path: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = sim.call("GetRunCalls", {"RunUuid": run_uuid, "Path": path})[
            "Calls"
        ]
        return result

    def refused(action: str, params: dict[str, Any]) -> str:
        with pytest.raises(ApiError) as caught:
            sim.call(action, params)
        return caught.value.code

    root = calls(run, "/")
    assert {c["ParentId"] for c in root} == {run}
    assert calls(run, "") == root  # an empty Path is the root
    containers = [c for c in root if c["RunType"] in ("Workflow", "Scatter")]
    task = next(c for c in root if c["RunType"] == "Task")
    sub = next(c for c in containers if c["RunType"] == "Workflow")
    inner = calls(run, "/" + sub["RunId"])
    scatter = next(c for c in inner if c["RunType"] == "Scatter")
    shards = calls(run, "/" + scatter["RunId"])
    assert [c["ParentId"] for c in shards] == [scatter["RunId"]] * 3
    bad_paths = [
        "/" + sub["CallName"],  # the old CallName convention
        "/" + sub["CallName"].split(".")[-1],
        "/" + task["RunId"],  # a task lists nothing
        f"/{sub['RunId']}/{scatter['RunId']}",  # one RunId, never a chain
        sub["RunId"],  # no leading slash
        "/" + run,
        "/nope",
    ]
    for path in bad_paths:
        assert refused("GetRunCalls", {"RunUuid": run, "Path": path}) == "InvalidParameterValue"
    # A container is there once it started: before that its RunId names nothing.
    first = calls(early, "/")[0]
    assert first["RunType"] == "Scatter"
    assert calls(early, "/" + first["RunId"])  # the running fastqc scatter lists its shards
    assert not any(c["RunType"] == "Workflow" for c in calls(early, "/"))
    not_yet = "/" + subworkflow_id(early)
    assert refused("GetRunCalls", {"RunUuid": early, "Path": not_yet}) == "InvalidParameterValue"
    clock.advance(50)
    assert calls(early, not_yet)  # the same Path, once the sub-workflow started
    # GetRunJobLog: Path optional (JobId alone is enough), but it must name a level.
    shard = shards[1]
    params = {"RunUuid": run, "JobId": shard["JobId"], "LogType": "stdout"}
    for given in ({}, {"Path": "/"}, {"Path": ""}, {"Path": "/" + scatter["RunId"]}):
        assert (
            "haplotype_caller shard 1" in sim.call("GetRunJobLog", {**params, **given})["Content"]
        )
    for path in ("/" + sub["CallName"], "/" + shard["RunId"]):
        assert refused("GetRunJobLog", {**params, "Path": path}) == "InvalidParameterValue"


# -- the simulated network ------------------------------------------------------------------------


async def _round_trips(session: aiohttp.ClientSession, sim: Simulator, count: int) -> list[float]:
    from test_simulator import call

    out = []
    for _ in range(count):
        started = time.perf_counter()
        response = await call(session, sim, "GetRunStatus", {"RunUuid": sim.run_uuids[0]})
        out.append(time.perf_counter() - started)
        assert "Error" not in response
    return out


async def test_network_delay_is_measured_by_a_client(session: aiohttp.ClientSession) -> None:
    config = SimulatorConfig(runs=1, rtt_ms=150, jitter_ms=10)
    async with running_simulator(config) as sim:
        trips = await _round_trips(session, sim, 12)
        assert min(trips) >= 0.140
        assert 0.140 <= statistics.median(trips) < 0.250  # loose above: a busy machine
        assert sim.stats(timeline=False)["network"] == {
            "rtt_ms": 150.0,
            "jitter_ms": 10.0,
            "uplink_share": 0.5,
        }
        # Changed at runtime over HTTP (the hooks themselves are never delayed).
        hook = sim.endpoint + "/_sim/network"
        async with session.post(hook, json={"rtt_ms": 0}) as resp:
            assert (await resp.json())["network"]["rtt_ms"] == 0.0
        assert max(await _round_trips(session, sim, 5)) < 0.1
        async with session.post(hook, json={"rtt_ms": 10, "jitter_ms": 20}) as resp:
            assert resp.status == 400  # jitter larger than the round trip
    with pytest.raises(ValueError, match="uplink_share"):
        SimulatorConfig(uplink_share=1.5)


async def test_the_rate_limit_counts_a_request_when_it_arrives(
    session: aiohttp.ClientSession,
) -> None:
    """Limit 1/s. Request A leaves at 0 and, all its delay on the way in, arrives at 0.6 s;
    then the network becomes instant and B leaves at 1.1 s, arriving at 1.1 s: 0.5 s after
    A *arrived* (throttled), though 1.1 s after A was sent. C at 1.7 s is 1.1 s after A."""
    async with running_simulator(SimulatorConfig(runs=1, rate_limit=1)) as sim:
        from test_simulator import call

        params = {"RunUuid": sim.run_uuids[0]}
        sim.set_network(rtt_ms=600, uplink_share=1.0)
        sent = time.perf_counter()
        first = await call(session, sim, "GetRunStatus", params)
        assert "Error" not in first
        assert time.perf_counter() - sent >= 0.6
        sim.set_network()
        await asyncio.sleep(max(0.0, sent + 1.1 - time.perf_counter()))
        second = await call(session, sim, "GetRunStatus", params)
        assert second["Error"]["Code"] == "RequestLimitExceeded"
        await asyncio.sleep(max(0.0, sent + 1.75 - time.perf_counter()))
        third = await call(session, sim, "GetRunStatus", params)
        assert "Error" not in third
