"""Subprocess helpers for the CLI and end-to-end tests: the real ``omics-watcher`` binary.

Everything binds to 127.0.0.1, every wait is bounded, and every process started through a
:class:`Processes` registry is killed (by its own pid) when the registry is cleaned up, so a
failing test never leaves a simulator or daemon behind.

- :func:`start_simulator` runs ``omics-watcher simulate`` and reads its first JSON line;
- :func:`write_config` writes a TOML file pointing a daemon at it (state in ``tmp_path``,
  a port picked with :func:`free_port`);
- :func:`start_daemon` runs ``omics-watcher run -c FILE`` with JSON logs to a file;
- :func:`run_cli` runs one short command and returns its ``CompletedProcess``;
- :func:`http` is a tiny proxy-free HTTP client for probes, metrics and the ``/_sim`` hooks.

Plain helpers for the in-process tests live here too (fixtures are in ``conftest.py``):
:func:`now`, :class:`FakeClock` (wall and monotonic time that move only when told),
:func:`make_client` (the real :class:`OmicsClient` against a simulator's endpoint) and
:func:`in_process_daemon` (``run_daemon`` with short outage periods and its log captured).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import aiohttp
import structlog
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from watcher.app import Wiring, run_daemon
from watcher.config import Settings
from watcher.delivery.dispatcher import Dispatcher
from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, CredentialProvider, StaticProvider
from watcher.omics.limiter import Limiter, PacingLimiter
from watcher.polling.outages import OutageTiming
from watcher.service.connections import ConnectionLimits
from watcher.service.logs import configure
from watcher.service.metrics import Metrics
from watcher.service.server import Health, HttpServer, build_app
from watcher.store import Store
from watcher.store.api import SqliteStore
from watcher.store.schema import APPLICATION_ID, MIGRATIONS

T = TypeVar("T")

_SCRIPT = Path(sys.executable).parent / "omics-watcher"
# The installed console script when there is one (what users run), else the module.
WATCHER: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "watcher"]

_SCRUBBED_PREFIXES = ("OMICS_WATCHER_", "TENCENTCLOUD_", "TKE_")
_SCRUBBED = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"}

# Never let a developer's proxy settings route 127.0.0.1 traffic elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any watcher, Tencent or systemd settings.

    ``HOME`` points at ``home`` so no real ``~/.tencentcloud/credentials`` is read; logs are
    JSON so they can be parsed.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SCRUBBED_PREFIXES) and key not in _SCRUBBED
    }
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMICS_WATCHER_LOGGING__FORMAT"] = "json"
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something other than ``None``/``False``; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> Reply:
    """One HTTP request; ``body`` is sent as JSON unless it is bytes. Raises ``OSError``
    (connection refused and friends) but never for an HTTP error status."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and "Content-Type" not in request.headers:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, dict(exc.headers), exc.read())


def try_http(method: str, url: str, **kwargs: Any) -> Reply | None:
    """:func:`http`, or ``None`` when nothing answers (refused, reset, timed out)."""
    try:
        return http(method, url, **kwargs)
    except (OSError, urllib.error.URLError):
        return None


# -- processes ------------------------------------------------------------------------------


class Processes:
    """Every child a test started; :meth:`cleanup` kills the ones still alive, by pid."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    def spawn(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        stdout_pipe: bool = False,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args``; stderr (and stdout unless piped) append to ``log``.

        ``preexec_fn`` runs in the child before exec (e.g. to lower its descriptor limit).
        """
        out = log.open("ab")
        self._files.append(out)
        proc = subprocess.Popen(
            list(args),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            bufsize=0,
            preexec_fn=preexec_fn,
        )
        self._children.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        for out in self._files:
            out.close()
        self._children.clear()
        self._files.clear()


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    registry = Processes()
    try:
        yield registry
    finally:
        registry.cleanup()


