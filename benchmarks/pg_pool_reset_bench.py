"""One store call on PostgreSQL with asyncpg's default pool reset and with the store's own.

Why: asyncpg's pool sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
ALL`` each time a connection goes back to the pool, a second round trip for every store call
that is one statement (most reads, the delivery marks' fenced writes add it to their four).
The store keeps no session state, so since issue 15 its pool resets nothing
(:func:`watcher.store.pg.store.keep_session`). ``backend_bench.py`` cannot see the
difference in the whole daemon's CPU (it is inside that benchmark's round-to-round noise);
this isolates it: :meth:`PgStore.get_run` on a pool of one connection, ``--n`` calls per
measurement, alternating the two pools for ``--rounds`` rounds (order flipped each round);
wall time per call, this process's CPU per call and the server backend's CPU per call
(``/proc/PID/stat``; the throwaway cluster of ``tests/pg.py`` runs on this machine, over
TCP on 127.0.0.1, so a remote database adds its network round trip to each saved trip).

    .venv/bin/python benchmarks/pg_pool_reset_bench.py [--rounds 5] [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg import Cluster

from watcher.store import TrackRequest
from watcher.store.pg.lease import session_settings
from watcher.store.pg.store import PgStore, keep_session

RUN = "00000000-0000-4000-8000-000000000001"
TICKS = os.sysconf("SC_CLK_TCK")
RESETS: dict[str, Any] = {"asyncpg default": None, "store (keep_session)": keep_session}


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def measure(url: str, reset: Any, n: int) -> tuple[float, float, float]:
    pool = await asyncpg.create_pool(
        url, min_size=1, max_size=1, server_settings=session_settings(15.0), reset=reset
    )
    store = PgStore(pool, "bench")
    try:
        async with pool.acquire() as conn:
            pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
        for _ in range(100):  # warm: prepared statements, caches
            await store.get_run(RUN)
        server0, cpu0, wall0 = backend_cpu(pid), time.process_time(), time.perf_counter()
        for _ in range(n):
            await store.get_run(RUN)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return wall / n * 1e6, cpu / n * 1e6, (backend_cpu(pid) - server0) / n * 1e6
    finally:
        await store.close()


async def main(rounds: int, n: int) -> None:
    cluster = Cluster.start()
    try:
        url = cluster.url(cluster.new_database(cluster.migrated_template()))
        store = await PgStore.open(url)
        await store.track([TrackRequest(RUN)])
        await store.close()
        found: dict[str, list[tuple[float, float, float]]] = {name: [] for name in RESETS}
        order = list(RESETS)
        for k in range(rounds):
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"round {k + 1}: load average {load}", flush=True)
            for name in order:
                found[name].append(await measure(url, RESETS[name], n))
            order.reverse()
        print(f"\nget_run, {n} calls x {rounds} rounds, medians")
        print(f"{'pool reset':22s} {'wall µs':>8s} {'client µs':>10s} {'server µs':>10s}")
        for name, values in found.items():
            wall, client, server = (statistics.median(v[i] for v in values) for i in range(3))
            print(f"{name:22s} {wall:8.0f} {client:10.0f} {server:10.0f}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--n", type=int, default=3000, help="calls per measurement")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.n))
