"""The simulator's ``deny_action`` knob: a CAM policy without one action's permission."""

from __future__ import annotations

import aiohttp
import pytest

from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.errors import AuthError
from watcher.omics.limiter import PacingLimiter
from watcher.simulator import ApiError, Simulator, SimulatorConfig, running_simulator


async def test_denied_action_is_refused_over_http_and_others_still_work() -> None:
    async with (
        running_simulator(SimulatorConfig(runs=2, seed=1)) as sim,
        aiohttp.ClientSession() as session,
    ):
        client = OmicsClient(
            session=session,
            endpoint=sim.endpoint,
            region="ap-guangzhou",
            credentials=StaticProvider(Credential(sim.secret_id, sim.secret_key), name="t"),
            limiters={"default": PacingLimiter(20)},
            timeout=5,
        )
        sim.deny_action("DescribeRuns")
        with pytest.raises(AuthError) as info:
            await client.describe_runs(project_id=sim.project_id)
        assert info.value.code == "UnauthorizedOperation"
        assert "DescribeRuns" in info.value.message
        metadata = await client.get_run_status(sim.run_uuids[0], sim.project_id)
        assert metadata.Status
        sim.deny_action("DescribeRuns", "OperationDenied")
        with pytest.raises(AuthError) as info:
            await client.describe_runs(project_id=sim.project_id)
        assert info.value.code == "OperationDenied"
        sim.deny_action("DescribeRuns", None)
        total, _ = await client.describe_runs(project_id=sim.project_id)
        assert total == 2
        stats = sim.stats(timeline=False)
        assert stats["errors"] == {"UnauthorizedOperation": 1, "OperationDenied": 1}
        assert stats["max_window"]["DescribeRuns"] == 1  # refused requests used no budget


def test_deny_action_validates_and_in_process_calls_are_trusted() -> None:
    sim = Simulator(SimulatorConfig(runs=1, seed=1))
    with pytest.raises(ValueError, match="unknown action"):
        sim.deny_action("RunWorkflow")
    sim.deny_action("GetRunStatus")
    # call() is the trusted in-process path: no signature, no limit, no policy.
    assert sim.call("GetRunStatus", {"RunUuid": sim.run_uuids[0]})["Metadata"]["Status"]
    with pytest.raises(ApiError):
        sim.call("NoSuchAction")
