"""Stalled clients cannot take the daemon down (issue 13, "a hardened server").

The report this answers: 1,100 connections that each send half a request, against a daemon
with the usual 1,024 file-descriptor limit, kept ``/healthz`` from answering for the whole
test and grew the log by 33 MB of tracebacks. Here the real ``omics-watcher run`` runs as a
subprocess under ``RLIMIT_NOFILE = 1024`` while this process (whose own limit is raised)
holds 1,100 half-open connections to it for a while, opening a new one whenever the daemon
closes one, as a persistent attacker would. Throughout:

- every ``/healthz`` probe, made on a fresh connection every 0.2 s, answers 200 within the
  2 s the issue states (each probe is timed from the start of its connect to the end of its
  answer; a probe that fails or times out counts as a miss, never as a retry);
- the daemon's log grows by less than 5 MB;
- the daemon keeps polling: the simulator's GetRunStatus count keeps rising.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    WATCHER,
    Processes,
    Simulator,
    clean_env,
    daemon_config,
    free_port,
    run_cli,
    start_simulator,
    stop,
    tail,
    try_http,
    wait_for,
    write_config,
)

DAEMON_NOFILE = 1024
STALLED = 1100
ATTACK_SECONDS = 8.0
PROBE_EVERY = 0.2
PROBE_BOUND = 2.0  # the contract the issue states
POLL_SAMPLE_EVERY = 2.5  # the daemon polls each run every second
LOG_GROWTH_BOUND = 5 * 1024 * 1024
HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: stalled\r\n"


def _daemon_limits() -> None:  # runs in the child, between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_NOFILE, DAEMON_NOFILE))


@pytest.fixture
def own_nofile() -> Iterator[None]:
    """This process needs more than 1,100 descriptors for the attack."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = STALLED + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Stallers:
    """Keeps ``count`` connections open, each having sent half a request; reopens closed ones."""

    def __init__(self, port: int, count: int) -> None:
        self._address = ("127.0.0.1", port)
        self._count = count
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self.opened = 0
        self.closed_by_server = 0
        self.thread = threading.Thread(target=self._run, name="stallers", daemon=True)

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self._address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return
        self._selector.register(sock, selectors.EVENT_WRITE, "connecting")
        self.opened += 1

    def _on_event(self, sock: socket.socket, state: str) -> None:
        if state == "connecting":
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                with contextlib.suppress(OSError):
                    sock.send(HALF_REQUEST)
                    self._selector.modify(sock, selectors.EVENT_READ, "stalled")
                    return
        else:
            with contextlib.suppress(OSError):
                if sock.recv(4096):  # the server answered something: keep stalling
                    return
            self.closed_by_server += 1
        self._selector.unregister(sock)
        sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(self._count - len(self._selector.get_map())):
                self._open()
            for key, _ in self._selector.select(timeout=0.05):
                assert isinstance(key.fileobj, socket.socket)
                self._on_event(key.fileobj, key.data)
        for key in list(self._selector.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            key.fileobj.close()
        self._selector.close()

    @property
    def open_now(self) -> int:
        return len(self._selector.get_map())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)