def read_first_line(proc: subprocess.Popen[bytes], *, timeout: float, log: Path) -> bytes:
    """The first line ``proc`` writes on its (unbuffered, piped) stdout, within ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no first line within {timeout} s; log: {tail(log)}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(
                    f"exited ({proc.wait(timeout=5)}) before its first line; log: {tail(log)}"
                )
            buffer += chunk
    return buffer


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, *, timeout: float) -> int:
    """Send ``sig`` to ``proc`` (by pid) and wait at most ``timeout`` s for its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"pid {proc.pid} still running {timeout} s after {sig!r}") from None


# -- the simulator --------------------------------------------------------------------------


@dataclass
class Simulator:
    """A running ``omics-watcher simulate`` and what its first line announced."""

    proc: subprocess.Popen[bytes]
    announced: dict[str, Any]
    log: Path

    @property
    def endpoint(self) -> str:
        return str(self.announced["endpoint"])

    @property
    def secret_id(self) -> str:
        return str(self.announced["secret_id"])

    @property
    def secret_key(self) -> str:
        return str(self.announced["secret_key"])

    @property
    def runs(self) -> list[str]:
        return list(self.announced["runs"])

    def get(self, path: str) -> Any:
        reply = http("GET", self.endpoint + path)
        assert reply.status == 200, (path, reply.status, reply.text)
        return reply.json()

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        reply = http("POST", self.endpoint + path, body=dict(body))
        assert reply.status in (200, 201), (path, reply.status, reply.text)
        return reply.json()

    def stats(self) -> dict[str, Any]:
        return dict(self.get("/_sim/stats?timeline=0"))

    def timeline(self) -> list[dict[str, Any]]:
        return list(self.get("/_sim/timeline"))

    def statuses(self) -> dict[str, list[str]]:
        """Every run's status sequence so far, from the simulator's own timeline."""
        seq: dict[str, list[str]] = {}
        for change in self.timeline():  # in order within each run
            seq.setdefault(change["run_uuid"], []).append(change["to"])
        return seq

    def credentials_env(self) -> dict[str, str]:
        return {
            "TENCENTCLOUD_SECRET_ID": self.secret_id,
            "TENCENTCLOUD_SECRET_KEY": self.secret_key,
        }


