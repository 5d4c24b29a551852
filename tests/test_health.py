"""Truthful health: ``/readyz`` reasons, the polling-state gauge, and how outages are logged.

The daemon runs in-process (``run_daemon``, so the 60 s of ``api_unreachable`` and the 30 s
summaries can be made short through :class:`~watcher.app.Wiring`) against the simulator or
a closed port, and its JSON log is captured as ``omics-watcher run`` writes it. The
reasons: ``starting`` (first poll cycle not run), ``auth_paused`` (permission and
credentials refused), ``api_unreachable`` (closed port; a server that stops answering),
``draining`` (stop set), ``standby`` (the hook), ready otherwise.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import SHORT_OUTAGES, free_port, in_process_daemon, make_client

from watcher.config import Settings
from watcher.omics.errors import OmicsError
from watcher.omics.limiter import PacingLimiter
from watcher.polling.outages import UNREACHABLE_SECONDS, Outages
from watcher.service.health import Health, PollingState, PollingStateGauge
from watcher.service.metrics import Metrics
from watcher.service.server import build_app
from watcher.simulator import Simulator, SimulatorConfig, running_simulator
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore

STATES = {state.value for state in PollingState}


def only(state: str) -> dict[str, float]:
    """The gauge's samples when ``state`` is the current one: 1 for it, 0 for the rest."""
    return {s: float(s == state) for s in STATES}


# -- a daemon in this process (support.in_process_daemon) ----------------------------------


def settings_for(
    tmp_path: Path,
    endpoint: str,
    sim: Simulator | None,
    *,
    port: int,
    secret_key: str | None = None,
    **polling: Any,
) -> Settings:
    tencent: dict[str, Any] = {
        "endpoint": endpoint,
        "secret_id": "AKIDtest",
        "secret_key": "k" * 32,
    }
    if sim is not None:
        tencent.update(secret_id=sim.secret_id, secret_key=sim.secret_key)
    if secret_key is not None:
        tencent["secret_key"] = secret_key
    return Settings(
        tencentcloud=tencent,
        polling={"interval_seconds": 0.5, "request_timeout_seconds": 2, **polling},
        state={"path": tmp_path / "state.db"},
        server={"listen": f"127.0.0.1:{port}"},
        daemon={"shutdown_grace_seconds": 5},
    )


def track(tmp_path: Path, runs: list[str], project_id: str = "") -> None:
    with Store.open(tmp_path / "state.db") as store:
        store.track([TrackRequest(run_uuid, project_id) for run_uuid in runs])


