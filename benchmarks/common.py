"""Shared plumbing for the benchmarks: a simulator in its own process, the daemon as a
subprocess, the paced "floor" client, machine facts and small statistics helpers.

Everything here talks to 127.0.0.1 only and every process it starts is stopped by the
context manager that started it (SIGTERM, then SIGKILL after a grace period).

The simulator child (``python benchmarks/common.py sim CONFIG_JSON``) is the stock
:class:`watcher.simulator.Simulator` served on a free port, plus one benchmark-only
middleware that records the arrival time (``time.time()``) and run of every GetRunStatus
request, exposed at ``GET /_bench/arrivals?since=T`` as ``{"t": [...], "i": [...]}``
(``i`` indexes the ``runs`` list of the first stdout line). That exact per-request log is what
fairness (per-run poll gaps), startup time (first poll) and detection latency are computed
from; the simulator's own ``/_sim/stats`` histogram gives the per-second rate.

The floor child (``python benchmarks/common.py floor ...``) is the least any poller must do:
a bare aiohttp loop paced at a fixed rate. Two kinds (``FLOOR_KINDS``): ``signed`` signs each
request with :func:`watcher.omics.signing.sign` (fresh body, headers and timestamp per
request), POSTs it and ``json.loads`` the answer; ``prepared`` (issue 12's floor) POSTs one
body with headers signed once before the loop and reads the answer's bytes; ``grouped`` is
``prepared`` sending ``STATUS_GROUP`` requests at once every ``STATUS_GROUP / rate`` seconds,
as the daemon's GetRunStatus limiter groups them (``watcher.polling.common.STATUS_GROUP``).
Nothing else.

``daemon(..., source=DIR)`` runs the daemon from another source tree (``PYTHONPATH=DIR
python -P -m watcher``: without ``-P`` the working directory's ``watcher`` would come
first), e.g. an export of an older commit, to measure old and new code side by side with the
same benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable


def omics_watcher_exe() -> list[str]:
    """The ``omics-watcher`` console script of this venv (else ``python -m watcher``)."""
    candidate = Path(PYTHON).with_name("omics-watcher")
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("omics-watcher")
    return [found] if found else [PYTHON, "-m", "watcher"]


# -- machine --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def wait_for_quiet(max_load: float, max_wait: float, *, log: Any = print) -> list[float]:
    """Wait (up to ``max_wait`` s) until the 1-minute load average is below ``max_load``."""
    deadline = time.monotonic() + max_wait
    while True:
        load = [round(x, 2) for x in os.getloadavg()]
        if load[0] <= max_load or time.monotonic() >= deadline:
            if load[0] > max_load:
                log(f"# load {load[0]} still above {max_load} after waiting; going ahead")
            return load
        log(f"# load {load[0]} > {max_load}: waiting for a quieter machine")
        time.sleep(20)


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def sliding_max(times: Sequence[float], width: float = 1.0) -> int:
    """The most timestamps in any half-open window ``(t - width, t]``."""
    data = sorted(times)
    best = lo = 0
    for hi, t in enumerate(data):
        while data[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def http_json(url: str, *, method: str = "GET", body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # 127.0.0.1 only
        return json.loads(resp.read())


# -- process helpers ------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], grace: float = 15.0) -> tuple[int | None, float]:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL. Returns (exit code, seconds to exit)."""
    if proc.poll() is not None:
        return proc.returncode, 0.0
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode, time.monotonic() - started


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a process, in MB (Linux only)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# -- the simulator child --------------------------------------------------------------------


@dataclass
class Sim:
    proc: subprocess.Popen[str]
    endpoint: str
    secret_id: str
    secret_key: str
    runs: list[str]

    def stats(self, *, timeline: bool = False) -> dict[str, Any]:
        flag = "1" if timeline else "0"
        return http_json(f"{self.endpoint}/_sim/stats?timeline={flag}", timeout=120)  # type: ignore[no-any-return]

    def timeline(self) -> list[dict[str, Any]]:
        return http_json(f"{self.endpoint}/_sim/timeline", timeout=120)  # type: ignore[no-any-return]

    def arrivals(self, since: float = 0.0) -> tuple[list[float], list[int]]:
        data = http_json(f"{self.endpoint}/_bench/arrivals?since={since!r}", timeout=120)
        return data["t"], data["i"]


