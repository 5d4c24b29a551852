"""systemd's view of the daemon's health: ``STATUS=`` lines follow ``Health.state()``.

The tests bind the unix datagram socket systemd would and pass it as ``NOTIFY_SOCKET`` to
the real daemon: ``omics-watcher run`` as a process, or ``run_daemon`` in this process when
the outage periods must be short (:class:`~watcher.app.Wiring`), against the simulator.
What they check is what ``systemctl status`` would show: READY=1 arrives even when polling is
refused (a ``Type=notify`` unit must not hang in "activating"), with a status that says so,
and the status follows the state to ``auth_paused``, ``api_unreachable`` (discovery's
failures count), back to ``watching N runs``, and ``draining``; never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import (
    SHORT_OUTAGES,
    Processes,
    clean_env,
    daemon_config,
    free_port,
    in_process_daemon,
    start_daemon,
    start_simulator,
    write_config,
)

from watcher.config import Settings
from watcher.omics.errors import OmicsError
from watcher.polling.outages import Outages
from watcher.service.health import Health
from watcher.service.sdnotify import SdNotifier
from watcher.simulator import SimulatorConfig, running_simulator
from watcher.store import Store, TrackRequest


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket as systemd's, in a short directory (sun_path is 108 bytes)."""
    with (
        tempfile.TemporaryDirectory(prefix="sd") as where,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = str(Path(where) / "notify")
        sock.bind(path)
        sock.setblocking(False)
        yield sock, path


def assignments(datagram: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.splitlines())


@dataclass
class Manager:
    """What the service manager received, datagram by datagram."""

    sock: socket.socket
    got: list[dict[str, str]] = field(default_factory=list)
    _last: tuple[int, str] = (0, "")  # the datagram and key wait() matched last

    def _drain(self) -> None:
        while True:
            try:
                self.got.append(assignments(self.sock.recv(4096).decode()))
            except BlockingIOError:
                return

    def statuses(self) -> list[str]:
        self._drain()
        return [m["STATUS"] for m in self.got if "STATUS" in m]

    async def wait(self, key: str, value_starts: str = "", *, timeout: float) -> dict[str, str]:
        """The first datagram from the last one matched on (another key of it, or a later
        one) with ``key`` set to a value starting with ``value_starts``."""
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            for index in range(self._last[0], len(self.got)):
                message = self.got[index]
                if (index, key) != self._last and message.get(key, "\0").startswith(value_starts):
                    self._last = (index, key)
                    return message
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key}={value_starts}... in {timeout} s: {self.got}")
            await asyncio.sleep(0.05)

    def blocking_wait(self, key: str, value_starts: str = "", *, timeout: float) -> dict[str, str]:
        return asyncio.run(self.wait(key, value_starts, timeout=timeout))


def settings(
    tmp_path: Path, endpoint: str, secret_id: str, secret_key: str, *, port: int, **more: Any
) -> Settings:
    return Settings(
        tencentcloud={"endpoint": endpoint, "secret_id": secret_id, "secret_key": secret_key},
        polling={"interval_seconds": 0.5, "request_timeout_seconds": 1},
        state={"path": tmp_path / "state.db"},
        server={"listen": f"127.0.0.1:{port}"},
        daemon={"shutdown_grace_seconds": 5},
        **more,
    )


# -- the real daemon, under a fake systemd ---------------------------------------------------


async def test_refused_permission_is_ready_for_systemd_with_auth_paused_then_watching(
    tmp_path: Path,
) -> None:
    async with running_simulator(SimulatorConfig(runs=3, seed=5)) as sim:
        with Store.open(tmp_path / "state.db") as store:
            store.track([TrackRequest(run, sim.project_id) for run in sim.run_uuids])
        sim.deny_action("GetRunStatus")  # a CAM policy without it
        port = free_port()
        config = settings(tmp_path, sim.endpoint, sim.secret_id, sim.secret_key, port=port)
        with notify_socket() as (sock, path):
            manager = Manager(sock)
            async with in_process_daemon(config, port=port, environ={"NOTIFY_SOCKET": path}) as d:
                # Started for systemd (no endless "activating"), and saying why it is not
                # ready, as /readyz does.
                await manager.wait("READY", "1", timeout=20)
                await manager.wait("STATUS", "auth_paused: UnauthorizedOperation", timeout=5)
                assert await d.reason() == "auth_paused"
                sim.deny_action("GetRunStatus", None)  # allowed again: the next probe answers
                await manager.wait("STATUS", "watching ", timeout=40)  # some may be done
                assert await d.reason() is None
            stopping = await manager.wait("STOPPING", "1", timeout=5)
            assert stopping["STATUS"] == "draining"
            statuses = manager.statuses()
    paused = next(s for s in statuses if s.startswith("auth_paused"))
    assert paused == (
        "auth_paused: UnauthorizedOperation: polling paused, check credentials and permissions"
    )
    assert not any(sim.secret_key in s for s in statuses)


