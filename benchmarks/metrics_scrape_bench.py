"""``/metrics`` scrape time on both backends, this tree beside another (``--old DIR``).

Why: at each scrape ``/metrics`` reads the state (runs by status, the outbox's pending rows
and the oldest one's age, redeliveries by notifier). It used to make three store calls (three
SQLite reads on the loop, three PostgreSQL round trips); it now makes one
(``AsyncStore.state_figures``: one statement, off the loop on SQLite). This measures what a
Prometheus sees, for both code trees on the same states in the same run.

How: one SQLite file and one PostgreSQL database (the tests' throwaway cluster,
``tests/pg.py``) get ``--runs`` (100,000) finished runs, set-based as ``backend_bench.py``
fills them, then ``--pending`` (5,000) events recorded through the store with an outbox row
each, ``--dead`` (500) of them dead-lettered and 100 of those redelivered (so every family
has values). For each round, backend and tree (the trees' order flips every round, so a
machine that gets busier favours neither), a child process runs that tree's code
(``PYTHONPATH=DIR``) on the state: ``build_app`` with ``StateGauges`` installed as the daemon
does, served on 127.0.0.1, and ``--scrapes`` (200) ``GET /metrics`` by an aiohttp client in
the same process after 10 warm-up ones. Per child: the median and p90 of the request time,
the process CPU per scrape (user + system: the loop thread and, on SQLite, the off-loop
reader; the PostgreSQL server's CPU is not counted) and the longest the event loop was late
(a 1 ms ticker) while the scrapes ran. The figures printed are the medians over the rounds.

    git worktree add --detach /tmp/old <commit>
    .venv/bin/python benchmarks/metrics_scrape_bench.py --old /tmp/old [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHILD_SCRAPES_WARMUP = 10


# -- the child: one tree's /metrics on one state ----------------------------------------------


async def _child(target: str, scrapes: int) -> dict[str, Any]:
    """Scrape ``target`` (a file path or a PostgreSQL URL) with the code on PYTHONPATH."""
    import aiohttp
    from aiohttp import web

    from watcher.service.metrics import Metrics
    from watcher.service.server import Health, build_app
    from watcher.service.state_metrics import StateGauges
    from watcher.store.api import open_async_store

    postgres = target.startswith("postgresql://")
    store = await open_async_store(
        path=None if postgres else target, url=target if postgres else None, create=False
    )
    metrics = Metrics()
    StateGauges(store).install(metrics)
    app = build_app(
        store=store, metrics=metrics, health=Health(), admin_token=None, default_project_id=""
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    lag = [0.0]
    measuring = [False]

    async def ticker() -> None:
        while True:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            if measuring[0]:
                lag[0] = max(lag[0], time.perf_counter() - due)

    tick = asyncio.get_running_loop().create_task(ticker())
    took: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(CHILD_SCRAPES_WARMUP + scrapes):
                if i == CHILD_SCRAPES_WARMUP:
                    measuring[0] = True
                    cpu0 = time.process_time()
                started = time.perf_counter()
                async with http.get(url) as resp:
                    body = await resp.read()
                if i >= CHILD_SCRAPES_WARMUP:
                    took.append(time.perf_counter() - started)
            cpu = time.process_time() - cpu0
            if b"omics_watcher_tracked_runs{" not in body:
                raise RuntimeError("/metrics without the state's families")
    finally:
        tick.cancel()
        await runner.cleanup()
        await store.close()
    took.sort()
    return {
        "median_ms": 1000 * statistics.median(took),
        "p90_ms": 1000 * took[int(0.9 * (len(took) - 1))],
        "cpu_ms": 1000 * cpu / scrapes,
        "max_lag_ms": 1000 * lag[0],
    }


# -- the parent: the states, the rounds, the table -------------------------------------------


def _say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


async def _backlog(target: str, pending: int, dead: int) -> None:
    """``pending`` events with an outbox row each; ``dead`` of them dead, 100 redelivered."""
    from backend_bench import _event

    from watcher.store.api import open_async_store
    from watcher.store.history import Redelivery

    postgres = target.startswith("postgresql://")
    store = await open_async_store(
        path=None if postgres else target, url=target if postgres else None
    )
    try:
        for i in range(pending):
            await store.record_event(_event(i), notifiers=["hook"])
        rows = await store.pending_deliveries(limit=dead)
        for row in rows:
            await store.mark_dead(row.id, error="HTTP 503")
        await store.redeliver(Redelivery(ids=tuple(row.id for row in rows[:100])))
    finally:
        await store.close()


def _prepare(cluster: Any, folder: Path, args: argparse.Namespace) -> dict[str, str]:
    from backend_bench import fill_postgres, fill_sqlite

    from watcher.store import Store

    path = folder / "state.db"
    Store.open(path).close()  # the schema, by the store
    fill_sqlite(path, finished=args.runs, active=[], now=time.time())
    database = cluster.new_database(cluster.migrated_template())
    fill_postgres(cluster, database, finished=args.runs, active=[])
    targets = {"sqlite": str(path), "postgres": cluster.url(database)}
    for name, target in targets.items():
        _say(f"{name}: recording {args.pending} events")
        asyncio.run(_backlog(target, args.pending, args.dead))
    cluster.psql("ANALYZE", database)
    return targets


def _run_child(tree: Path, target: str, scrapes: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", target, "--scrapes", str(scrapes)],
        env=env,
        cwd=str(tree),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed:\n{done.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="the other source tree (a git worktree)")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=5000)
    parser.add_argument("--dead", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    parser.add_argument("--child", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.scrapes))))
        return 0
    if args.old is None:
        parser.error("--old DIR is required")
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
    from pg import Cluster

    trees = {"old": args.old.resolve(), "new": ROOT}
    cluster = Cluster.start()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            targets = _prepare(cluster, Path(tmp), args)
            for r in range(args.rounds):
                order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
                for backend, target in targets.items():
                    for tree in order:
                        found = _run_child(trees[tree], target, args.scrapes)
                        found["load"] = round(os.getloadavg()[0], 2)
                        _say(f"round {r + 1} {backend} {tree}: {found}")
                        results.setdefault(backend, {}).setdefault(tree, []).append(found)
    finally:
        cluster.stop()
    summary = {
        backend: {
            tree: {
                key: statistics.median(row[key] for row in rows)
                for key in ("median_ms", "p90_ms", "cpu_ms", "max_lag_ms")
            }
            for tree, rows in by_tree.items()
        }
        for backend, by_tree in results.items()
    }
    if args.json:
        print(json.dumps({"summary": summary, "rounds": results}, indent=2))
        return 0
    print("backend   tree  median ms  p90 ms  CPU ms/scrape  max loop lag ms")
    for backend, by_tree in summary.items():
        for tree in ("old", "new"):
            s = by_tree[tree]
            print(
                f"{backend:9} {tree:4} {s['median_ms']:9.2f} {s['p90_ms']:7.2f} "
                f"{s['cpu_ms']:14.2f} {s['max_lag_ms']:16.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