@contextlib.contextmanager
def simulator(config: dict[str, Any]) -> Iterator[Sim]:
    """A simulator child process serving ``SimulatorConfig(**config)`` on a free port."""
    proc = subprocess.Popen(
        [PYTHON, str(Path(__file__).resolve()), "sim", json.dumps(config)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=str(REPO),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator child exited before announcing its endpoint")
        info = json.loads(line)
        yield Sim(proc, info["endpoint"], info["secret_id"], info["secret_key"], info["runs"])
    finally:
        stop_process(proc, grace=10)


def _sim_child(config_json: str) -> None:
    from aiohttp import web

    from watcher.simulator import Simulator, SimulatorConfig

    raw = json.loads(config_json)
    for key in ("queued_seconds", "initializing_seconds", "running_seconds", "flap_statuses"):
        if key in raw:
            raw[key] = tuple(raw[key])
    config = SimulatorConfig(**raw)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        sim = Simulator(config)
        index = {u: i for i, u in enumerate(sim.run_uuids)}
        times: list[float] = []
        runs: list[int] = []

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "POST" and request.headers.get("X-TC-Action") == "GetRunStatus":
                now = time.time()
                body = await request.read()  # aiohttp caches it for the handler
                try:
                    uuid = json.loads(body).get("RunUuid")
                except (ValueError, AttributeError):
                    uuid = None
                times.append(now)
                runs.append(index.get(uuid, -1))
            return await handler(request)

        async def arrivals(request: web.Request) -> web.StreamResponse:
            since = float(request.query.get("since", "0"))
            import bisect

            start = bisect.bisect_left(times, since)
            return web.json_response({"t": times[start:], "i": runs[start:]})

        app = sim.app()
        app.middlewares.append(record)
        app.router.add_get("/_bench/arrivals", arrivals)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        sim.bind(f"http://127.0.0.1:{port}")
        line = {
            "endpoint": sim.endpoint,
            "secret_id": sim.secret_id,
            "secret_key": sim.secret_key,
            "runs": sim.run_uuids,
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


# -- the daemon subprocess ------------------------------------------------------------------


@dataclass
class Daemon:
    workdir: Path
    config_path: Path
    state_path: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.time() just before the process was spawned
    exit_code: int | None = None
    exit_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # run the daemon from this source tree instead of the venv's

    def command(self) -> list[str]:
        # -P: no working directory first on sys.path, else run from the repository root
        # ``-m watcher`` imports the working tree's package instead of ``source``'s.
        return [PYTHON, "-P", "-m", "watcher"] if self.source else omics_watcher_exe()

    def track(self, uuids: Sequence[str]) -> float:
        """``omics-watcher track -c FILE -`` with the UUIDs on stdin; returns seconds taken."""
        started = time.monotonic()
        done = subprocess.run(
            [*self.command(), "track", "-c", str(self.config_path), "-"],
            input=("\n".join(uuids) + "\n").encode(),
            env=self.env,
            capture_output=True,
            check=False,
        )
        took = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"track failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
        return took

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [*self.command(), "run", "-c", str(self.config_path)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.exit_code is None:
            self.exit_code, self.exit_seconds = stop_process(self.proc, grace=20)

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""


def write_config(
    path: Path,
    *,
    endpoint: str,
    state: Path,
    rate: float,
    interval: float,
    notifiers: Sequence[dict[str, str]] = (),
    log_level: str = "info",
) -> None:
    lines = [
        "[tencentcloud]",
        f'endpoint = "{endpoint}"',
        'region = "ap-guangzhou"',
        "",
        "[polling]",
        f"rate_per_second = {float(rate)!r}",
        f"interval_seconds = {float(interval)!r}",
        "request_timeout_seconds = 10.0",
        "",
        "[state]",
        f'path = "{state}"',
        "",
        "[server]",
        'listen = "127.0.0.1:0"',
        "",
        "[logging]",
        'format = "json"',
        f'level = "{log_level}"',
        "",
    ]
    for notifier in notifiers:
        lines.append("[[notifiers]]")
        lines.extend(f'{k} = "{v}"' for k, v in notifier.items())
        lines.append("")
    path.write_text("\n".join(lines))


@contextlib.contextmanager
def daemon(
    sim: Sim,
    *,
    rate: float,
    interval: float,
    notifiers: Sequence[dict[str, str]] = (),
    keep_dir: bool = False,
    source: Path | None = None,
) -> Iterator[Daemon]:
    """A configured (not yet started) daemon against ``sim`` in a fresh temporary directory."""
    workdir = Path(tempfile.mkdtemp(prefix="omics-bench-"))
    config_path = workdir / "omics-watcher.toml"
    state_path = workdir / "state.db"
    write_config(
        config_path,
        endpoint=sim.endpoint,
        state=state_path,
        rate=rate,
        interval=interval,
        notifiers=notifiers,
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OMICS_WATCHER_", "TENCENTCLOUD_", "TKE_"))
    }
    env["TENCENTCLOUD_SECRET_ID"] = sim.secret_id
    env["TENCENTCLOUD_SECRET_KEY"] = sim.secret_key
    env["HOME"] = str(workdir)  # no profile file from the real home
    if source is not None:
        env["PYTHONPATH"] = str(source)
    d = Daemon(workdir, config_path, state_path, workdir / "daemon.log", env, source=source)
    try:
        yield d
    finally:
        d.stop()
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


# -- the floor child ------------------------------------------------------------------------


FLOOR_KINDS = {
    "prepared": "one prepared body, headers signed once before the loop; POST, read the bytes",
    "grouped": "prepared, STATUS_GROUP requests at once (as the daemon's limiter groups them)",
    "signed": "per request: JSON body, headers, TC3 signature; POST, json.loads the answer",
}


def run_floor(
    sim: Sim,
    *,
    rate: float,
    warmup: float,
    window: float,
    timeout: float = 600,
    kind: str = "signed",
) -> dict[str, Any]:
    """The paced bare-aiohttp loop (``kind`` one of ``FLOOR_KINDS``) in its own process."""
    if kind not in FLOOR_KINDS:
        raise ValueError(f"floor kind must be one of {sorted(FLOOR_KINDS)}")
    args = {
        "kind": kind,
        "endpoint": sim.endpoint,
        "secret_id": sim.secret_id,
        "secret_key": sim.secret_key,
        "runs": sim.runs[:1000],
        "rate": rate,
        "warmup": warmup,
        "window": window,
    }
    done = subprocess.run(
        [PYTHON, str(Path(__file__).resolve()), "floor"],
        input=json.dumps(args).encode(),
        capture_output=True,
        check=True,
        timeout=timeout,
        cwd=str(REPO),
    )
    report: dict[str, Any] = json.loads(done.stdout)
    report["kind"], report["measures"] = kind, FLOOR_KINDS[kind]
    return report


def _floor_child() -> None:
    import aiohttp
    import psutil

    from watcher.omics.signing import sign
    from watcher.polling.common import STATUS_GROUP

    args = json.loads(sys.stdin.read())
    endpoint: str = args["endpoint"]
    host = endpoint.split("://", 1)[1].rstrip("/")
    url = endpoint.rstrip("/") + "/"
    runs: list[str] = args["runs"]
    rate: float = args["rate"]
    kind = args.get("kind", "signed")
    prepared = kind in ("prepared", "grouped")
    together = STATUS_GROUP if kind == "grouped" else 1  # sent at once, every together / rate
    me = psutil.Process()

    def signed_request(run_uuid: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"RunUuid": run_uuid}).encode()
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Host": host,
            "X-TC-Action": "GetRunStatus",
            "X-TC-Version": "2022-11-28",
            "X-TC-Timestamp": str(ts),
            "X-TC-Region": "ap-guangzhou",
            "Authorization": sign(
                secret_id=args["secret_id"],
                secret_key=args["secret_key"],
                host=host,
                body=body,
                timestamp=ts,
            ),
        }
        return body, headers

    # The floor: everything built once; the signature stays valid for minutes.
    prepared_body, prepared_headers = signed_request(runs[0])

    async def post_prepared(session: aiohttp.ClientSession) -> bool:
        async with session.post(url, data=prepared_body, headers=prepared_headers) as resp:
            payload = await resp.read()
        return b'"Error"' in payload

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            start = loop.time()
            measure_at = start + args["warmup"]
            end_at = measure_at + args["window"]
            cpu0: Any = None
            ctx0: Any = None
            t0 = 0.0
            sent = errors = 0
            i = 0
            due = start
            while True:
                now = loop.time()
                if cpu0 is None and now >= measure_at:
                    cpu0, t0, sent, errors = me.cpu_times(), time.time(), 0, 0
                    ctx0 = me.num_ctx_switches()
                if now >= end_at:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                due += together / rate
                if together > 1:
                    answers = await asyncio.gather(
                        *(post_prepared(session) for _ in range(together))
                    )
                    errors += sum(answers)
                    sent += together - 1
                elif prepared:
                    errors += await post_prepared(session)
                else:
                    body, headers = signed_request(runs[i % len(runs)])
                    i += 1
                    async with session.post(url, data=body, headers=headers) as resp:
                        answer = json.loads(await resp.read())
                    if "Error" in answer.get("Response", {}):
                        errors += 1
                sent += 1
            cpu1, t1 = me.cpu_times(), time.time()
            ctx1 = me.num_ctx_switches()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        return {
            "requests": sent,
            "errors": errors,
            "seconds": t1 - t0,
            "rate": sent / (t1 - t0),
            "cpu_seconds": cpu,
            "cpu_ms_per_request": 1000 * cpu / max(sent, 1),
            "user_ms_per_request": 1000 * (cpu1.user - cpu0.user) / max(sent, 1),
            "system_ms_per_request": 1000 * (cpu1.system - cpu0.system) / max(sent, 1),
            "wakeups_per_request": (ctx1.voluntary - ctx0.voluntary) / max(sent, 1),
            "rss_mb": me.memory_info().rss / 1024 / 1024,
        }

    print(json.dumps(asyncio.run(main())))


if __name__ == "__main__":
    if sys.argv[1:2] == ["sim"]:
        _sim_child(sys.argv[2])
    elif sys.argv[1:2] == ["floor"]:
        _floor_child()
    else:
        sys.exit("usage: common.py sim CONFIG_JSON | common.py floor < ARGS_JSON")


class Receiver:
    """A webhook receiver on 127.0.0.1 in a thread: each event's first arrival time and body."""

    def __init__(self) -> None:
        self.received: dict[str, tuple[float, dict[str, Any]]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                now = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    event = json.loads(body)
                    outer.received.setdefault(event["id"], (now, event))
                except (ValueError, KeyError):
                    pass
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
