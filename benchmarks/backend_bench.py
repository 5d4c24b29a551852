"""PostgreSQL beside SQLite at 100,000 tracked runs, in one run (issue 15).

Why: the daemon now runs on either backend (``[state] path`` or ``[state] url``). On SQLite
the state's work happens inside the daemon process; on PostgreSQL part of it moves into the
server's processes. This benchmark measures the same daemon on both, alternating backends
round by round in one run (the order flips every round, so a machine that gets busier during
the run favours neither), with the load average printed at every step:

1. **CPU per poll** of the whole daemon (``omics-watcher run`` as a subprocess, psutil
   user + system) with 100,000 tracked runs in the registry, of which ``--active`` (300) are
   never-finishing runs of the simulator polled at the full budget (``rate_per_second = 20``,
   ``interval_seconds = 1``) and the rest finished. For PostgreSQL also the server's CPU
   (every process of the throwaway cluster: the daemon's backends and the server's own
   background processes; nothing else talks to it during a window), reported apart and
   added: **daemon + server** is the figure to set beside SQLite, whose store work is inside
   the daemon process. The prepared-body floor (``common.py floor``, issue 12's) runs the
   whole time against its own simulator and is measured over the same seconds as every
   window. Each window also reads ``pg_stat_user_tables`` for ``runs`` before and after:
   rows read by sequential scans per poll (0 when every per-poll query uses an index).
2. **Deliveries per second** from a backlog: with the daemon stopped, ``--events`` (5,000)
   events are recorded through the store's own ``record_event`` (one transaction each, an
   outbox row for the webhook notifier), then the daemon starts and delivers them to a
   webhook receiver in its own process (Standard Webhooks signing on). Rate from the first
   to the last receipt; daemon and server CPU over that span per delivery. The daemon keeps
   polling at 20/s meanwhile; its polling CPU per second from part 1 of the same round is
   given beside, to subtract.
3. **Registry at 100,000 runs**: startup (spawn to the first GetRunStatus, both daemon
   starts of each round; on PostgreSQL this includes the lease's one-second takeover pause
   by design), ``GET /v1/runs`` (first page, and first page of ``status=FAILED``),
   ``/metrics`` (runs by status and outbox depth are read at each scrape; median of 20), and
   the store's ``count_by_status()`` timed in this process (median of 20).

The registry is filled set-based, in one statement each (shape: runs
``00000000-0000-4000-8000-<n as 12 hex digits>``, project ``prj-bench``, labels
``{"run_group": "g<n/50>", "team": "t<n%20>"}``, finished ``SUCCESS`` or one in ten
``FAILED`` within the last 10 days; the active runs take the simulator's UUIDs, no
project (as ``track`` without one) and no status, so the first cycle records their first
observations): SQLite with ``INSERT ... SELECT`` over a recursive CTE into a file the
store created, PostgreSQL with ``INSERT ... SELECT ... generate_series`` into a database the
store's migrations created, then ``ANALYZE`` (the test cluster runs without autovacuum,
which would do it on a real server). No history events; the counting triggers fire as for
the daemon's writes. Nothing is cached: both states live in temp folders removed at the end.

PostgreSQL is the tests' throwaway cluster (``tests/pg.py``: PostgreSQL 15 on 127.0.0.1 over
TCP, ``fsync = off``, ``synchronous_commit = off``, ``shared_buffers = 32MB``, autovacuum
off): its CPU is the server's work, not a disk's; a production server with ``fsync`` on
spends about the same CPU and more wall time per commit.

    .venv/bin/python benchmarks/backend_bench.py [--rounds 3] [--window 30] [--code DIR] [--json]

``--code DIR`` runs the daemon from another source tree (``git archive HEAD watcher | tar -x
-C DIR``): a fixed commit, whatever happens in the working tree during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import (  # noqa: E402
    PYTHON,
    Daemon,
    Sim,
    daemon,
    machine_info,
    simulator,
    stop_process,
)
from pg import Cluster, free_port  # noqa: E402
from poll_cost_bench import floor_process  # noqa: E402

from watcher.events import Event, new_event_id  # noqa: E402
from watcher.store.api import open_async_store  # noqa: E402

TOKEN = "bench-backend-token-0123456789"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
BACKENDS = ("sqlite", "postgres")
UUID_SQL_SQLITE = "printf('00000000-0000-4000-8000-%012x', n)"
UUID_SQL_PG = "'00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0')"

_RECEIVER = """
import asyncio, sys, time
from aiohttp import web