def test_omics_watcher_run_with_a_wrong_key_says_auth_paused_to_systemd(
    tmp_path: Path, procs: Processes
) -> None:
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "3", "--seed", "4")
    port = free_port()
    wrong = "w" * 32
    config = write_config(
        tmp_path / "omics-watcher.toml",
        daemon_config(tmp_path, sim=sim, port=port, tencentcloud={"secret_key": wrong}),
    )
    with Store.open(tmp_path / "state.db") as store:
        store.track([TrackRequest(run) for run in sim.runs])
    with notify_socket() as (sock, path):
        manager = Manager(sock)
        env = clean_env(tmp_path, {"NOTIFY_SOCKET": path})
        running = start_daemon(procs, config, port=port, env=env)
        manager.blocking_wait("READY", "1", timeout=30)
        status = manager.blocking_wait("STATUS", "auth_paused", timeout=10)["STATUS"]
        assert status.startswith("auth_paused: AuthFailure.SignatureFailure: polling paused")
        reply = running.probe("/readyz")
        assert reply is not None
        assert (reply.status, reply.json()["reason"]) == (503, "auth_paused")
        running.proc.send_signal(signal.SIGTERM)
        assert manager.blocking_wait("STOPPING", "1", timeout=10)["STATUS"] == "draining"
        assert running.proc.wait(timeout=15) == 0
        statuses = manager.statuses()
    assert not any(wrong in s or sim.secret_key in s for s in statuses)


async def test_discovery_failing_makes_api_unreachable_then_recovered(tmp_path: Path) -> None:
    # No run tracked: only discovery asks the API. Every answer comes after the timeout.
    config = SimulatorConfig(runs=4, seed=8, fault_rate=1.0, fault_kinds=("slow",), slow_seconds=2)
    async with running_simulator(config) as sim:
        port = free_port()
        watch = {"project_id": sim.project_id, "interval_seconds": 1}
        daemon_settings = settings(
            tmp_path, sim.endpoint, sim.secret_id, sim.secret_key, port=port, watch=[watch]
        )
        host = sim.endpoint.removeprefix("http://")
        with notify_socket() as (sock, path):
            manager = Manager(sock)
            async with in_process_daemon(
                daemon_settings, port=port, environ={"NOTIFY_SOCKET": path}
            ) as d:
                ready = await manager.wait("READY", "1", timeout=20)
                assert ready["STATUS"] == "watching 0 runs"
                unreachable = await manager.wait("STATUS", "api_unreachable", timeout=20)
                assert unreachable["STATUS"].startswith(
                    f"api_unreachable: no answer from {host} since "
                )
                assert unreachable["STATUS"].endswith(" UTC")
                assert await d.reason() == "api_unreachable"
                sim.set_faults(0.0)
                await manager.wait("STATUS", "watching ", timeout=30)  # what it found
                await d.wait_logged("poll_recovered", timeout=20)
            await asyncio.sleep(config.slow_seconds)  # the simulator's last slow answers
    failed = d.records("discovery_failed")
    assert [r["level"] for r in failed] == ["warning"]  # one line for the outage
    assert (failed[0]["host"], failed[0]["cause"]) == (host, "timeout")
    recovered = d.records("poll_recovered")
    assert recovered
    assert recovered[0]["causes"].keys() == {"timeout"}
    assert recovered[0]["runs_affected"] == 0  # DescribeRuns of discovery names no run


# -- the status line and its sender ------------------------------------------------------


def test_status_line_words_each_state() -> None:
    now = [100.0]
    outages = Outages(
        host="omics.tencentcloudapi.com",
        timing=SHORT_OUTAGES,
        clock=lambda: now[0],
        wall_clock=lambda: 1_700_000_000.0,  # 2023-11-14 22:13:20 UTC
    )
    standby = [False]
    health = Health(polling=outages, standby=lambda: standby[0], tracked=lambda: 300)
    assert health.status_line() == "starting: first poll of 300 runs"
    health.ready = True
    assert health.status_line() == "watching 300 runs"
    outages.paused("AuthFailure.SecretIdNotFound")
    assert health.status_line() == (
        "auth_paused: AuthFailure.SecretIdNotFound: polling paused, check credentials and "
        "permissions"
    )
    outages.answered()
    refused = OmicsError("ConnectionError", "Cannot connect", cause="connection refused")
    outages.failed(refused, runs=["r1"], event="poll_failed")
    assert health.status_line() == "watching 300 runs"  # failing, not yet for long
    now[0] += SHORT_OUTAGES.unreachable_seconds
    unreachable = (
        "api_unreachable: no answer from omics.tencentcloudapi.com since 2023-11-14 22:13:20 UTC"
    )
    assert health.status_line() == unreachable
    now[0] += 600
    assert health.status_line() == unreachable  # the same line while it lasts
    standby[0] = True
    assert health.status_line() == "standby: another replica is active"
    health.draining = True
    assert health.status_line() == "draining"


async def test_status_loop_sends_changes_only_and_nothing_without_a_socket() -> None:
    lines = iter(["starting", "starting", "watching 3 runs", "watching 3 runs", "a\nb"])
    current = ["starting"]

    def describe() -> str:
        current[0] = next(lines, current[0])
        return current[0]

    with notify_socket() as (sock, path), SdNotifier(environ={"NOTIFY_SOCKET": path}) as sd:
        manager = Manager(sock)
        assert sd.ready("starting")
        task = asyncio.create_task(sd.status_loop(describe, every=0.01))
        await manager.wait("STATUS", "a b", timeout=5)
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert manager.statuses() == ["starting", "watching 3 runs", "a b"]
    # Without NOTIFY_SOCKET the loop returns at once: nothing to tell, nothing to wake for.
    await asyncio.wait_for(SdNotifier(environ={}).status_loop(describe), 1)
