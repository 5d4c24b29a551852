"""``omics-watcher run`` under a (fake) systemd: READY=1, watchdog pings, STOPPING=1.

The test binds the unix datagram socket systemd would, passes it as ``NOTIFY_SOCKET`` with
``WATCHDOG_USEC``, and reads what the real daemon process sends.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from support import (
    Processes,
    clean_env,
    daemon_config,
    free_port,
    start_daemon,
    start_simulator,
    write_config,
)


def receive_until(sock: socket.socket, wanted: str, deadline: float) -> list[str]:
    """Datagrams received until one contains ``wanted`` (or the deadline passes)."""
    got: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if wanted in got[-1]:
            break
    return got


def test_ready_after_first_cycle_watchdog_pings_and_stopping_on_sigterm(
    tmp_path: Path, procs: Processes
) -> None:
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "3", "--seed", "4")
    port = free_port()
    config = write_config(
        tmp_path / "omics-watcher.toml", daemon_config(tmp_path, sim=sim, port=port)
    )
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        env = clean_env(
            tmp_path,
            {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"},  # ping every 0.5 s
        )
        daemon = start_daemon(procs, config, port=port, env=env)
        ready = receive_until(sock, "READY=1", time.monotonic() + 30)
        assert any("READY=1" in m for m in ready), ready
        assert daemon.probe("/readyz") is not None  # ready for systemd means ready for probes
        pings = receive_until(sock, "WATCHDOG=1", time.monotonic() + 5)
        assert any("WATCHDOG=1" in m for m in pings), pings
        daemon.proc.send_signal(signal.SIGTERM)
        stopping = receive_until(sock, "STOPPING=1", time.monotonic() + 10)
        assert any("STOPPING=1" in m for m in stopping), stopping
        assert daemon.proc.wait(timeout=15) == 0  # one SIGTERM: a clean stop
