"""PostgreSQL delivery marks: the mark alone, then whole daemons from a backlog, in one run.

Why: on PostgreSQL each delivery's mark was a fenced transaction of four round trips (BEGIN,
the lease fence, the ``UPDATE``, COMMIT); the marks now carry the fence in their one
statement (``PgBase._write_one``). Two parts, the load average printed at every step:

1. **The mark alone**, in this process, on the current tree: ``--marks`` (2,000) pending
   rows marked delivered by a store bound to a lease it holds, with 1 and with 8 marks at
   once (the dispatcher's ``max_in_flight``) on a pool of as many connections, the four
   round trips (``_write()`` and the ``UPDATE`` as they were) and ``mark_delivered``
   alternating for ``--rounds`` rounds (order flipped each round): wall time per mark,
   marks per second, this process's CPU and the server backends' CPU per mark.
2. **Whole daemons**: part 2 of ``backend_bench.py`` (the same registry, backlog, daemon,
   receiver and figures, reusing its code) without the polling windows, so the PostgreSQL
   daemon of an older tree (``--old DIR``) runs beside the current one and SQLite, round by
   round, the order rotating every round (a machine that gets busier during the run favours
   none).

Per round and daemon in part 2: the daemon stopped, ``--events`` (5,000) events recorded through the
store's ``record_event`` (an outbox row each for a signed webhook notifier); the daemon
started on that backlog: deliveries per second from the first to the last receipt at a
receiver in its own process, daemon CPU (psutil user + system) and, on PostgreSQL, the
server's CPU (every process of the throwaway cluster) over that span per delivery. The
daemon polls its 300 never-finishing runs at 20/s meanwhile, as in ``backend_bench.py``.

    git worktree add --detach /tmp/old OLD; git worktree add --detach /tmp/new NEW
    PYTHONPATH=/tmp/new .venv/bin/python benchmarks/pg_marks_bench.py --old /tmp/old \
        --new /tmp/new [--rounds 5] [--json]
    .venv/bin/python benchmarks/pg_marks_bench.py --marks-only   # part 1 alone

Without ``--new`` the current daemon runs from the venv (the working tree). ``PYTHONPATH``
makes this process's own store code (part 1, the backlog, the databases' schema) the new
tree's too: a database migrated by a newer tree is refused by an older daemon. Each daemon
has its own state: SQLite a file, each PostgreSQL daemon its own database of one cluster
(``tests/pg.py``), all filled with the same 100,000 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from backend_bench import (
    SECRET,
    Backend,
    _create,
    drain,
    fill_postgres,
    fill_sqlite,
    load,
    receiver_process,
    say,
    store_work,
)
from common import daemon, machine_info, simulator
from pg import Cluster, free_port
from pg_pool_reset_bench import backend_cpu

from watcher.store.pg import lease
from watcher.store.pg.lease import Grant
from watcher.store.pg.store import PgStore, keep_session

# -- part 1: the mark alone -----------------------------------------------------------------

# The mark as it was: a fenced transaction (BEGIN, fence, this UPDATE, COMMIT).
_OLD_MARK = (
    "UPDATE outbox SET state = 'delivered', settled_at = $1, attempts = attempts + 1 "
    "WHERE id = $2 AND state = 'pending'"
)


async def _four_round_trips(store: PgStore, delivery_id: int) -> None:
    async with store._write() as conn:
        await conn.execute(_OLD_MARK, store._now(), delivery_id)


async def _one_statement(store: PgStore, delivery_id: int) -> None:
    await store.mark_delivered(delivery_id)


MARKS = {"4 round trips": _four_round_trips, "1 statement": _one_statement}


async def _pending_rows(conn: asyncpg.Connection, n: int) -> list[int]:
    """``n`` pending outbox rows (one event each), set-based; their ids in order."""
    rows = await conn.fetch(
        "WITH e AS (INSERT INTO events (id, type, run_uuid, recorded_at, body) "
        "SELECT 'bench-' || gen_random_uuid(), 'run.stuck', 'r', 0, '\\x01'::bytea "
        "FROM generate_series(1, $1) RETURNING seq) "
        "INSERT INTO outbox (event_seq, notifier, created_at, next_attempt_at) "
        "SELECT seq, 'hook', 0, 0 FROM e RETURNING id",
        n,
    )
    return sorted(int(row[0]) for row in rows)


async def _measure(url: str, grant: Grant, variant: str, n: int, at_once: int) -> list[float]:
    """Wall µs, client CPU µs and server CPU µs per mark, and marks per second."""
    pool = await asyncpg.create_pool(
        url,
        min_size=at_once,
        max_size=at_once,
        server_settings=lease.session_settings(60.0),
        reset=keep_session,
    )
    store = PgStore(pool, "bench")
    store.bind(lambda: grant)
    mark = MARKS[variant]
    try:
        async with pool.acquire() as conn:
            ids = await _pending_rows(conn, n + 100)
            pids = [
                int(row[0])
                for row in await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'omics-watcher'"
                )
            ]
        for delivery_id in ids[:100]:  # warm: prepared statements, caches
            await mark(store, delivery_id)
        todo = iter(ids[100:])

        async def worker() -> None:
            for delivery_id in todo:
                await mark(store, delivery_id)

        server0 = sum(backend_cpu(pid) for pid in pids)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(at_once)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        server = sum(backend_cpu(pid) for pid in pids) - server0
    finally:
        await store.close()
    return [wall / n * 1e6, cpu / n * 1e6, server / n * 1e6, n / wall]


async def marks_alone(cluster: Cluster, rounds: int, n: int) -> dict[str, Any]:
    """Part 1: both marks, alternating, with 1 and 8 at once."""
    url = cluster.url(cluster.new_database(cluster.migrated_template()))
    conn = await asyncpg.connect(url)
    try:
        grant = await lease.acquire(conn, "bench", 3600)
    finally:
        await conn.close()
    assert grant is not None
    out: dict[str, Any] = {}
    for at_once in (1, 8):
        found: dict[str, list[list[float]]] = {name: [] for name in MARKS}
        order = list(MARKS)
        for k in range(rounds):
            say(f"# marks, {at_once} at once, round {k + 1}, load {load()}")
            for name in order:
                found[name].append(await _measure(url, grant, name, n, at_once))
                wall, client, server, rate = found[name][-1]
                say(
                    f"#   {name:14s} {wall:6.0f} µs wall, {rate:5.0f} marks/s, "
                    f"client {client:4.0f} µs, server {server:4.0f} µs"
                )
            order.reverse()
        out[str(at_once)] = {
            name: [statistics.median(v[i] for v in values) for i in range(4)]
            for name, values in found.items()
        }
        out[f"{at_once}_rounds"] = found
    say(f"\nthe mark alone, {n} marks x {rounds} rounds, medians")
    say(
        f"{'at once':8s} {'mark':14s} {'wall µs':>8s} {'marks/s':>8s} {'client µs':>10s} "
        f"{'server µs':>10s}"
    )
    for at_once in ("1", "8"):
        for name, (wall, client, server, rate) in out[at_once].items():
            say(f"{at_once:8s} {name:14s} {wall:8.0f} {rate:8.0f} {client:10.0f} {server:10.0f}")
    return out


# -- part 2: whole daemons ------------------------------------------------------------------


def one_round(b: Backend, label: str, sim: Any, events: int, first_run: int) -> dict[str, Any]:
    """The backlog recorded with the daemon stopped, then delivered by it."""
    row: dict[str, Any] = {"daemon": label, "load": load()}
    row.update(asyncio.run(store_work(b, events, first_run)))
    row["delivery"] = drain(b, sim, events)
    b.stop()
    dl = row["delivery"]
    server = f" + server {dl['server_ms']:.3f}" if dl["server_ms"] is not None else ""
    say(
        f"#   {label:12s} load {dl['load'][0][0]}→{dl['load'][1][0]}: "
        f"{dl['per_s']:.0f} deliveries/s, daemon {dl['daemon_ms']:.3f}{server} ms/delivery "
        f"(recorded in {row['record_s']:.2f} s)"
    )
    return row


def summarise(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    def med(label: str, key: str) -> float | None:
        values = [r["delivery"][key] for r in rows if r["daemon"] == label]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    return {
        label: {key: med(label, key) for key in ("per_s", "daemon_ms", "server_ms")}
        for label in labels
    }


def daemons(cluster: Cluster, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 2: SQLite, the old and the current tree on PostgreSQL, rotating round by round."""
    sim_config = {"runs": args.active, "seed": args.seed, "kinds": {"forever": 1.0}}
    sim_config["rate_limit"] = 20
    plan = [("sqlite", args.new), ("postgres-old", args.old), ("postgres-new", args.new)]
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(receiver_process())
        sim = stack.enter_context(simulator(sim_config))
        hook = {"name": "hook", "type": "webhook", "url": f"{receiver}/hook"}
        hook["secret"] = SECRET
        backends: dict[str, Backend] = {}
        template = cluster.migrated_template()
        finished = args.runs - args.active
        for label, source in plan:
            d = stack.enter_context(
                daemon(sim, rate=20, interval=1, notifiers=[hook], source=source)
            )
            b = Backend(label, d, free_port(), receiver)
            if label == "sqlite":
                asyncio.run(_create(b))
                fill_sqlite(d.state_path, finished=finished, active=sim.runs, now=time.time())
            else:
                database = cluster.new_database(template)
                b.use_postgres(cluster, database)
                fill_postgres(cluster, database, finished=finished, active=sim.runs)
            backends[label] = b
        say(f"# registries filled ({args.runs} runs each)")
        order = list(backends)
        for k in range(args.rounds):
            say(f"# round {k + 1}, load {load()}")
            for label in order:
                rows.append(one_round(backends[label], label, sim, args.events, k * args.events))
            order = order[1:] + order[:1]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, default=None, help="the older source tree")
    parser.add_argument("--new", type=Path, default=None, help="the current tree (default: venv)")
    parser.add_argument("--marks-only", action="store_true", help="part 1 only")
    parser.add_argument("--marks", type=int, default=2000, help="marks per measurement")
    parser.add_argument("--runs", type=int, default=100_000, help="tracked runs in all")
    parser.add_argument("--active", type=int, default=300, help="never-finishing polled runs")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per daemon")
    parser.add_argument("--events", type=int, default=5000, help="backlog per round")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    args = parser.parse_args(argv)
    if args.old is None and not args.marks_only:
        parser.error("--old DIR is needed for part 2 (or --marks-only)")
    result: dict[str, Any] = {
        "command": " ".join(["benchmarks/pg_marks_bench.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "load_start": load(),
    }
    say(f"# load average at the start: {result['load_start']}")
    cluster = Cluster.start()
    try:
        result["marks"] = asyncio.run(marks_alone(cluster, args.rounds, args.marks))
        if not args.marks_only:
            result["rounds"] = daemons(cluster, args)
    finally:
        cluster.stop()
    result["load_end"] = load()
    if not args.marks_only:
        labels = ["sqlite", "postgres-old", "postgres-new"]
        result["summary"] = summarise(result["rounds"], labels)
        say(
            f"\nwhole daemons, medians over {args.rounds} rounds (load at the end "
            f"{result['load_end']})"
        )
        say(f"{'daemon':14s} {'deliveries/s':>13s} {'daemon ms':>10s} {'server ms':>10s}")
        for label, figures in result["summary"].items():
            server = figures["server_ms"]
            say(
                f"{label:14s} {figures['per_s']:13.0f} {figures['daemon_ms']:10.3f} "
                + (f"{server:10.3f}" if server is not None else f"{'-':>10s}")
            )
    if args.json:
        json.dump(result, sys.stdout, default=str)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
