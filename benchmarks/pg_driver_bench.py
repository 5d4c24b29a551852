"""Which PostgreSQL driver for the store (issue 15): asyncpg or psycopg 3 with psycopg_pool.

Both drivers run the same two shapes against one throwaway PostgreSQL 15 cluster
(``tests/pg.py``: ``fsync = off``, so the figures are the drivers' and the server's CPU, not
a disk), in alternating rounds (the order flips every round, so a machine that gets busier
during the run does not favour one driver), each round on a fresh pool:

- ``record``: the recording transaction of the store: the fencing check on the lease row
  (``FOR SHARE``), a compare-and-set ``UPDATE`` of one run, the ``INSERT`` of its event (a
  ~250-byte compressed body, ``RETURNING seq``) and of two outbox rows, in one transaction.
- ``page``: a keyset page of 100 runs of the registry (12 columns), decoded into tuples.

Per driver and shape: transactions (or pages) per second with one task on a pool of one
connection (``serial``), the client's CPU per transaction (``time.process_time`` of this
process) and the server backend's CPU (``/proc/PID/stat`` of the connection's backend: the
server runs on this machine); then ``concurrent``: 8 tasks on a pool of 4. Medians over the
rounds; load averages printed before and after each round.

Run: ``.venv/bin/python benchmarks/pg_driver_bench.py [--rounds 5] [--n 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg_pool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg import Cluster

RUNS = 10_000
NOTIFIERS = ["slack", "webhook"]
BODY = os.urandom(250)
TICKS = os.sysconf("SC_CLK_TCK")

SCHEMA = """
CREATE TABLE lease (name text PRIMARY KEY, holder text NOT NULL, epoch bigint NOT NULL,
                    expires_at double precision NOT NULL);
INSERT INTO lease VALUES ('active', 'bench', 1, 1e12);
CREATE TABLE runs (
    id bigint GENERATED ALWAYS AS IDENTITY UNIQUE, run_uuid text PRIMARY KEY,
    project_id text NOT NULL DEFAULT '', labels json NOT NULL DEFAULT '{}',
    tracked boolean NOT NULL DEFAULT true, tracked_at double precision NOT NULL,
    status text, terminal boolean NOT NULL DEFAULT false, metadata json,
    status_since double precision, last_polled_at double precision,
    stopped boolean NOT NULL DEFAULT false, consecutive_errors integer NOT NULL DEFAULT 0,
    next_poll_after double precision, stuck_status text);
CREATE TABLE events (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id text NOT NULL UNIQUE,
    type text NOT NULL, run_uuid text NOT NULL, recorded_at double precision NOT NULL,
    body bytea NOT NULL, held_until double precision);
CREATE INDEX events_by_run ON events (run_uuid, seq);
CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    notifier text NOT NULL, state text NOT NULL DEFAULT 'pending', attempts integer NOT NULL
    DEFAULT 0, created_at double precision NOT NULL, next_attempt_at double precision NOT NULL,
    last_error text, dead_at double precision, UNIQUE (event_seq, notifier));
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
INSERT INTO runs (run_uuid, tracked_at, status, labels)
    SELECT 'run-' || g, 1.7e9, 'RUNNING', ('{"run_group":"rg-' || (g / 100) || '"}')::json
    FROM generate_series(0, 9999) g;
ANALYZE;
"""

FENCE = "SELECT 1 FROM lease WHERE name = 'active' AND holder = $1 AND epoch = $2 FOR SHARE"
CAS = (
    "UPDATE runs SET status = $1, terminal = false, metadata = $2, status_since = $3, "
    "last_polled_at = $4, consecutive_errors = 0, next_poll_after = NULL, stuck_status = NULL "
    "WHERE run_uuid = $5 AND tracked AND status IS NOT DISTINCT FROM $6"
)
EVENT = (
    "INSERT INTO events (id, type, run_uuid, recorded_at, body) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (id) DO NOTHING RETURNING seq"
)
OUTBOX = (
    "INSERT INTO outbox (event_seq, notifier, created_at, next_attempt_at) "
    "SELECT $1, unnest($2::text[]), $3, $4"
)
PAGE = (
    "SELECT id, run_uuid, project_id, status, terminal, labels::text, tracked_at, "
    "last_polled_at, status_since, stopped, consecutive_errors, next_poll_after FROM runs "
    "WHERE tracked AND id > $1 ORDER BY id LIMIT 100"
)
METADATA = '{"Status":"RUNNING","RunId":"run","WorkDir":"cos://bucket/work"}'


def psycopg_sql(sql: str) -> str:
    """The same statement with psycopg's placeholders."""
    for i in range(9, 0, -1):
        sql = sql.replace(f"${i}", "%s")
    return sql


class Work:
    """The per-run state the compare-and-set needs, shared by both drivers' rounds."""

    def __init__(self) -> None:
        self.status = {f"run-{i}": "RUNNING" for i in range(RUNS)}
        self.counter = 0

    def next(self) -> tuple[str, str, str, str]:
        self.counter += 1
        run = f"run-{self.counter % RUNS}"
        old = self.status[run]
        new = "SUCCEEDED" if old == "RUNNING" else "RUNNING"
        self.status[run] = new
        return run, old, new, f"evt-{self.counter}-{time.time_ns()}"


# -- asyncpg -------------------------------------------------------------------------------


async def asyncpg_pool(url: str, size: int) -> Any:
    return await asyncpg.create_pool(url, min_size=size, max_size=size)