seen, times = set(), []

async def hook(request):
    await request.read()
    seen.add(request.headers.get("webhook-id"))
    times.append(time.time())
    return web.Response(status=204)

async def stats(request):
    return web.json_response(
        {"count": len(seen), "first": times[0] if times else None,
         "last": times[-1] if times else None})

async def reset(request):
    seen.clear(); times.clear()
    return web.Response(status=204)

async def main():
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def get(url: str, *, auth: bool = False, timeout: float = 60.0) -> tuple[int, bytes, float]:
    request = urllib.request.Request(url, method="GET")
    if auth:
        request.add_header("Authorization", f"Bearer {TOKEN}")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # 127.0.0.1 only
            return resp.status, resp.read(), time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.perf_counter() - started


def post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30):
        pass


# -- filling the registry -------------------------------------------------------------------


def _labels_sql(n: str, concat: str) -> str:
    """``{"run_group":"g<n/50>","team":"t<n%20>"}`` (dump_json's shape: sorted, compact)."""
    return concat.join(
        ['\'{"run_group":"g\'', f"({n} / 50)", '\'","team":"t\'', f"({n} % 20)", "'\"}'"]
    )


def fill_sqlite(path: Path, *, finished: int, active: list[str], now: float) -> None:
    """100,000 runs into the state file the store created, one INSERT ... SELECT each part."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < ?) "
            "INSERT INTO runs (run_uuid, project_id, labels, tracked_at, status, terminal, "
            "status_since, last_polled_at) "
            f"SELECT {UUID_SQL_SQLITE}, 'prj-bench', {_labels_sql('n', ' || ')}, "
            "? - n * 8.64 - 3600, CASE WHEN n % 10 = 3 THEN 'FAILED' ELSE 'SUCCESS' END, 1, "
            "? - n * 8.64, ? - n * 8.64 FROM g",
            (finished, now, now, now),
        )
        conn.executemany(
            "INSERT INTO runs (run_uuid, project_id, labels, tracked_at) VALUES (?, ?, ?, ?)",
            [(u, "", '{"run_group":"active"}', now) for u in active],
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def fill_postgres(cluster: Cluster, database: str, *, finished: int, active: list[str]) -> None:
    """The same rows with generate_series, in the database the migrations created."""
    now = time.time()
    uuids = ",".join(f"'{u}'" for u in active)  # the simulator's UUIDs: hex and dashes
    cluster.psql(
        "INSERT INTO runs (run_uuid, project_id, labels, tracked_at, status, terminal, "
        "status_since, last_polled_at) "
        f"SELECT {UUID_SQL_PG}, 'prj-bench', ({_labels_sql('n', ' || ')})::json, "
        f"{now} - n * 8.64 - 3600, CASE WHEN n % 10 = 3 THEN 'FAILED' ELSE 'SUCCESS' END, "
        f"true, {now} - n * 8.64, {now} - n * 8.64 FROM generate_series(0, {finished - 1}) n; "
        "INSERT INTO runs (run_uuid, project_id, labels, tracked_at) "
        f"SELECT u, '', '{{\"run_group\":\"active\"}}', {now} "
        f"FROM unnest(ARRAY[{uuids}]::text[]) u; ANALYZE",
        database,
    )


# -- the PostgreSQL server's CPU ------------------------------------------------------------


class ServerCpu:
    """CPU (user + system) of every process of the cluster: the postmaster and its children."""

    def __init__(self, cluster: Cluster) -> None:
        pid = int((cluster.folder / "data" / "postmaster.pid").read_text().split()[0])
        self.postmaster = psutil.Process(pid)

    def sample(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in [self.postmaster, *self.postmaster.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = float(t.user + t.system)
        return out

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        """Seconds used between two samples (a process born in between counts from zero)."""
        return sum(c - before.get(pid, 0.0) for pid, c in after.items())


def seq_reads(cluster: Cluster, database: str) -> tuple[int, int]:
    """``runs``' sequential scans and rows they read so far (pg_stat_user_tables)."""
    out = cluster.psql(
        "SELECT pg_stat_force_next_flush(); "
        "SELECT seq_scan || ' ' || seq_tup_read FROM pg_stat_user_tables WHERE relname = 'runs'",
        database,
    )
    scans, rows = out.splitlines()[-1].split()
    return int(scans), int(rows)


