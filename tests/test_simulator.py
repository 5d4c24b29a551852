"""The simulator over HTTP: the official SDK as an independent peer, TC3 verification, the
sliding-window rate limit, every fault kind, the ``/_sim`` hooks and ``serve``.

Real servers on 127.0.0.1 only; requests are signed with ``watcher.omics.signing.sign`` and
sent with aiohttp, or made by the SDK's synchronous client in a worker thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from typing import Any

import aiohttp
import pytest

from watcher.omics.signing import sign
from watcher.simulator import Simulator, SimulatorConfig, running_simulator, serve
from watcher.simulator.faults import FaultInjector
from watcher.simulator.ratelimit import ActionLimiter

VERSION = "2022-11-28"
FAST: dict[str, Any] = {"queued_seconds": (0.0, 0.0), "initializing_seconds": (0.0, 0.0)}


def host_of(sim: Simulator) -> str:
    return sim.endpoint.removeprefix("http://")


def signed_headers(
    sim: Simulator,
    action: str,
    body: bytes,
    *,
    secret_id: str | None = None,
    secret_key: str | None = None,
    timestamp: int | None = None,
    host: str | None = None,
    content_type: str = "application/json",
    token: str | None = None,
    version: str = VERSION,
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": content_type,
        "X-TC-Action": action,
        "X-TC-Version": version,
        "X-TC-Timestamp": str(ts),
        "X-TC-Region": "ap-guangzhou",
        "Authorization": sign(
            secret_id=secret_id or sim.secret_id,
            secret_key=secret_key or sim.secret_key,
            host=host or host_of(sim),
            body=body,
            timestamp=ts,
            content_type=content_type,
        ),
    }
    if token is not None:
        headers["X-TC-Token"] = token
    return headers


async def call(
    session: aiohttp.ClientSession,
    sim: Simulator,
    action: str,
    params: dict[str, Any] | None = None,
    **sign_options: Any,
) -> dict[str, Any]:
    """The ``Response`` object of one signed call (asserting the envelope on the way)."""
    body = json.dumps(params or {}).encode()
    headers = signed_headers(sim, action, body, **sign_options)
    async with session.post(sim.endpoint + "/", data=body, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        response: dict[str, Any] = json.loads(await resp.read())["Response"]
    uuid.UUID(response["RequestId"])
    return response


def error_code(response: dict[str, Any]) -> str | None:
    error = response.get("Error")
    return None if error is None else str(error["Code"])


# --- the official SDK as a client ---------------------------------------------------------


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK (requests) honours proxy variables; loopback must not go through one."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def sdk_client(sim: Simulator, secret_id: str | None = None, secret_key: str | None = None) -> Any:
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.omics.v20221128 import omics_client

    profile = ClientProfile(
        httpProfile=HttpProfile(protocol="http", endpoint=host_of(sim), reqTimeout=10)
    )
    cred = credential.Credential(secret_id or sim.secret_id, secret_key or sim.secret_key)
    return omics_client.OmicsClient(cred, "ap-guangzhou", profile)


@pytest.mark.usefixtures("no_proxy")
async def test_official_sdk_reads_statuses_and_lists_runs() -> None:
    pytest.importorskip("tencentcloud.omics")
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
        TencentCloudSDKException,
    )
    from tencentcloud.omics.v20221128 import models

    config = SimulatorConfig(runs=25, seed=21, runs_per_group=10, **FAST)
    async with running_simulator(config) as sim:
        client = sdk_client(sim)

        def status(run_uuid: str, project_id: str | None = None) -> Any:
            req = models.GetRunStatusRequest()
            req.RunUuid = run_uuid
            if project_id is not None:
                req.ProjectId = project_id
            return client.GetRunStatus(req).Metadata

        for run_uuid in sim.run_uuids[:3]:
            meta = await asyncio.to_thread(status, run_uuid)
            assert meta.RunId == run_uuid
            assert meta.Status == sim.status(run_uuid)
            assert meta.SubmitTime.endswith("+08:00")
            assert meta.CallCached is False
        meta = await asyncio.to_thread(status, sim.run_uuids[0], sim.project_id)
        assert meta.RunId == sim.run_uuids[0]

        def describe(**filters: list[str]) -> Any:
            req = models.DescribeRunsRequest()
            req.Limit = 100
            req.Filters = []
            for name, values in filters.items():
                flt = models.Filter()
                flt.Name, flt.Values = name, values
                req.Filters.append(flt)
            return client.DescribeRuns(req)

        everything = await asyncio.to_thread(describe)
        assert everything.TotalCount == 25
        group = everything.Runs[0].RunGroupId
        in_group = await asyncio.to_thread(describe, RunGroupId=[group])
        assert 0 < in_group.TotalCount < 25
        assert {r.RunGroupId for r in in_group.Runs} == {group}
        assert in_group.Runs[0].ExecutionTime.SubmitTime.endswith("+08:00")
        picked = [r.RunUuid for r in everything.Runs[:2]]
        by_uuid = await asyncio.to_thread(describe, RunUuid=picked, RunGroupId=[group])
        assert {r.RunUuid for r in by_uuid.Runs} == {
            u for u in picked if u in {r.RunUuid for r in in_group.Runs}
        }

        with pytest.raises(TencentCloudSDKException) as caught:
            await asyncio.to_thread(status, str(uuid.uuid4()))
        assert caught.value.code == "ResourceNotFound.RunNotExist"
        with pytest.raises(TencentCloudSDKException) as caught:
            await asyncio.to_thread(status, sim.run_uuids[0], "prj-someone-else")
        assert caught.value.code == "ResourceNotFound.RunNotExist"

        client = sdk_client(sim, secret_id="AKIDunknown")
        with pytest.raises(TencentCloudSDKException) as caught:
            await asyncio.to_thread(status, sim.run_uuids[0])
        assert caught.value.code == "AuthFailure.SecretIdNotFound"
        client = sdk_client(sim, secret_key="not-the-key")
        with pytest.raises(TencentCloudSDKException) as caught:
            await asyncio.to_thread(status, sim.run_uuids[0])
        assert caught.value.code == "AuthFailure.SignatureFailure"
        stats = sim.stats(timeline=False)
        assert stats["signature_failures"] == 1
        assert stats["auth_failures"] == 2


@pytest.mark.usefixtures("no_proxy")
async def test_official_sdk_walks_calls_and_reads_logs() -> None:
    pytest.importorskip("tencentcloud.omics")
    from tencentcloud.omics.v20221128 import models

    async with running_simulator(SimulatorConfig(runs=0)) as sim:
        run_uuid = sim.submit_run(outcome="EXECUTOR_ERROR", durations=(0, 0, 0.2))
        await asyncio.sleep(0.3)
        client = sdk_client(sim)

        def calls(path: str) -> Any:
            req = models.GetRunCallsRequest()
            req.RunUuid, req.Path = run_uuid, path
            return client.GetRunCalls(req).Calls

        def log(job_id: str, path: str) -> str:
            req = models.GetRunJobLogRequest()
            req.RunUuid, req.JobId, req.LogType, req.Path = run_uuid, job_id, "stderr", path
            content: str = client.GetRunJobLog(req).Content
            return content

        path = "/"
        while True:
            failed = [c for c in await asyncio.to_thread(calls, path) if c.ErrorMessage != "{}"]
            if failed[0].RunType == "Task":
                break
            path = "/" + failed[0].RunId  # Tencent's convention: the RunId, not the CallName
        assert json.loads(failed[0].ErrorMessage)[0]["message"].startswith("Job ")
        assert "ERROR" in (await asyncio.to_thread(log, failed[0].JobId, path)).splitlines()[-1]


# --- the protocol -------------------------------------------------------------------------


async def test_envelope_and_request_shape_errors(session: aiohttp.ClientSession) -> None:
    async with running_simulator(SimulatorConfig(runs=2)) as sim:
        run_uuid = sim.run_uuids[0]
        ok = await call(session, sim, "GetRunStatus", {"RunUuid": run_uuid})
        assert ok["Metadata"]["RunId"] == run_uuid
        assert "Error" not in ok
        cases: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
            ("GetRunStatus", {}, {}, "MissingParameter"),
            ("GetRunStatus", {"RunUuid": run_uuid, "Extra": 1}, {}, "UnknownParameter"),
            ("RunWorkflow", {}, {}, "InvalidAction"),
            ("GetRunStatus", {"RunUuid": run_uuid}, {"version": "2020-01-01"}, "NoSuchVersion"),
        ]
        for action, params, options, code in cases:
            assert error_code(await call(session, sim, action, params, **options)) == code
        for body in (b"{not json", b"[1, 2]"):
            headers = signed_headers(sim, "GetRunStatus", body)
            async with session.post(sim.endpoint + "/", data=body, headers=headers) as resp:
                assert resp.headers["Content-Type"] == "application/json"
                answer = json.loads(await resp.read())["Response"]
            assert error_code(answer) == "InvalidParameter"
        assert sim.stats(timeline=False)["errors"]["MissingParameter"] == 1


async def test_signature_checks(session: aiohttp.ClientSession) -> None:
    async with running_simulator(SimulatorConfig(runs=1)) as sim:
        params = {"RunUuid": sim.run_uuids[0]}
        # The Content-Type is verified exactly as sent (here with a charset, signed as such).
        fine = await call(
            session, sim, "GetRunStatus", params, content_type="application/json; charset=utf-8"
        )
        assert error_code(fine) is None
        wrong_host = await call(
            session, sim, "GetRunStatus", params, host="omics.tencentcloudapi.com"
        )
        assert error_code(wrong_host) == "AuthFailure.SignatureFailure"
        stale = await call(session, sim, "GetRunStatus", params, timestamp=int(time.time()) - 301)
        assert error_code(stale) == "AuthFailure.SignatureExpire"
        unknown = await call(session, sim, "GetRunStatus", params, secret_id="AKIDnobody")
        assert error_code(unknown) == "AuthFailure.SecretIdNotFound"

        body = json.dumps(params).encode()
        headers = signed_headers(sim, "GetRunStatus", body)
        tampered = body.replace(b"}", b', "ProjectId": ""}')
        async with session.post(sim.endpoint + "/", data=tampered, headers=headers) as resp:
            answer = json.loads(await resp.read())["Response"]
        assert error_code(answer) == "AuthFailure.SignatureFailure"
        headers["Authorization"] = "Basic Zm9vOmJhcg=="
        async with session.post(sim.endpoint + "/", data=body, headers=headers) as resp:
            answer = json.loads(await resp.read())["Response"]
        assert error_code(answer) == "AuthFailure.InvalidAuthorization"
        # The SDK's unsigned-payload mode.
        headers = signed_headers(sim, "GetRunStatus", b"UNSIGNED-PAYLOAD")
        headers["X-TC-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        async with session.post(sim.endpoint + "/", data=body, headers=headers) as resp:
            assert error_code(json.loads(await resp.read())["Response"]) is None

        stats = sim.stats(timeline=False)
        assert stats["signature_failures"] == 2
        assert stats["auth_failures"] == 5


async def test_clock_skew_gives_signature_expire(session: aiohttp.ClientSession) -> None:
    async with running_simulator(SimulatorConfig(runs=1)) as sim:
        params = {"RunUuid": sim.run_uuids[0]}
        sim.set_clock_offset(-299)
        assert error_code(await call(session, sim, "GetRunStatus", params)) is None
        async with session.post(sim.endpoint + "/_sim/clock", json={"offset_seconds": 301}) as r:
            assert r.status == 200
        expired = await call(session, sim, "GetRunStatus", params)
        assert error_code(expired) == "AuthFailure.SignatureExpire"
        assert "300 seconds" in expired["Error"]["Message"]
        # A client that re-signs with the server's time gets through.
        server_now = int(sim.server_time())
        again = await call(session, sim, "GetRunStatus", params, timestamp=server_now)
        assert error_code(again) is None


async def test_temporary_tokens_expire_and_rotate(session: aiohttp.ClientSession) -> None:
    async with running_simulator(SimulatorConfig(runs=1, token="tok-1")) as sim:
        params = {"RunUuid": sim.run_uuids[0]}
        assert sim.token == "tok-1"
        missing = await call(session, sim, "GetRunStatus", params)
        assert error_code(missing) == "AuthFailure.TokenFailure"
        assert error_code(await call(session, sim, "GetRunStatus", params, token="tok-1")) is None
        sim.expire_credentials(at=time.time() + 0.2)
        assert error_code(await call(session, sim, "GetRunStatus", params, token="tok-1")) is None
        await asyncio.sleep(0.25)
        expired = await call(session, sim, "GetRunStatus", params, token="tok-1")
        assert error_code(expired) == "AuthFailure.TokenFailure"
        new = sim.rotate_token()
        assert error_code(await call(session, sim, "GetRunStatus", params, token=new)) is None
        stale = await call(session, sim, "GetRunStatus", params, token="tok-1")
        assert error_code(stale) == "AuthFailure.TokenFailure"

        # Fresh temporary credentials, issued over HTTP, expiring by themselves.
        async with session.post(sim.endpoint + "/_sim/credentials", json={"ttl": 0.2}) as r:
            assert r.status == 201
            issued = await r.json()
        temp = {
            "secret_id": issued["secret_id"],
            "secret_key": issued["secret_key"],
            "token": issued["token"],
        }
        assert error_code(await call(session, sim, "GetRunStatus", params, **temp)) is None
        await asyncio.sleep(0.25)
        late = await call(session, sim, "GetRunStatus", params, **temp)
        assert error_code(late) == "AuthFailure.TokenFailure"


# --- rate limit ---------------------------------------------------------------------------


def test_sliding_window_is_exact() -> None:
    limiter = ActionLimiter(20, histogram_seconds=10)
    admitted = []
    times = [i * 0.05 for i in range(20)] + [0.99, 0.999, 1.0, 1.02, 1.049, 1.06]
    for t in times:
        limiter.arrive(t, int(t))
        admitted.append(limiter.admit(t))
    # 20 in [0, 0.95]; 0.99 and 0.999 over; at 1.0 the request at 0.0 has left the window,
    # at 1.02 none has (0.05 is still inside), at 1.049 too, at 1.06 the one at 0.05 left.
    assert admitted == [True] * 20 + [False, False, True, False, False, True]
    assert limiter.max_window == 20
    assert limiter.max_window_arrivals == 24  # (0.049, 1.049] holds 19 + 5
    assert limiter.throttled == 4
    assert limiter.histogram() == [[0, 22, 2], [1, 4, 2]]


async def test_rate_limit_over_http_and_lowered_at_runtime(session: aiohttp.ClientSession) -> None:
    async with running_simulator(SimulatorConfig(runs=3)) as sim:
        params = {"RunUuid": sim.run_uuids[0]}
        started = time.monotonic()
        answers = await asyncio.gather(
            *(call(session, sim, "GetRunStatus", params) for _ in range(21))
        )
        elapsed = time.monotonic() - started
        codes = [error_code(a) for a in answers]
        assert elapsed < 1.0
        assert codes.count("RequestLimitExceeded") == 1
        assert codes.count(None) == 20
        stats = sim.stats(timeline=False)
        assert stats["max_window"]["GetRunStatus"] == 20
        assert stats["max_window_arrivals"]["GetRunStatus"] == 21
        assert stats["throttled"]["GetRunStatus"] == 1
        # Other actions have their own budget.
        assert error_code(await call(session, sim, "DescribeRuns", {})) is None

        # Another tool now shares the account: the limit drops to 5.
        async with session.post(
            sim.endpoint + "/_sim/rate-limit", json={"limit": 5, "action": "GetRunStatus"}
        ) as r:
            assert (await r.json())["rate_limits"]["GetRunStatus"] == 5
        await asyncio.sleep(1.05)
        answers = [await call(session, sim, "GetRunStatus", params) for _ in range(8)]
        assert [error_code(a) for a in answers].count("RequestLimitExceeded") == 3
        assert sim.stats(timeline=False)["max_window"]["GetRunStatus"] == 20  # the peak stays
        sim.reset_stats()
        assert sim.stats(timeline=False)["max_window"]["GetRunStatus"] == 0


# --- faults -------------------------------------------------------------------------------


def test_fault_draws_are_seeded_and_follow_the_rate() -> None:
    kinds = ("internal_error", "drop")
    a = FaultInjector(rate=0.3, kinds=kinds, seed=4)
    b = FaultInjector(rate=0.3, kinds=kinds, seed=4)
    draws = [a.draw() for _ in range(2000)]
    assert draws == [b.draw() for _ in range(2000)]
    assert 500 < sum(d is not None for d in draws) < 700
    assert {d for d in draws if d} == set(kinds)
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultInjector(rate=0.1, kinds=("gremlins",), seed=0)
    assert FaultInjector(rate=1, kinds=("malformed",), seed=0).kinds[0] == "malformed_non_json"


async def raw_post(
    session: aiohttp.ClientSession, sim: Simulator, params: dict[str, Any], timeout: float = 5
) -> tuple[int, str, bytes]:
    body = json.dumps(params).encode()
    headers = signed_headers(sim, "GetRunStatus", body)
    async with session.post(
        sim.endpoint + "/",
        data=body,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def test_every_fault_kind(session: aiohttp.ClientSession) -> None:
    config = SimulatorConfig(runs=1, rate_limit=1000, slow_seconds=0.4)
    async with running_simulator(config) as sim:
        params = {"RunUuid": sim.run_uuids[0]}

        async def with_fault(kind: str, timeout: float = 5) -> tuple[int, str, bytes]:
            sim.set_faults(1.0, [kind])
            try:
                return await raw_post(session, sim, params, timeout)
            finally:
                sim.set_faults(0.0)

        status, ctype, body = await with_fault("internal_error")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body)["Response"]["Error"]["Code"] == "InternalError"

        status, ctype, body = await with_fault("bad_gateway")
        assert status == 502
        assert ctype.startswith("text/html")
        assert b"502 Bad Gateway" in body

        with pytest.raises(aiohttp.ServerDisconnectedError):
            await with_fault("drop")

        with pytest.raises(asyncio.TimeoutError):
            await with_fault("slow", timeout=0.15)
        started = time.monotonic()
        status, _, body = await with_fault("slow")
        assert time.monotonic() - started >= 0.4
        assert json.loads(body)["Response"]["Metadata"]["RunId"] == sim.run_uuids[0]

        _, ctype, body = await with_fault("malformed_non_json")
        assert ctype == "application/json"
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        _, _, body = await with_fault("malformed_no_response")
        assert "Response" not in json.loads(body)
        _, _, body = await with_fault("malformed_no_payload")
        response = json.loads(body)["Response"]
        assert "Metadata" not in response
        assert "RequestId" in response
        _, _, body = await with_fault("malformed_wrong_types")
        metadata = json.loads(body)["Response"]["Metadata"]
        assert not isinstance(metadata["Status"], str)
        assert not isinstance(metadata["CallCached"], bool)
        _, _, body = await with_fault("malformed_huge")
        assert len(body) > 1024 * 1024
        json.loads(body)

        faults = sim.stats(timeline=False)["faults"]
        assert faults == {
            "internal_error": 1,
            "bad_gateway": 1,
            "drop": 1,
            "slow": 2,
            "malformed_non_json": 1,
            "malformed_no_response": 1,
            "malformed_no_payload": 1,
            "malformed_wrong_types": 1,
            "malformed_huge": 1,
        }
        # A clean answer afterwards: faults do not stick.
        assert error_code(await call(session, sim, "GetRunStatus", params)) is None


async def test_fault_rate_over_http_mixes_faults_with_answers(
    session: aiohttp.ClientSession,
) -> None:
    async with running_simulator(SimulatorConfig(runs=1, rate_limit=1000, seed=3)) as sim:
        async with session.post(
            sim.endpoint + "/_sim/faults", json={"rate": 0.5, "kinds": ["internal_error"]}
        ) as r:
            assert await r.json() == {"fault_rate": 0.5, "fault_kinds": ["internal_error"]}
        answers = [
            await call(session, sim, "GetRunStatus", {"RunUuid": sim.run_uuids[0]})
            for _ in range(40)
        ]
        failed = sum(error_code(a) == "InternalError" for a in answers)
        assert 8 <= failed <= 32
        assert sim.stats(timeline=False)["faults"] == {"internal_error": failed}
        async with session.post(sim.endpoint + "/_sim/faults", json={"rate": 2}) as r:
            assert r.status == 400


# --- hooks, stats and serve ---------------------------------------------------------------


async def test_hooks_submit_runs_and_report_stats(session: aiohttp.ClientSession) -> None:
    config = SimulatorConfig(runs=2, **FAST, running_seconds=(0.2, 0.2), outcomes={"SUCCESS": 1})
    async with running_simulator(config) as sim:
        async with session.post(
            sim.endpoint + "/_sim/runs",
            json={"run_group_id": "rg-late", "durations": [0.01, 0.01, 0.2], "outcome": "CANCELED"},
        ) as r:
            assert r.status == 201
            late = (await r.json())["run_uuid"]
        found = await call(
            session,
            sim,
            "DescribeRuns",
            {"Filters": [{"Name": "RunGroupId", "Values": ["rg-late"]}]},
        )
        assert [run["RunUuid"] for run in found["Runs"]] == [late]
        async with session.get(sim.endpoint + "/_sim/runs") as r:
            assert (await r.json())["runs"] == sim.run_uuids
        async with session.post(sim.endpoint + "/_sim/runs", json={"kind": "zombie"}) as r:
            assert r.status == 400
            assert "unknown kind" in (await r.json())["error"]
        async with session.post(sim.endpoint + "/_sim/max-filter-values", json={"limit": 1}) as r:
            assert r.status == 200
        too_many = await call(
            session,
            sim,
            "DescribeRuns",
            {"Filters": [{"Name": "RunUuid", "Values": sim.run_uuids[:2]}]},
        )
        assert error_code(too_many) == "InvalidParameterValue"

        for run_uuid in sim.run_uuids:
            await call(session, sim, "GetRunStatus", {"RunUuid": run_uuid})
        await asyncio.sleep(0.3)
        async with session.get(sim.endpoint + "/_sim/stats") as r:
            stats = await r.json()
        assert stats["requests"]["GetRunStatus"] == 3
        assert stats["requests_total"] == 5
        assert stats["polls"] == {u: 1 for u in sim.run_uuids}
        assert stats["histogram"]["GetRunStatus"][0][1] == 3
        ends = {t["run_uuid"]: t for t in stats["timeline"] if t["to"] in ("SUCCESS", "CANCELED")}
        assert ends[late]["to"] == "CANCELED"
        assert ends[late]["from"] == "RUNNING"
        assert set(ends) == set(sim.run_uuids)
        assert all(stats["started_at"] <= t["at"] <= stats["now"] for t in stats["timeline"])
        async with session.get(sim.endpoint + "/_sim/timeline", params={"run_uuid": late}) as r:
            assert [t["to"] for t in await r.json()] == [
                "QUEUED",
                "INITIALIZING",
                "RUNNING",
                "CANCELED",
            ]
        async with session.get(sim.endpoint + "/_sim/stats", params={"timeline": "0"}) as r:
            assert "timeline" not in await r.json()
        async with session.post(sim.endpoint + "/_sim/stats/reset") as r:
            assert r.status == 200
        assert sim.stats(timeline=False)["requests_total"] == 0


async def test_serve_announces_then_stops() -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(SimulatorConfig(runs=3, seed=2), stop=stop, out=out))
    for _ in range(100):
        if out.getvalue():
            break
        await asyncio.sleep(0.02)
    info = json.loads(out.getvalue())
    assert set(info) == {"endpoint", "secret_id", "secret_key", "runs"}
    assert info["endpoint"].startswith("http://127.0.0.1:")
    assert len(info["runs"]) == 3
    async with aiohttp.ClientSession() as s, s.get(info["endpoint"] + "/_sim/runs") as r:
        assert (await r.json())["runs"] == info["runs"]
    stop.set()
    await asyncio.wait_for(task, 5)
    assert out.getvalue().count("\n") == 1

    started = time.monotonic()
    await asyncio.wait_for(
        serve(SimulatorConfig(runs=0), stop=asyncio.Event(), out=io.StringIO(), duration=0.2), 5
    )
    assert time.monotonic() - started < 3