def closed_port() -> int:
    """A port nothing listens on (bound, then closed, so the kernel refuses connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- readiness through the daemon -----------------------------------------------------------


async def test_starting_until_the_first_poll_cycle_then_ready_with_the_gauge(
    tmp_path: Path,
) -> None:
    config = SimulatorConfig(runs=3, seed=3, fault_rate=1.0, fault_kinds=("slow",), slow_seconds=4)
    async with running_simulator(config) as sim:
        track(tmp_path, sim.run_uuids, sim.project_id)
        port = free_port()
        settings = settings_for(tmp_path, sim.endpoint, sim, port=port, request_timeout_seconds=10)
        async with in_process_daemon(settings, port=port) as d:
            status, body = await d.readyz()
            assert (status, body) == (503, {"status": "not_ready", "reason": "starting"})
            assert await d.gauge() == only("starting")
            sim.set_faults(0.0)
            await d.wait_reason(None, timeout=20)
            assert await d.readyz() == (200, {"status": "ready", "reason": None})
            gauge = await d.gauge()
            assert gauge == only("polling")


@pytest.mark.parametrize("refused", ["permission", "credentials"])
async def test_auth_paused_when_the_api_refuses_permission_or_credentials(
    tmp_path: Path, refused: str
) -> None:
    async with running_simulator(SimulatorConfig(runs=3, seed=5)) as sim:
        track(tmp_path, sim.run_uuids, sim.project_id)
        port = free_port()
        # A wrong SecretKey: every request is refused (AuthFailure.SignatureFailure).
        wrong = "x" * 32 if refused == "credentials" else None
        settings = settings_for(tmp_path, sim.endpoint, sim, port=port, secret_key=wrong)
        if refused == "permission":
            sim.deny_action("GetRunStatus")  # a CAM policy without it
        async with in_process_daemon(settings, port=port) as d:
            await d.wait_reason("auth_paused", timeout=15)
            gauge = await d.gauge()
            assert gauge == only("auth_paused")
            paused = await d.wait_logged("polling_paused", timeout=5)
            assert paused[0]["reason"] in ("UnauthorizedOperation", "AuthFailure.SignatureFailure")
            if refused == "permission":
                # Allowed again: the next probe (after the 15 s pause) answers, ready again.
                sim.deny_action("GetRunStatus", None)
                await d.wait_reason(None, timeout=40)
                assert (await d.gauge())["polling"] == 1


async def test_api_unreachable_on_a_closed_port_logs_host_cause_and_summaries(
    tmp_path: Path,
) -> None:
    runs = [f"00000000-0000-4000-8000-{n:012d}" for n in range(20)]
    track(tmp_path, runs)
    dead = closed_port()
    port = free_port()
    settings = settings_for(tmp_path, f"http://127.0.0.1:{dead}", None, port=port)
    async with in_process_daemon(settings, port=port) as d:
        await d.wait_reason("api_unreachable", timeout=20)
        gauge = await d.gauge()
        assert gauge == only("api_unreachable")
        summaries = await d.wait_logged("poll_failures", timeout=20)
    failed = d.records("poll_failed")
    assert len(failed) == 1, failed  # one line for the outage, not one per run or failure
    first = failed[0]
    assert first["level"] == "warning"
    assert first["host"] == f"127.0.0.1:{dead}"
    assert first["cause"] == "connection refused"
    assert first["run_uuid"] in runs
    for summary in summaries:
        assert summary["level"] == "warning"
        assert summary["hosts"] == {f"127.0.0.1:{dead}": summary["failures"]}
        assert summary["causes"] == {"connection refused": summary["failures"]}
        assert 1 <= summary["runs_affected"] <= len(runs)
    assert sum(s["failures"] for s in summaries) + 1 >= len(runs)  # every run failed once
    assert not d.records("poll_recovered")


async def test_api_unreachable_when_the_server_stops_answering_then_recovered(
    tmp_path: Path,
) -> None:
    config = SimulatorConfig(runs=6, seed=7, slow_seconds=2)
    async with running_simulator(config) as sim:
        track(tmp_path, sim.run_uuids, sim.project_id)
        port = free_port()
        settings = settings_for(tmp_path, sim.endpoint, sim, port=port, request_timeout_seconds=1)
        async with in_process_daemon(settings, port=port) as d:
            await d.wait_reason(None, timeout=20)
            sim.set_faults(1.0, ["slow"])  # every answer comes after the request timeout
            await d.wait_reason("api_unreachable", timeout=20)
            assert (await d.gauge())["api_unreachable"] == 1
            await d.wait_logged("poll_failures", timeout=20)
            sim.set_faults(0.0)
            await d.wait_reason(None, timeout=40)
            recovered = await d.wait_logged("poll_recovered", timeout=40)
        await asyncio.sleep(config.slow_seconds)  # the simulator's last slow answers go out
    first = d.records("poll_failed")[0]
    assert (first["host"], first["cause"], first["code"]) == (
        sim.endpoint.removeprefix("http://"),
        "timeout",
        "Timeout",
    )
    assert recovered[0]["level"] == "info"
    assert recovered[0]["failures"] >= 1
    assert recovered[0]["causes"].keys() == {"timeout"}


async def test_draining_once_stop_is_set_until_the_server_stops(tmp_path: Path) -> None:
    async with running_simulator(SimulatorConfig(runs=4, seed=9, slow_seconds=3)) as sim:
        track(tmp_path, sim.run_uuids, sim.project_id)
        port = free_port()
        settings = settings_for(tmp_path, sim.endpoint, sim, port=port, request_timeout_seconds=10)
        stop = asyncio.Event()
        async with in_process_daemon(settings, port=port, stop=stop) as d:
            await d.wait_reason(None, timeout=20)
            sim.set_faults(1.0, ["slow"])  # polls in flight for 3 s when the stop comes
            for _ in range(100):
                if sim.stats(timeline=False)["faults"].get("slow", 0) >= 2:
                    break
                await asyncio.sleep(0.05)
            stop.set()  # what SIGTERM does
            await d.wait_reason("draining", timeout=5)
            gauge = await d.gauge()
            assert gauge == only("draining")


# -- the state's one decision and the standby hook ------------------------------------------


async def test_standby_hook_answers_standby_and_draining_comes_first(store: Store) -> None:
    standby = [True]
    health = Health(standby=lambda: standby[0])
    health.ready = True
    registry = CollectorRegistry()
    registry.register(PollingStateGauge(health))
    app = build_app(
        store=SqliteStore(store),
        metrics=Metrics(),
        health=health,
        admin_token=None,
        default_project_id="",
    )
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/readyz")
        assert (resp.status, await resp.json()) == (
            503,
            {"status": "not_ready", "reason": "standby"},
        )
        assert _gauge(registry) == only("standby")
        health.draining = True
        assert (await (await client.get("/readyz")).json())["reason"] == "draining"
        health.draining = False
        standby[0] = False
        assert (await client.get("/readyz")).status == 200
        assert _gauge(registry)["polling"] == 1


def _gauge(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    (family,) = text_string_to_metric_families(text)
    return {s.labels["state"]: s.value for s in family.samples}


def test_auth_pause_says_more_than_starting_and_unreachable_counts_from_the_first_failure() -> None:
    now = [0.0]
    outages = Outages(host="api.example", timing=SHORT_OUTAGES, clock=lambda: now[0])
    health = Health(polling=outages)
    assert health.state() is PollingState.STARTING
    outages.paused("AuthFailure.SecretIdNotFound")
    assert health.state() is PollingState.AUTH_PAUSED  # not "starting"
    outages.answered()
    assert health.state() is PollingState.STARTING
    health.ready = True
    now[0] = 3600.0  # an hour with nothing to poll, then one failure: not unreachable yet
    outages.failed(_refused(), runs=["r1"], event="poll_failed")
    assert health.state() is PollingState.POLLING
    now[0] += SHORT_OUTAGES.unreachable_seconds
    assert health.state() is PollingState.API_UNREACHABLE
    outages.answered()
    assert health.state() is PollingState.POLLING
    assert UNREACHABLE_SECONDS == 60.0


# -- bounded logs ---------------------------------------------------------------------------


def _refused() -> OmicsError:
    return OmicsError("ConnectionError", "Cannot connect", cause="connection refused")


def _outage_lines(drive: Callable[[Outages, list[float]], None]) -> list[MutableMapping[str, Any]]:
    now = [0.0]
    outages = Outages(host="omics.tencentcloudapi.com", clock=lambda: now[0])  # real timing
    with structlog.testing.capture_logs() as logs:
        drive(outages, now)
    return [r for r in logs if r["log_level"] != "debug"]


def test_a_10000_run_outage_is_a_few_lines_then_one_recovery() -> None:
    runs = [f"run-{n}" for n in range(10_000)]

    def drive(outages: Outages, now: list[float]) -> None:
        for round_ in range(3):  # each run fails three times over five minutes
            for n, run in enumerate(runs):
                now[0] = round_ * 100 + n / 100
                outages.failed(_refused(), runs=[run], event="poll_failed", run_uuid=run)
        now[0] = 400.0
        outages.answered()

    lines = _outage_lines(drive)
    events = [r["event"] for r in lines]
    assert events[0] == "poll_failed"
    assert events[-1] == "poll_recovered"
    assert set(events[1:-1]) == {"poll_failures"}
    assert len(lines) <= 2 + 300 / 30 + 1, events  # 30,000 failures
    summaries = [r for r in lines if r["event"] == "poll_failures"]
    assert sum(r["failures"] for r in summaries) < 30_000  # the tail is in the recovery line
    recovered = lines[-1]
    assert recovered["failures"] == 30_000
    assert recovered["runs_affected"] == 10_000
    assert recovered["causes"] == {"connection refused": 30_000}


def test_a_flapping_api_cannot_make_the_log_grow_with_its_failures() -> None:
    def drive(outages: Outages, now: list[float]) -> None:
        for second in range(600):  # a failure and an answer every second for 10 minutes
            now[0] = float(second)
            outages.failed(_refused(), runs=[f"run-{second}"], event="poll_failed")
            now[0] += 0.5
            outages.answered()
        now[0] = 700.0
        outages.answered()

    lines = _outage_lines(drive)
    assert len(lines) <= 2 * 600 / 30 + 2, [r["event"] for r in lines]  # <= 2 per summary


# -- causes, from real failures -------------------------------------------------------------


async def _cause(client: Any) -> str:
    with pytest.raises(OmicsError) as info:
        await client.run_status("00000000-0000-4000-8000-000000000001")
    return str(info.value.cause)


async def test_causes_name_what_went_wrong_with_the_request(
    session: aiohttp.ClientSession,
) -> None:
    config = SimulatorConfig(runs=1, seed=1, slow_seconds=1)
    async with running_simulator(config) as sim:
        limiters = {"default": PacingLimiter(100)}

        @dataclass
        class At:
            endpoint: str
            secret_id: str = sim.secret_id
            secret_key: str = sim.secret_key

        def client(endpoint: str, timeout: float = 3.0) -> Any:
            return make_client(At(endpoint), session, limiters=limiters, timeout=timeout)

        assert await _cause(client(f"http://127.0.0.1:{closed_port()}")) == "connection refused"
        assert await _cause(client("http://no-such-host.invalid")) == "DNS failure"
        assert await _cause(client(sim.endpoint.replace("http:", "https:"))) == "TLS error"
        for kind, cause in [
            ("bad_gateway", "HTTP 502"),
            ("internal_error", "Tencent InternalError"),
            ("drop", "server disconnected"),
        ]:
            sim.set_faults(1.0, [kind])
            assert await _cause(client(sim.endpoint)) == cause
        sim.set_faults(1.0, ["slow"])
        assert await _cause(client(sim.endpoint, timeout=0.5)) == "timeout"
        await asyncio.sleep(config.slow_seconds)  # its slow answer goes out before it stops
