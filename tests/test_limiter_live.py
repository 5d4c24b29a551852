"""The real client and limiter against the simulator: the server's view of the budget."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from support import make_client

from watcher.config import Settings
from watcher.connect import build_limiters
from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.errors import OmicsError, Throttled
from watcher.omics.limiter import PacingLimiter
from watcher.polling.common import STATUS_GROUP
from watcher.service.metrics import ApiRequestMetrics, Metrics
from watcher.simulator import Simulator, SimulatorConfig, running_simulator


def client_for(
    sim: Simulator, session: aiohttp.ClientSession, limiter: PacingLimiter
) -> OmicsClient:
    return make_client(sim, session, limiters={"default": limiter})


async def hammer(
    client: OmicsClient, runs: list[str], *, callers: int, seconds: float
) -> dict[str, int]:
    """``callers`` tasks calling GetRunStatus back to back for ``seconds``."""
    outcomes = {"ok": 0, "throttled": 0, "other": 0}

    async def caller(i: int) -> None:
        while True:
            try:
                await client.get_run_status(runs[i % len(runs)])
                outcomes["ok"] += 1
            except Throttled:
                outcomes["throttled"] += 1
            except OmicsError:
                outcomes["other"] += 1

    tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()  # callers still queued for a permit just stop waiting
    await asyncio.gather(*tasks, return_exceptions=True)
    return outcomes


async def test_200_callers_never_exceed_20_in_any_second_at_the_server(
    session: aiohttp.ClientSession,
) -> None:
    async with running_simulator(SimulatorConfig(runs=50, kinds={"forever": 1.0})) as sim:
        limiter = PacingLimiter(20, group=STATUS_GROUP)  # as the daemon paces GetRunStatus
        client = client_for(sim, session, limiter)
        outcomes = await hammer(client, sim.run_uuids, callers=200, seconds=10)
        stats = sim.stats(timeline=False)
        assert stats["max_window_arrivals"]["GetRunStatus"] <= 20
        assert stats["throttled_total"] == 0
        assert outcomes["throttled"] == outcomes["other"] == 0
        # The sustained rate is a benchmark figure (benchmarks/limiter_bench.py); here only a
        # floor loose enough for a busy machine: the limiter must not be far below budget.
        assert outcomes["ok"] >= 10 * 15


@pytest.mark.parametrize("group", [1, STATUS_GROUP])
async def test_a_throttling_server_makes_the_client_slow_down_not_hammer(
    session: aiohttp.ClientSession, group: int
) -> None:
    # Another tool is using most of the account's budget: the server admits only 6/s.
    config = SimulatorConfig(runs=20, kinds={"forever": 1.0}, rate_limit=6)
    async with running_simulator(config) as sim:
        limiter = PacingLimiter(20, group=group)
        client = client_for(sim, session, limiter)
        outcomes = await hammer(client, sim.run_uuids, callers=50, seconds=8)
        assert limiter.rate < 20
        # A client that ignored throttling would send ~160 requests in 8 s and have most of
        # them refused; this one backs off so that most of what it sends is admitted.
        assert outcomes["throttled"] < outcomes["ok"]
        assert outcomes["ok"] + outcomes["throttled"] < 8 * 20 * 0.75


async def test_actions_sharing_a_limiter_are_each_timed_under_their_own_name(
    session: aiohttp.ClientSession,
) -> None:
    # The daemon gives each action its own limiter (Tencent counts per action) ...
    limiters = build_limiters(Settings(polling={"calls_rate_per_second": 2}))
    assert limiters["GetRunCalls"] is not limiters["GetRunJobLog"]
    # ... but a limiter may pace several (one at 2/s here, so the second request surely
    # waits): each request's latency and wait carry its own action, never the limiter's.
    shared = PacingLimiter(2)
    limiters = {**limiters, "GetRunCalls": shared, "GetRunJobLog": shared}
    metrics = Metrics()
    async with running_simulator(SimulatorConfig(runs=0)) as sim:
        run_uuid = sim.submit_run(outcome="EXECUTOR_ERROR", durations=(0.05, 0.05, 0.1))
        client = OmicsClient(
            session=session,
            endpoint=sim.endpoint,
            region="ap-guangzhou",
            credentials=StaticProvider(Credential(sim.secret_id, sim.secret_key), name="test"),
            limiters=limiters,
            timeout=5,
            observer=ApiRequestMetrics(metrics, actions=["GetRunCalls", "GetRunJobLog"]),
        )
        while sim.status(run_uuid) != "EXECUTOR_ERROR":
            await asyncio.sleep(0.05)
        calls = await client.get_run_calls(run_uuid)
        job_id = next(call.JobId for call in calls if call.JobId)
        await client.get_run_job_log(run_uuid, job_id)

    def sample(name: str, action: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"action": action})

    assert sample("omics_watcher_api_request_seconds_count", "GetRunCalls") == 1
    assert sample("omics_watcher_api_request_seconds_count", "GetRunJobLog") == 1
    assert (sample("omics_watcher_limiter_wait_seconds_total", "GetRunCalls") or 0) < 0.2
    assert (sample("omics_watcher_limiter_wait_seconds_total", "GetRunJobLog") or 0) > 0.2
    assert sample("omics_watcher_api_request_seconds_count", "default") is None


async def test_far_from_the_server_the_new_rule_still_never_exceeds_20_in_any_second(
    session: aiohttp.ClientSession,
) -> None:
    # A route of 150 ± 10 ms, most of it on the way in: the server counts each request on
    # arrival, after its own uplink. The limiter's window credit (its fastest round trip seen)
    # must never let 21 arrive within one second, whatever the jitter did.
    config = SimulatorConfig(
        runs=50, kinds={"forever": 1.0}, rtt_ms=150, jitter_ms=10, uplink_share=0.9
    )
    async with running_simulator(config) as sim:
        limiter = PacingLimiter(20, group=STATUS_GROUP)  # as the daemon paces GetRunStatus
        client = client_for(sim, session, limiter)
        outcomes = await hammer(client, sim.run_uuids, callers=40, seconds=9)
        stats = sim.stats(timeline=False)
        assert limiter.credit > 0.1  # the new rule was in force, not the old one
        assert stats["max_window_arrivals"]["GetRunStatus"] <= 20
        assert stats["throttled_total"] == 0
        assert outcomes["throttled"] == outcomes["other"] == 0
