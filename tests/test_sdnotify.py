"""sd_notify client against a real AF_UNIX datagram socket, as systemd would bind it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from watcher.service.sdnotify import SdNotifier


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer than that.
    path = Path(tempfile.mkdtemp(prefix="sdn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(short_dir / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_stopping_watchdog_reach_the_socket(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    with SdNotifier(environ={"NOTIFY_SOCKET": path}) as sd:
        assert sd.enabled
        assert sd.ready()
        assert recv(sock) == "READY=1"
        assert sd.ready("polling 3 runs")
        assert recv(sock) == "READY=1\nSTATUS=polling 3 runs"
        assert sd.status("draining")
        assert recv(sock) == "STATUS=draining"
        assert sd.watchdog()
        assert recv(sock) == "WATCHDOG=1"
        assert sd.stopping()
        assert recv(sock) == "STOPPING=1"
        assert sd.reloading()
        first, second = recv(sock).split("\n")
        assert first == "RELOADING=1"
        assert second.startswith("MONOTONIC_USEC=")
        assert int(second.split("=", 1)[1]) > 0


def test_newlines_cannot_inject_assignments(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with SdNotifier(environ={"NOTIFY_SOCKET": path}) as sd:
        assert sd.status("line one\nREADY=1\r\nx")
        assert recv(sock) == "STATUS=line one READY=1  x"


def test_abstract_namespace_socket() -> None:
    name = f"omics-watcher-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        with SdNotifier(environ={"NOTIFY_SOCKET": "@" + name}) as sd:
            assert sd.ready()
            assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_no_notify_socket_is_a_noop() -> None:
    sd = SdNotifier(environ={})
    assert not sd.enabled
    assert not sd.ready()
    assert not sd.watchdog()
    assert not sd.stopping()
    assert sd.watchdog_interval() is None
    sd.close()


def test_unsupported_address_is_disabled_with_a_log() -> None:
    with capture_logs() as logs:
        sd = SdNotifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not sd.enabled
    assert not sd.ready()
    assert [entry["event"] for entry in logs] == ["sd_notify_unsupported_socket"]


def test_missing_socket_logs_once_and_never_raises(short_dir: Path) -> None:
    with (
        capture_logs() as logs,
        SdNotifier(environ={"NOTIFY_SOCKET": str(short_dir / "gone")}) as sd,
    ):
        assert not sd.ready()
        assert not sd.watchdog()
    failures = [e for e in logs if e["event"] == "sd_notify_failed"]
    assert [e["log_level"] for e in failures] == ["warning", "debug"]
    assert "FileNotFoundError" in failures[0]["error"]


def test_recovers_after_the_manager_comes_back(short_dir: Path) -> None:
    path = str(short_dir / "notify")
    with capture_logs() as logs, SdNotifier(environ={"NOTIFY_SOCKET": path}) as sd:
        assert not sd.ready()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            assert sd.ready()
            assert recv(sock) == "READY=1"
        finally:
            sock.close()
    assert [e["event"] for e in logs] == ["sd_notify_failed", "sd_notify_recovered"]


def test_full_receive_queue_drops_without_blocking(receiver: tuple[socket.socket, str]) -> None:
    _sock, path = receiver
    with capture_logs(), SdNotifier(environ={"NOTIFY_SOCKET": path}) as sd:
        results = [sd.status("x" * 1000) for _ in range(10_000)]
    # The receiver never reads: the kernel queue fills and further sends are dropped.
    assert results[0] is True
    assert results[-1] is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    with capture_logs():
        sd = SdNotifier(environ=environ, pid=4242)
        assert sd.watchdog_interval() == expected


def test_watchdog_pid_defaults_to_this_process() -> None:
    environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert SdNotifier(environ=environ).watchdog_interval() == 1.0


async def test_watchdog_loop_pings_at_half_the_period(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    sock.setblocking(False)
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}  # 0.1 s -> ping every 0.05 s
    with SdNotifier(environ=environ) as sd:
        task = asyncio.create_task(sd.watchdog_loop())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    pings = []
    while True:
        try:
            pings.append(sock.recv(64).decode())
        except BlockingIOError:
            break
    assert set(pings) == {"WATCHDOG=1"}
    assert 3 <= len(pings) <= 8


async def test_watchdog_loop_skips_pings_while_unhealthy(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    sock.setblocking(False)
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}
    with capture_logs() as logs, SdNotifier(environ=environ) as sd:
        task = asyncio.create_task(sd.watchdog_loop(healthy=lambda: False))
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(BlockingIOError):
        sock.recv(64)
    assert {e["event"] for e in logs} == {"sd_notify_watchdog_skipped"}


async def test_watchdog_loop_returns_when_off() -> None:
    sd = SdNotifier(environ={"WATCHDOG_USEC": "100000"})  # no NOTIFY_SOCKET
    await asyncio.wait_for(sd.watchdog_loop(), timeout=1)
    sd2 = SdNotifier(environ={"NOTIFY_SOCKET": "/nonexistent/notify"})  # no watchdog
    await asyncio.wait_for(sd2.watchdog_loop(), timeout=1)