# -- one backend ----------------------------------------------------------------------------


class Backend:
    """A daemon configuration on one backend, started and stopped round after round."""

    def __init__(self, name: str, d: Daemon, port: int, receiver: str) -> None:
        self.name = name
        self.d = d
        self.base = f"http://127.0.0.1:{port}"
        self.url: str | None = None  # PostgreSQL only
        self.cluster: Cluster | None = None
        self.database = ""
        self.server: ServerCpu | None = None
        text = d.config_path.read_text()
        text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
        text = text.replace("[server]\n", f'[server]\nadmin_token = "{TOKEN}"\n')
        d.config_path.write_text(text)
        self.receiver = receiver

    def use_postgres(self, cluster: Cluster, database: str) -> None:
        self.cluster, self.database = cluster, database
        self.url = cluster.url(database)
        self.server = ServerCpu(cluster)
        text = self.d.config_path.read_text()
        text = text.replace(f'path = "{self.d.state_path}"', f'url = "{self.url}"')
        self.d.config_path.write_text(text)

    async def open_store(self) -> Any:
        if self.url is not None:
            return await open_async_store(url=self.url)
        return await open_async_store(path=self.d.state_path)

    def start(self, sim: Sim) -> float:
        """Spawn the daemon; seconds from spawn to its first GetRunStatus."""
        self.d.exit_code = None
        self.d.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.d.proc is not None
            if self.d.proc.poll() is not None:
                raise RuntimeError(f"{self.name} daemon exited:\n{self.d.log_tail()}")
            times, _ = sim.arrivals(since=self.d.started_at)
            if times:
                return times[0] - self.d.started_at
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no poll within 120 s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The log's last lines, without the one line per delivery."""
        lines = self.d.log_tail(400_000).splitlines()
        return "\n".join([x for x in lines if "notify_delivered" not in x][-30:])

    def stop(self) -> None:
        self.d.stop()

    def cpu(self) -> float:
        assert self.d.proc is not None
        t = psutil.Process(self.d.proc.pid).cpu_times()
        return float(t.user + t.system)

    def server_sample(self) -> dict[int, float]:
        return self.server.sample() if self.server else {}


def requests_between(sim: Sim, t0: float, t1: float) -> int:
    times, _ = sim.arrivals(since=t0)
    return sum(1 for t in times if t <= t1)