def _rss_kib(pid: int) -> int | None:
    """The process's resident set (printed for the report, not asserted)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def _get_run_status_count(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get("GetRunStatus", 0))


@pytest.mark.usefixtures("own_nofile")
def test_stalled_connections_cannot_take_the_daemon_down(procs: Processes, tmp_path: Path) -> None:
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "1")
    forever = [sim.post("/_sim/runs", {"kind": "forever"})["run_uuid"] for _ in range(3)]
    port = free_port()
    config = write_config(tmp_path / "watcher.toml", daemon_config(tmp_path, sim=sim, port=port))
    env = clean_env(tmp_path / "home")
    done = run_cli("track", "-c", str(config), *forever, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "daemon.log"
    daemon = procs.spawn(
        [*WATCHER, "run", "-c", str(config)],
        env=env,
        cwd=tmp_path,
        log=log,
        preexec_fn=_daemon_limits,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if daemon.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.returncode}: {tail(log)}")
        reply = try_http("GET", url + "/readyz", timeout=2.0)
        return reply is not None and reply.status == 200

    wait_for(ready, timeout=30, interval=0.1, what="/readyz 200")
    log_before = log.stat().st_size
    polls_before = _get_run_status_count(sim)

    stallers = Stallers(port, STALLED)
    stallers.start()
    wait_for(
        lambda: stallers.opened >= STALLED, timeout=20, interval=0.05, what="1,100 connections"
    )
    probes: list[tuple[float, int | None]] = []
    polls_seen = [polls_before]
    try:
        start = time.monotonic()
        next_sample = start + POLL_SAMPLE_EVERY
        while time.monotonic() < start + ATTACK_SECONDS:
            began = time.monotonic()
            reply = try_http("GET", url + "/healthz", timeout=PROBE_BOUND + 3)
            probes.append((time.monotonic() - began, None if reply is None else reply.status))
            if time.monotonic() >= next_sample:
                polls_seen.append(_get_run_status_count(sim))
                next_sample += POLL_SAMPLE_EVERY
            time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - began)))
        held_at_end = stallers.open_now
        rss = _rss_kib(daemon.pid)
    finally:
        stallers.stop()
    print(
        f"probes={len(probes)} slowest={max(t for t, _ in probes):.3f}s"
        f" closed_by_daemon={stallers.closed_by_server} opened={stallers.opened}"
        f" held_at_end={held_at_end} GetRunStatus={polls_seen} daemon_rss={rss} KiB"
        f" log_growth={log.stat().st_size - log_before} B"
    )

    assert daemon.poll() is None, f"daemon exited {daemon.returncode}: {tail(log)}"
    assert held_at_end >= STALLED - 50, held_at_end  # the attack really held ~1,100 open
    slow = [(round(took, 2), status) for took, status in probes if took > PROBE_BOUND]
    failed = [(round(took, 2), status) for took, status in probes if status != 200]
    assert not slow, (slow, len(probes))
    assert not failed, (failed, len(probes))
    assert len(probes) >= 10, probes
    growth = log.stat().st_size - log_before
    assert growth < LOG_GROWTH_BOUND, (growth, tail(log, 5))
    # Polling went on during the attack, in each part of it.
    assert all(b > a for a, b in itertools.pairwise(polls_seen)), polls_seen
    assert stop(daemon, timeout=15) == 0, tail(log)


def test_admin_listen_end_to_end(procs: Processes, tmp_path: Path) -> None:
    """``[server] admin_listen``: the daemon serves the admin API there and only there."""
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "1")
    port, admin_port = free_port(), free_port()
    token = "slow-clients-admin-token-5c2b8e0f"
    settings = daemon_config(
        tmp_path,
        sim=sim,
        port=port,
        admin_token=token,
        server={"admin_listen": f"127.0.0.1:{admin_port}"},
    )
    config = write_config(tmp_path / "watcher.toml", settings)
    env = clean_env(tmp_path / "home")
    log = tmp_path / "daemon.log"
    daemon = procs.spawn([*WATCHER, "run", "-c", str(config)], env=env, cwd=tmp_path, log=log)
    main, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    auth = {"Authorization": f"Bearer {token}"}

    def listening() -> bool:
        if daemon.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.returncode}: {tail(log)}")
        reply = try_http("GET", main + "/healthz", timeout=2.0)
        return reply is not None and reply.status == 200

    wait_for(listening, timeout=30, interval=0.1, what="/healthz 200")
    on_main = try_http("GET", main + "/v1/runs", headers=auth, timeout=5)
    assert on_main is not None
    assert on_main.status == 404
    on_admin = try_http("GET", admin + "/v1/runs", headers=auth, timeout=5)
    assert on_admin is not None
    assert on_admin.status == 200, on_admin.text
    assert on_admin.json()["runs"] == []
    metrics = try_http("GET", main + "/metrics", timeout=5)
    assert metrics is not None
    assert metrics.status == 200
    assert stop(daemon, timeout=15) == 0, tail(log)