async def asyncpg_record(pool: Any, work: Work) -> None:
    run, old, new, event_id = work.next()
    now = time.time()
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(FENCE, "bench", 1) is None:
            raise RuntimeError("fenced")
        if await conn.execute(CAS, new, METADATA, now, now, run, old) != "UPDATE 1":
            raise RuntimeError("compare-and-set lost")
        seq = await conn.fetchval(EVENT, event_id, "run.status_changed", run, now, BODY)
        await conn.execute(OUTBOX, seq, NOTIFIERS, now, now)


async def asyncpg_page(pool: Any, after: int) -> int:
    async with pool.acquire() as conn:
        rows = await conn.fetch(PAGE, after)
    page = [tuple(row) for row in rows]
    return int(page[-1][0]) if len(page) == 100 else 0


async def asyncpg_backend(pool: Any) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


# -- psycopg 3 -----------------------------------------------------------------------------

P_FENCE, P_CAS, P_EVENT, P_OUTBOX, P_PAGE = map(psycopg_sql, (FENCE, CAS, EVENT, OUTBOX, PAGE))


async def psycopg_pool_(url: str, size: int) -> Any:
    pool = psycopg_pool.AsyncConnectionPool(url, min_size=size, max_size=size, open=False)
    await pool.open(wait=True)
    return pool


async def psycopg_record(pool: Any, work: Work) -> None:
    run, old, new, event_id = work.next()
    now = time.time()
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(P_FENCE, ("bench", 1))
        if await cur.fetchone() is None:
            raise RuntimeError("fenced")
        cur = await conn.execute(P_CAS, (new, METADATA, now, now, run, old))
        if cur.rowcount != 1:
            raise RuntimeError("compare-and-set lost")
        cur = await conn.execute(P_EVENT, (event_id, "run.status_changed", run, now, BODY))
        seq = (await cur.fetchone())[0]
        await conn.execute(P_OUTBOX, (seq, NOTIFIERS, now, now))


async def psycopg_page(pool: Any, after: int) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(P_PAGE, (after,))
        page = await cur.fetchall()
    return int(page[-1][0]) if len(page) == 100 else 0


async def psycopg_backend(pool: Any) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        return int((await cur.fetchone())[0])


DRIVERS: dict[str, dict[str, Callable[..., Awaitable[Any]]]] = {
    "asyncpg": {
        "pool": asyncpg_pool,
        "record": asyncpg_record,
        "page": asyncpg_page,
        "backend": asyncpg_backend,
    },
    "psycopg": {
        "pool": psycopg_pool_,
        "record": psycopg_record,
        "page": psycopg_page,
        "backend": psycopg_backend,
    },
}


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) the server process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def measure(
    driver: str, url: str, shape: str, n: int, tasks: int, size: int, work: Work
) -> dict[str, float]:
    ops = DRIVERS[driver]
    pool = await ops["pool"](url, size)
    try:
        backend = await ops["backend"](pool) if size == 1 else None
        cursor = [0]

        async def one() -> None:
            if shape == "record":
                await ops["record"](pool, work)
            else:
                cursor[0] = await ops["page"](pool, cursor[0])

        for _ in range(50):  # warm up: statement caches, prepared statements
            await one()

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        server0 = backend_cpu(backend) if backend else 0.0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(n // tasks) for _ in range(tasks)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        done = (n // tasks) * tasks
        result = {"per_s": done / wall, "client_us": cpu / done * 1e6}
        if backend:
            result["server_us"] = (backend_cpu(backend) - server0) / done * 1e6
        return result
    finally:
        await pool.close()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main(rounds: int, n: int) -> None:
    cluster = Cluster.start()
    try:
        database = cluster.new_database()
        cluster.psql(SCHEMA, database)
        url = cluster.url(database)
        print(
            f"asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__} "
            f"(impl {psycopg.pq.__impl__}, libpq {psycopg.pq.version()}), "
            f"psycopg_pool {psycopg_pool.__version__}; PostgreSQL 15 on 127.0.0.1 (TCP), "
            f"fsync off; {os.cpu_count()} cores; n={n} per measurement, {rounds} rounds"
        )
        work = Work()
        results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
        order = list(DRIVERS)
        for round_ in range(rounds):
            print(f"round {round_ + 1}: load average before {load()}", flush=True)
            for driver in order:
                for shape in ("record", "page"):
                    for mode, tasks, size in (("serial", 1, 1), ("concurrent", 8, 4)):
                        found = await measure(driver, url, shape, n, tasks, size, work)
                        results.setdefault((driver, shape, mode), []).append(found)
            order.reverse()
            print(f"round {round_ + 1}: load average after  {load()}", flush=True)
        print()
        print(
            f"{'driver':8} {'shape':7} {'mode':10} {'per s':>8} {'client µs':>10} {'server µs':>10}"
        )
        for (driver, shape, mode), found in sorted(results.items(), key=lambda kv: kv[0][1:]):
            per_s = statistics.median(r["per_s"] for r in found)
            client = statistics.median(r["client_us"] for r in found)
            server = (
                f"{statistics.median(r['server_us'] for r in found):10.0f}"
                if "server_us" in found[0]
                else f"{'-':>10}"
            )
            print(f"{driver:8} {shape:7} {mode:10} {per_s:8.0f} {client:10.0f} {server}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument(
        "--n", type=int, default=2000, help="operations per measurement (default 2000)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.n))