def poll_window(
    b: Backend, sim: Sim, floor_sim: Sim, floor_pid: int, window: float
) -> dict[str, Any]:
    floor = psutil.Process(floor_pid)
    scans0 = seq_reads(b.cluster, b.database) if b.cluster else None
    load0 = load()
    t0 = time.time()
    cpu0, srv0 = b.cpu(), b.server_sample()
    f0 = sum(floor.cpu_times()[:2])
    time.sleep(window)
    cpu1, srv1 = b.cpu(), b.server_sample()
    f1 = sum(floor.cpu_times()[:2])
    t1 = time.time()
    polls = requests_between(sim, t0, t1)
    floor_n = requests_between(floor_sim, t0, t1)
    out: dict[str, Any] = {
        "load": [load0, load()],
        "seconds": t1 - t0,
        "polls": polls,
        "rate": polls / (t1 - t0),
        "daemon_ms": 1000 * (cpu1 - cpu0) / max(polls, 1),
        "daemon_cpu_per_s": (cpu1 - cpu0) / (t1 - t0),
        "floor_ms": 1000 * (f1 - f0) / max(floor_n, 1),
    }
    server = ServerCpu.spent(srv0, srv1) if b.server else 0.0
    out["server_ms"] = 1000 * server / max(polls, 1) if b.server else None
    out["total_ms"] = out["daemon_ms"] + (out["server_ms"] or 0.0)
    out["server_cpu_per_s"] = server / (t1 - t0)
    out["daemon_floor_x"] = out["daemon_ms"] / out["floor_ms"]
    out["total_floor_x"] = out["total_ms"] / out["floor_ms"]
    if b.cluster and scans0 is not None:
        scans1 = seq_reads(b.cluster, b.database)
        out["runs_seq_scans_per_poll"] = (scans1[0] - scans0[0]) / max(polls, 1)
        out["runs_seq_rows_per_poll"] = (scans1[1] - scans0[1]) / max(polls, 1)
    return out


def registry_ops(b: Backend) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, query in (("runs_page", ""), ("runs_failed_page", "status=FAILED")):
        took = []
        for _ in range(5):
            status, body, s = get(f"{b.base}/v1/runs?{query}", auth=True)
            if status != 200:
                raise RuntimeError(f"/v1/runs?{query}: {status} {body[:200]!r}")
            took.append(s)
        out[name + "_ms"] = 1000 * statistics.median(took)
    scrapes = []
    for _ in range(20):
        status, body, s = get(f"{b.base}/metrics")
        if status != 200 or b"omics_watcher_tracked_runs{" not in body:
            raise RuntimeError(f"/metrics: {status} without the runs family")
        scrapes.append(s)
    out["metrics_ms"] = 1000 * statistics.median(scrapes)
    return out


async def store_work(b: Backend, events: int, first_run: int) -> dict[str, Any]:
    """count_by_status timed, then the backlog recorded (daemon stopped)."""
    store = await b.open_store()
    try:
        took = []
        for _ in range(20):
            started = time.perf_counter()
            counts = await store.count_by_status()
            took.append(time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(events):
            await store.record_event(_event(first_run + i), notifiers=["hook"])
        recorded = time.perf_counter() - started
    finally:
        await store.close()
    return {
        "count_by_status_ms": 1000 * statistics.median(took),
        "tracked": sum(counts.values()),
        "record_s": recorded,
    }


def _event(n: int) -> Event:
    now = datetime.now(UTC)
    uuid = f"00000000-0000-4000-8000-{n % 99_000:012x}"
    return Event(
        type="run.status_changed",
        id=new_event_id(now),
        timestamp=now,
        data={
            "run_uuid": uuid,
            "project_id": "prj-bench",
            "previous_status": "RUNNING",
            "status": "SUCCESS",
            "terminal": True,
            "observed_at": now.isoformat(),
            "labels": {"run_group": f"g{n // 50}", "team": f"t{n % 20}"},
            "metadata": {"Status": "SUCCESS", "RunUuid": uuid},
        },
    )


def drain(b: Backend, sim: Sim, events: int) -> dict[str, Any]:
    """Start the daemon on the backlog; deliveries/s and CPU per delivery."""
    post(f"{b.receiver}/reset")
    load0 = load()
    startup = b.start(sim)
    deadline = time.monotonic() + 600
    first: tuple[float, float, dict[int, float], int] | None = None
    while time.monotonic() < deadline:
        stats = json.loads(get(f"{b.receiver}/stats")[1])
        if first is None and stats["count"]:
            first = (time.time(), b.cpu(), b.server_sample(), stats["count"])
        if stats["count"] >= events:
            cpu1, srv1 = b.cpu(), b.server_sample()
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"{b.name}: backlog not delivered:\n{b.d.log_tail()}")
    assert first is not None
    span = stats["last"] - stats["first"]
    n = stats["count"] - first[3]
    server = ServerCpu.spent(first[2], srv1) if b.server else 0.0
    return {
        "load": [load0, load()],
        "startup_s": startup,
        "delivered": stats["count"],
        "span_s": span,
        "per_s": (stats["count"] - 1) / span,
        "daemon_ms": 1000 * (cpu1 - first[1]) / max(n, 1),
        "server_ms": 1000 * server / max(n, 1) if b.server else None,
    }


