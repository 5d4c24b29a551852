"""An idle daemon on PostgreSQL: the outbox re-read every second, before and after the change
signal, side by side in one run.

Why: an idle dispatcher on PostgreSQL re-read every notifier's pending rows every second (a
join of ``outbox`` and ``events`` whose rows are decoded each time) to see rows other
processes wrote; with ``AsyncStore.outbox_version`` it reads one counter row instead and
re-reads the rows only when that moved (watcher/store/outbox_changes.py). This measures the
real daemon (``python -m watcher run`` from an exported source tree, two webhook notifiers)
on the tests' throwaway PostgreSQL 15 cluster (``tests/pg.py``), the two trees alternating
round by round (the order flips every round) on fresh databases with the same content:

* ``--runs`` (5) finished runs, each with one event delivered to both notifiers (history
  the pages show, nothing to send);
* ``--waiting`` rows (0, then 200 in a second scenario) pending for one notifier but not
  due for a day (a retry waiting; what a muted notifier or a failing destination leaves),
  which the old re-read fetched and decoded every second.

Per round and tree, after ``--settle`` s: a CPU window (``--window`` s) of the daemon and of
the server (every process of the cluster, as ``backend_bench.py``), then a statement window
(``--log-window`` s) counting, from the server's own log (``log_statement = 'all'`` for that
span only, so logging costs nothing in the CPU window), every statement, the outbox reads
(``pending_deliveries``) and the change-signal reads. pg_stat_statements is not installed
here, and pg_stat_user_tables lags by up to 10 s (a backend flushes its counters at most
once a second, or after 10 s idle). Nothing else talks to the cluster meanwhile.

An idle daemon's CPU is a few milliseconds a second, near the 10 ms tick of the kernel's CPU
accounting, so the windows cannot resolve what one look costs; the last part times it
directly: the old look (``pending_deliveries``) and the new one (``outbox_version``) through
the working tree's ``PgStore`` in this process, ``--calls`` each in alternating blocks
(client CPU, wall and server CPU per call).

    .venv/bin/python benchmarks/idle_outbox_bench.py --before REV [--after REV] \\
        [--rounds 3] [--window 30] [--waiting 0 200]

``--before``/``--after`` are git revisions exported with ``git archive`` (``--after``
defaults to the working tree's ``watcher/``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from backend_bench import ServerCpu  # noqa: E402
from common import PYTHON, Sim, daemon, simulator  # noqa: E402
from pg import Cluster  # noqa: E402

from watcher.events import Event, new_event_id  # noqa: E402
from watcher.store.codec import encode_body  # noqa: E402

NOTIFIERS = [
    {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/ops"},
    {"name": "chat", "type": "webhook", "url": "http://127.0.0.1:9/chat"},
]
MIGRATE = (
    "import asyncio, sys\n"
    "from watcher.store.api import open_async_store\n"
    "async def main():\n"
    "    store = await open_async_store(url=sys.argv[1])\n"
    "    await store.close()\n"
    "asyncio.run(main())\n"
)
KEYS = (
    "daemon_ms_per_s",
    "server_ms_per_s",
    "statements_per_s",
    "outbox_reads_per_s",
    "signal_reads_per_s",
)


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def export(rev: str | None, into: Path) -> Path:
    """``watcher/`` of ``rev`` (``None``: the working tree) in a folder of its own."""
    into.mkdir(parents=True)
    if rev is None:
        shutil.copytree(ROOT / "watcher", into / "watcher")
        return into
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "watcher"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def fill(url: str, runs: int, waiting: int) -> None:
    """Finished runs with delivered history, and ``waiting`` rows due in a day."""
    now = datetime.now(UTC)
    conn = await asyncpg.connect(url)
    try:
        for n in range(runs + waiting):
            run = f"00000000-0000-4000-8000-{n:012x}"
            at = now - timedelta(hours=1, seconds=n)
            if n < runs:
                await conn.execute(
                    "INSERT INTO runs (run_uuid, project_id, tracked_at, status, terminal, "
                    "status_since, last_polled_at) VALUES ($1, 'prj-bench', $2, 'SUCCESS', "
                    "true, $2, $2)",
                    run,
                    at.timestamp(),
                )
            event = Event(
                type="run.status_changed",
                id=new_event_id(at),
                timestamp=at,
                data={"run_uuid": run, "project_id": "prj-bench", "status": "SUCCESS"},
            )
            seq = await conn.fetchval(
                "INSERT INTO events (id, type, run_uuid, recorded_at, body) "
                "VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                event.id,
                event.type,
                run,
                at.timestamp(),
                encode_body(event.to_json()),
            )
            if n < runs:
                await conn.execute(
                    "INSERT INTO outbox (event_seq, notifier, state, attempts, created_at, "
                    "next_attempt_at, settled_at) SELECT $1, n, 'delivered', 1, $2, $2, $2 "
                    "FROM unnest(ARRAY['ops', 'chat']) n",
                    seq,
                    at.timestamp(),
                )
            else:
                await conn.execute(
                    "INSERT INTO outbox (event_seq, notifier, attempts, created_at, "
                    "next_attempt_at, last_error) VALUES ($1, 'ops', 1, $2, $3, 'HTTP 503')",
                    seq,
                    at.timestamp(),
                    (now + timedelta(days=1)).timestamp(),
                )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def statements(cluster: Cluster, seconds: float) -> dict[str, float]:
    """Statements the server ran per second over ``seconds``, from its own log."""
    log = cluster.folder / "server.log"
    cluster.psql("ALTER SYSTEM SET log_statement = 'all'")
    cluster.psql("SELECT pg_reload_conf()")
    time.sleep(2.0)  # every session has read the new setting
    start = log.stat().st_size
    time.sleep(seconds)
    end = log.stat().st_size
    cluster.psql("ALTER SYSTEM RESET log_statement")
    cluster.psql("SELECT pg_reload_conf()")
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read(end - start).decode(errors="replace").splitlines()
    said = [x for x in lines if "LOG:  statement:" in x or "LOG:  execute" in x]
    return {
        "statements_per_s": len(said) / seconds,
        "outbox_reads_per_s": sum("FROM outbox o JOIN events" in x for x in said) / seconds,
        "signal_reads_per_s": sum("'outbox_seq'" in x for x in said) / seconds,
    }


async def per_call(url: str, calls: int, server: ServerCpu) -> dict[str, float]:
    """What one look costs, in this process through the store (the working tree's
    ``PgStore``): the old look (``pending_deliveries`` of the notifier with the waiting rows)
    and the new one (``outbox_version``), alternating in blocks of 50; client CPU, wall
    time and the server's CPU per call, in microseconds."""
    from watcher.store.api import open_async_store

    store = await open_async_store(url=url)
    spent = {name: [0.0, 0.0, 0.0] for name in ("read", "signal")}
    try:
        looks = {
            "read": lambda: store.pending_deliveries("ops", limit=500),
            "signal": store.outbox_version,
        }
        for _ in range(max(1, calls // 50)):
            for name, look in looks.items():
                c0, w0, s0 = time.process_time(), time.perf_counter(), server.sample()
                for _ in range(50):
                    await look()
                c1, w1, s1 = time.process_time(), time.perf_counter(), server.sample()
                spent[name][0] += c1 - c0
                spent[name][1] += w1 - w0
                spent[name][2] += ServerCpu.spent(s0, s1)
    finally:
        await store.close()
    n = max(1, calls // 50) * 50
    return {
        f"{name}_{what}_us": 1e6 * value / n
        for name, values in spent.items()
        for what, value in zip(("client_cpu", "wall", "server_cpu"), values, strict=True)
    }


def one_window(
    tree: Path, cluster: Cluster, sim: Sim, args: argparse.Namespace, waiting: int
) -> dict[str, float]:
    """One daemon of ``tree`` on a fresh database: its idle CPU, then its statements."""
    database = cluster.new_database()
    url = cluster.url(database)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([PYTHON, "-c", MIGRATE, url], env=env, check=True)
    asyncio.run(fill(url, args.runs, waiting))
    server = ServerCpu(cluster)
    with daemon(sim, rate=20, interval=30, notifiers=NOTIFIERS, source=tree) as d:
        text = d.config_path.read_text()
        d.config_path.write_text(text.replace(f'path = "{d.state_path}"', f'url = "{url}"'))
        d.start()
        try:
            time.sleep(args.settle)
            assert d.proc is not None
            assert d.proc.poll() is None, d.log_tail()
            proc = psutil.Process(d.proc.pid)
            c0, p0, t0 = proc.cpu_times(), server.sample(), time.monotonic()
            time.sleep(args.window)
            c1, p1, t1 = proc.cpu_times(), server.sample(), time.monotonic()
            said = statements(cluster, args.log_window)
        finally:
            d.stop()
    cluster.drop_database(database)
    span = t1 - t0
    return {
        "daemon_ms_per_s": 1000 * (c1.user + c1.system - c0.user - c0.system) / span,
        "server_ms_per_s": 1000 * ServerCpu.spent(p0, p1) / span,
        **said,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision before the change")
    parser.add_argument("--after", default=None, help="git revision (default: working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--log-window", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--waiting", type=int, nargs="+", default=[0, 200])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="idle-outbox-"))
    trees = {
        "before": export(args.before, folder / "before"),
        "after": export(args.after, folder / "after"),
    }
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    # ``python -m watcher`` and ``python -c`` put the working directory first on sys.path:
    # from the repository they would run its tree whatever PYTHONPATH says.
    os.chdir(folder)
    cluster = Cluster.start()
    try:
        with simulator({"runs": 0}) as sim:
            for waiting in args.waiting:
                for k in range(args.rounds):
                    order = ["before", "after"] if k % 2 == 0 else ["after", "before"]
                    for name in order:
                        got = one_window(trees[name], cluster, sim, args, waiting)
                        load = psutil.getloadavg()[0]
                        shown = ", ".join(f"{key} {got[key]:.2f}" for key in KEYS)
                        say(f"waiting={waiting} round {k + 1} {name}: {shown}; load {load:.2f}")
                        results.setdefault((waiting, name), []).append(got)
        costs: dict[int, dict[str, float]] = {}
        for waiting in args.waiting:
            database = cluster.new_database()
            url = cluster.url(database)
            env = {**os.environ, "PYTHONPATH": str(trees["after"])}
            subprocess.run([PYTHON, "-c", MIGRATE, url], env=env, check=True)
            asyncio.run(fill(url, args.runs, waiting))
            costs[waiting] = asyncio.run(per_call(url, args.calls, ServerCpu(cluster)))
            cluster.drop_database(database)
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"idle daemon on PostgreSQL, 2 notifiers, {args.rounds} rounds (medians): CPU over "
        f"{args.window:.0f} s, statements over {args.log_window:.0f} s"
    )
    print(f"{'waiting':>7} {'tree':>6} " + " ".join(f"{key:>18}" for key in KEYS))
    for (waiting, name), rows in results.items():
        cells = " ".join(f"{statistics.median(r[key] for r in rows):>18.2f}" for key in KEYS)
        print(f"{waiting:>7} {name:>6} {cells}")
    print(f"one look, in microseconds per call ({args.calls} calls each, blocks alternating)")
    for waiting, cost in costs.items():
        print(f"{waiting:>7} " + ", ".join(f"{key} {value:.0f}" for key, value in cost.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