def start_simulator(
    procs: Processes, workdir: Path, *args: str, timeout: float = 30.0
) -> Simulator:
    """``omics-watcher simulate --host 127.0.0.1 ARGS``; returns once its line is read.

    Runs take at most 14 s (``--run-seconds 14``, the simulator's own lifecycle) unless
    ARGS say otherwise: the command's default (300 s) is for people trying it by hand."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "simulator.log"
    pace = [] if "--run-seconds" in args else ["--run-seconds", "14"]
    proc = procs.spawn(
        [*WATCHER, "simulate", "--host", "127.0.0.1", *pace, *args],
        env=clean_env(workdir),
        cwd=workdir,
        log=log,
        stdout_pipe=True,
    )
    line = read_first_line(proc, timeout=timeout, log=log)
    return Simulator(proc=proc, announced=json.loads(line), log=log)


# -- configuration --------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(config: Mapping[str, Any]) -> str:
    """Tables of scalars, plus lists of tables (``[[notifiers]]``); enough for these tests."""
    out: list[str] = []
    for section, body in config.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{section}]]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
                out.append("")
            continue
        out.append(f"[{section}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
        out.append("")
    return "\n".join(out)


def daemon_config(
    workdir: Path,
    *,
    sim: Simulator | None,
    port: int,
    admin_token: str | None = None,
    interval_seconds: float = 1,
    grace: float = 5,
    credentials_in_file: bool = True,
    **sections: Any,
) -> dict[str, Any]:
    """A daemon configuration: state in ``workdir``, listening on ``127.0.0.1:port``."""
    tencent: dict[str, Any] = {}
    if sim is not None:
        tencent["endpoint"] = sim.endpoint
        if credentials_in_file:
            tencent.update(secret_id=sim.secret_id, secret_key=sim.secret_key)
    server: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if admin_token:
        server["admin_token"] = admin_token
    config: dict[str, Any] = {
        "tencentcloud": tencent,
        "polling": {"interval_seconds": interval_seconds},
        "state": {"path": str(workdir / "state.db")},
        "server": server,
        "daemon": {"shutdown_grace_seconds": grace},
        "logging": {"format": "json", "level": "info"},
    }
    for name, value in sections.items():
        if isinstance(value, Mapping) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **value}
        else:
            config[name] = value
    return config


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(config), encoding="utf-8")
    return path


# -- the daemon -----------------------------------------------------------------------------


@dataclass
class Daemon:
    """A running ``omics-watcher run -c FILE``."""

    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    admin_token: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        return http(method, self.url + path, **kwargs)

    def admin(self, method: str, path: str, **kwargs: Any) -> Reply:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return http(method, self.url + path, headers=headers, **kwargs)

    def probe(self, path: str) -> Reply | None:
        return try_http("GET", self.url + path, timeout=2.0)

    def wait_listening(self, timeout: float = 20.0) -> Reply:
        """Until ``/healthz`` answers at all; fails early if the process died."""

        def answered() -> Reply | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {tail(self.log)}")
            return self.probe("/healthz")

        return wait_for(answered, timeout=timeout, interval=0.05, what="the daemon to listen")

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {tail(self.log)}")
            reply = self.probe("/readyz")
            return reply is not None and reply.status == 200

        wait_for(ready, timeout=timeout, interval=0.05, what="/readyz 200")

    def metrics(self) -> str:
        reply = self.request("GET", "/metrics")
        assert reply.status == 200, reply.status
        return reply.text

    def logs(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (other lines skipped)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found


def start_daemon(
    procs: Processes,
    config_path: Path,
    *,
    port: int,
    env: Mapping[str, str],
    admin_token: str | None = None,
    log_name: str = "daemon.log",
) -> Daemon:
    """``omics-watcher run -c CONFIG`` with JSON logs in ``log_name`` beside the config."""
    log = config_path.parent / log_name
    proc = procs.spawn(
        [*WATCHER, "run", "-c", str(config_path)],
        env=env,
        cwd=config_path.parent,
        log=log,
    )
    return Daemon(proc=proc, port=port, config=config_path, log=log, admin_token=admin_token)


# -- one-shot commands ----------------------------------------------------------------------


def run_cli(
    *args: str,
    env: Mapping[str, str],
    cwd: Path,
    stdin: str | bytes | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``omics-watcher ARGS`` to completion (text output)."""
    data = stdin.decode() if isinstance(stdin, bytes) else stdin
    return subprocess.run(
        [*WATCHER, *args],
        env=dict(env),
        cwd=cwd,
        input=data,
        stdin=None if data is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def list_runs(config: Path, *, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """``omics-watcher list --json -c CONFIG``, parsed."""
    done = run_cli("list", "--json", "-c", str(config), env=env, cwd=config.parent, timeout=30)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return rows


# -- in-process helpers ---------------------------------------------------------------------


def now() -> datetime:
    """The wall clock as the daemon reads it (aware, UTC)."""
    return datetime.now(UTC)


FAKE_START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


class FakeClock:
    """Wall and monotonic clocks that move only when told, together.

    Call it for the wall time as a ``datetime`` (what :class:`~watcher.store.Store` takes);
    :meth:`wall` and :meth:`monotonic` are the float clocks the simulator takes.
    """

    def __init__(self, start: datetime = FAKE_START, *, monotonic_start: float = 500.0) -> None:
        self.start = start
        self.monotonic_start = monotonic_start
        self.elapsed = 0.0

    @property
    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    @property
    def epoch(self) -> float:
        """The wall clock's start as a Unix time."""
        return self.start.timestamp()

    def __call__(self) -> datetime:
        return self.now

    def wall(self) -> float:
        return self.epoch + self.elapsed

    def monotonic(self) -> float:
        return self.monotonic_start + self.elapsed

    def advance(self, seconds: float) -> datetime:
        self.elapsed += seconds
        return self.now


class OmicsServer(Protocol):
    """Where an Omics API answers and the key it accepts (either kind of simulator)."""

    @property
    def endpoint(self) -> str: ...

    @property
    def secret_id(self) -> str: ...

    @property
    def secret_key(self) -> str: ...


def make_client(
    server: OmicsServer,
    session: aiohttp.ClientSession,
    *,
    limiters: Mapping[str, Limiter] | None = None,
    secret_key: str | None = None,
    credentials: CredentialProvider | None = None,
    timeout: float = 5.0,
) -> OmicsClient:
    """The real client against ``server``; one 20/s limiter for every action unless given."""
    key = secret_key or server.secret_key
    return OmicsClient(
        session=session,
        endpoint=server.endpoint,
        region="ap-guangzhou",
        credentials=credentials or StaticProvider(Credential(server.secret_id, key), name="t"),
        limiters=limiters if limiters is not None else {"default": PacingLimiter(20)},
        timeout=timeout,
    )


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on 127.0.0.1 at a free port for the block; yields ``http://127.0.0.1:PORT``.

    The one way these tests stand up a local peer (receiver, fake API, the daemon's own app),
    so each states only its routes. Teardown waits at most 0.1 s for handlers still running:
    a receiver a test told to hang must not hold the test up for aiohttp's default minute. No
    access log: a test's peer is not what the test reads logs of.
    """
    runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_hook(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A local receiver answering ``POST /hook`` on 127.0.0.1 with ``handle``; yields its URL."""
    app = web.Application()
    app.router.add_post("/hook", handle)
    async with serve(app) as base:
        yield base + "/hook"


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0) -> None:
    """Yield to the loop (every 20 ms) until ``condition()`` holds; ``TimeoutError`` after
    ``timeout`` s. The default is generous because a busy machine is slow, not wrong: only a
    test whose point is "soon" passes a shorter one. A condition that must await (a store
    read) is an ``async def``: its answer is awaited."""
    async with asyncio.timeout(timeout):
        while not await _holds(condition()):
            await asyncio.sleep(0.02)


async def _holds(answer: bool | Awaitable[bool]) -> bool:
    return answer if isinstance(answer, bool) else await answer


@contextlib.asynccontextmanager
async def delivering(dispatcher: Dispatcher, *, grace: float) -> AsyncIterator[Dispatcher]:
    """``dispatcher.run()`` in the background for the block, then stopped with ``grace`` s to
    finish what it is sending, and awaited, so no delivery task outlives the test."""
    task = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        await dispatcher.stop(asyncio.get_running_loop().time() + grace)
        await task


@contextlib.asynccontextmanager
async def daemon_task(
    settings: Settings, *, wiring: Wiring | None = None, stop_timeout: float | None = None
) -> AsyncIterator[asyncio.Task[int]]:
    """``run_daemon`` in this process (no environment, so only ``settings`` count) for the
    block; yields its task so a wait can give up early when it ends. At the end the daemon is
    asked to stop and must exit 0 (within ``stop_timeout`` s when given)."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(settings, stop=stop, environ={}, wiring=wiring))
    try:
        yield task
    finally:
        stop.set()
        assert await asyncio.wait_for(task, stop_timeout) == 0


# Outage periods of seconds, not minutes, for a daemon run in this process (Wiring.outages).
SHORT_OUTAGES = OutageTiming(
    unreachable_seconds=2.0, summary_seconds=1.0, recovery_quiet_seconds=0.5
)


@dataclass
class InProcessDaemon:
    """A daemon run by :func:`in_process_daemon`: its probes, gauge and JSON log lines."""

    url: str
    http: aiohttp.ClientSession
    log: io.StringIO

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with self.http.get(self.url + "/readyz") as resp:
            return resp.status, await resp.json()

    async def reason(self) -> str | None:
        """What ``/readyz`` says is wrong (``None``: ready)."""
        _, body = await self.readyz()
        reason = body["reason"]
        assert reason is None or isinstance(reason, str)
        return reason

    async def gauge(self) -> dict[str, float]:
        async with self.http.get(self.url + "/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            if family.name == "omics_watcher_polling_state":
                return {s.labels["state"]: s.value for s in family.samples}
        raise AssertionError("no omics_watcher_polling_state in /metrics")

    async def wait_reason(self, reason: str | None, *, timeout: float) -> None:
        """Until ``/readyz`` gives ``reason`` (``None``: 200 ready)."""
        seen: list[tuple[int, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            status, body = await self.readyz()
            seen.append((status, body.get("reason")))
            if (reason is None and status == 200) or (status == 503 and body["reason"] == reason):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"/readyz never said {reason!r} in {timeout} s; saw {seen[-5:]}")

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.log.getvalue().splitlines() if line]
        return [r for r in found if event is None or r["event"] == event]

    async def wait_logged(self, event: str, *, timeout: float) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.records(event):
            if loop.time() >= deadline:
                raise AssertionError(f"no {event} line in {timeout} s: {self.records()[-5:]}")
            await asyncio.sleep(0.1)
        return self.records(event)


@contextlib.asynccontextmanager
async def in_process_daemon(
    settings: Settings,
    *,
    port: int,
    timing: OutageTiming = SHORT_OUTAGES,
    stop: asyncio.Event | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[InProcessDaemon]:
    """``run_daemon`` with JSON logs captured, from its first ``/healthz`` 200 until the block
    ends (then stopped cleanly, exit 0). ``timing``: its outage periods (short by default, so
    ``api_unreachable`` comes in seconds); ``environ``: its environment (``NOTIFY_SOCKET``)."""
    log = io.StringIO()
    configure(fmt="json", level="info", stream=log)
    stop = stop or asyncio.Event()
    task = asyncio.create_task(
        run_daemon(settings, stop=stop, environ=environ or {}, wiring=Wiring(outages=timing))
    )
    try:
        async with aiohttp.ClientSession() as http:
            running = InProcessDaemon(f"http://127.0.0.1:{port}", http, log)
            for _ in range(200):
                if task.done():
                    task.result()
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(running.url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            yield running
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
    finally:
        stop.set()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        structlog.reset_defaults()


def find_sample(text: str, sample: str) -> float | None:
    """The value of the line ``sample`` (a metric name with its labels as exported, e.g.
    ``x_total{via="api"}``) in a /metrics page, or ``None`` when there is none: read as text,
    by exact prefix, as an operator's grep would."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def sample_value(text: str, sample: str) -> float:
    """:func:`find_sample`, failing the test when the page has no such line."""
    value = find_sample(text, sample)
    if value is None:
        raise AssertionError(f"{sample} not in /metrics")
    return value


@contextlib.asynccontextmanager
async def admin_server(
    store: Store, token: str, *, limits: ConnectionLimits | None = None
) -> AsyncIterator[int]:
    """The daemon's HTTP app (probes, ``/metrics``, the admin API with ``token``) over
    ``store``, behind the real :class:`HttpServer` and its connection guard on 127.0.0.1;
    yields the port and stops the server on exit (inside the caller's log capture, so what
    the stop writes is seen)."""
    metrics = Metrics()
    app = build_app(
        store=SqliteStore(store),
        metrics=metrics,
        health=Health(),
        admin_token=token,
        default_project_id="",
    )
    server = HttpServer(app, limits=limits, shutdown_timeout=1.0, metrics=metrics)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.stop()


def state_file_before(path: Path, upto: int) -> sqlite3.Connection:
    """A new SQLite state file at ``path`` as a release knowing only the first ``upto``
    migrations wrote it (its schema, ``user_version`` and ``application_id``), so a test can
    add that release's rows and check what the next :meth:`Store.open` migrates. Returns the
    open connection (autocommit); the caller closes it."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statements in MIGRATIONS[:upto]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {upto}")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    return conn