# -- the run --------------------------------------------------------------------------------


@contextlib.contextmanager
def receiver_process() -> Iterator[str]:
    proc = subprocess.Popen([PYTHON, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        stop_process(proc, grace=5)


def one_round(
    b: Backend, sim: Sim, floor_sim: Sim, floor_pid: int, args: argparse.Namespace, k: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": b.name, "round": k + 1}
    row["startup_s"] = b.start(sim)
    # A whole cycle (the first round's first observations) and a settle, then the window.
    time.sleep(args.active / 20 + args.settle)
    row["poll"] = poll_window(b, sim, floor_sim, floor_pid, args.window)
    row.update(registry_ops(b))
    b.stop()
    row.update(asyncio.run(store_work(b, args.events, k * args.events)))
    row["delivery"] = drain(b, sim, args.events)
    b.stop()
    p, dl = row["poll"], row["delivery"]
    server = f" + server {p['server_ms']:.3f}" if p["server_ms"] is not None else ""
    seq = (
        f", runs seq rows/poll {p['runs_seq_rows_per_poll']:.0f}"
        if "runs_seq_rows_per_poll" in p
        else ""
    )
    say(
        f"# round {k + 1} {b.name:8s} load {p['load'][0][0]}→{p['load'][1][0]}: "
        f"startup {row['startup_s']:.2f}/{dl['startup_s']:.2f} s; "
        f"{p['rate']:.2f} polls/s, daemon {p['daemon_ms']:.3f} ms/poll{server} "
        f"(floor {p['floor_ms']:.3f}){seq}; /v1/runs {row['runs_page_ms']:.1f} ms, "
        f"FAILED {row['runs_failed_page_ms']:.1f} ms, /metrics {row['metrics_ms']:.1f} ms, "
        f"count_by_status {row['count_by_status_ms']:.2f} ms; "
        f"deliveries {dl['per_s']:.0f}/s, daemon {dl['daemon_ms']:.3f} ms"
        + (f" + server {dl['server_ms']:.3f} ms" if dl["server_ms"] is not None else "")
        + f"/delivery (load {dl['load'][0][0]}→{dl['load'][1][0]})"
    )
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(name: str, pick: Any) -> float | None:
        values = [pick(r) for r in rows if r["backend"] == name]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    figures = {
        "startup_s": lambda r: r["startup_s"],
        "startup_backlog_s": lambda r: r["delivery"]["startup_s"],
        "polls_per_s": lambda r: r["poll"]["rate"],
        "daemon_ms_per_poll": lambda r: r["poll"]["daemon_ms"],
        "server_ms_per_poll": lambda r: r["poll"]["server_ms"],
        "total_ms_per_poll": lambda r: r["poll"]["total_ms"],
        "floor_ms": lambda r: r["poll"]["floor_ms"],
        "daemon_floor_x": lambda r: r["poll"]["daemon_floor_x"],
        "total_floor_x": lambda r: r["poll"]["total_floor_x"],
        "daemon_cpu_per_s": lambda r: r["poll"]["daemon_cpu_per_s"],
        "runs_seq_rows_per_poll": lambda r: r["poll"].get("runs_seq_rows_per_poll"),
        "deliveries_per_s": lambda r: r["delivery"]["per_s"],
        "daemon_ms_per_delivery": lambda r: r["delivery"]["daemon_ms"],
        "server_ms_per_delivery": lambda r: r["delivery"]["server_ms"],
        "record_backlog_s": lambda r: r["record_s"],
        "runs_page_ms": lambda r: r["runs_page_ms"],
        "runs_failed_page_ms": lambda r: r["runs_failed_page_ms"],
        "metrics_ms": lambda r: r["metrics_ms"],
        "count_by_status_ms": lambda r: r["count_by_status_ms"],
    }
    return {name: {k: med(name, f) for k, f in figures.items()} for name in BACKENDS}


def print_table(summary: dict[str, Any], rounds: int) -> None:
    say(f"\nmedians over {rounds} rounds per backend")
    say(f"{'figure':28s} {'sqlite':>12s} {'postgres':>12s}")
    for key in summary["sqlite"]:
        cells = []
        for name in BACKENDS:
            v = summary[name][key]
            cells.append(f"{v:12.3f}" if v is not None else f"{'-':>12s}")
        say(f"{key:28s} {' '.join(cells)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="tracked runs in all")
    parser.add_argument("--active", type=int, default=300, help="never-finishing polled runs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per backend")
    parser.add_argument("--window", type=float, default=30.0, help="CPU window, seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after a cycle")
    parser.add_argument("--events", type=int, default=5000, help="backlog per round")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--code",
        type=Path,
        default=None,
        help="run the daemon from this source tree (a git archive export; default: the venv)",
    )
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "command": " ".join(["benchmarks/backend_bench.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
    }
    sim_config = {"runs": args.active, "seed": args.seed, "kinds": {"forever": 1.0}}
    sim_config["rate_limit"] = 20
    rows: list[dict[str, Any]] = []
    cluster = Cluster.start()
    try:
        with contextlib.ExitStack() as stack:
            receiver = stack.enter_context(receiver_process())
            sim = stack.enter_context(simulator(sim_config))
            floor_sim = stack.enter_context(simulator(sim_config))
            hook = {"name": "hook", "type": "webhook", "url": f"{receiver}/hook"}
            hook["secret"] = SECRET
            backends = []
            for name in BACKENDS:
                d = stack.enter_context(
                    daemon(sim, rate=20, interval=1, notifiers=[hook], source=args.code)
                )
                backends.append(Backend(name, d, free_port(), receiver))
            started = time.monotonic()
            asyncio.run(_create(backends[0]))
            fill_sqlite(
                backends[0].d.state_path,
                finished=args.runs - args.active,
                active=sim.runs,
                now=time.time(),
            )
            database = cluster.new_database(cluster.migrated_template())
            backends[1].use_postgres(cluster, database)
            fill_postgres(cluster, database, finished=args.runs - args.active, active=sim.runs)
            result["fill_s"] = time.monotonic() - started
            say(f"# both registries filled ({args.runs} runs) in {result['fill_s']:.1f} s")
            floor = stack.enter_context(floor_process(floor_sim, kind="prepared", rate=20))
            order = list(backends)
            for k in range(args.rounds):
                for b in order:
                    rows.append(one_round(b, sim, floor_sim, floor.pid, args, k))
                order.reverse()
    finally:
        cluster.stop()
    result["rounds"] = rows
    result["summary"] = summarise(rows)
    result["load_end"] = load()
    print_table(result["summary"], args.rounds)
    if args.json:
        json.dump(result, sys.stdout, default=str)
        sys.stdout.write("\n")
    return 0


async def _create(b: Backend) -> None:
    """The SQLite state file, created and migrated by the store itself."""
    store = await b.open_store()
    await store.close()


if __name__ == "__main__":
    sys.exit(main())
