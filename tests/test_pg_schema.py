"""The PostgreSQL state's schema against a real PostgreSQL 15: migrations run once even when
two daemons start together, foreign or newer databases are refused, and the run counts the
triggers keep match the registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from watcher.store.db import StateError
from watcher.store.pg.schema import APPLICATION, MIGRATIONS, migrate, schema_version


@pytest.fixture
async def conn(pg_empty_url: str) -> AsyncIterator[asyncpg.Connection]:
    opened = await asyncpg.connect(pg_empty_url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_migrates_an_empty_database_to_the_newest_version(conn: asyncpg.Connection) -> None:
    assert await migrate(conn) == len(MIGRATIONS)
    assert await schema_version(conn) == len(MIGRATIONS)
    tables = {
        row["tablename"]
        for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {
        "runs",
        "events",
        "outbox",
        "discovery",
        "run_counts",
        "counters",
        "lease",
        "silences",
    } <= tables
    # The outbox keeps settled rows (issue 14's delivery history).
    seq = await conn.fetchval(
        "INSERT INTO events (id, type, run_uuid, recorded_at, body) "
        "VALUES ('e1', 'run.stuck', 'r1', 0, '\\x01') RETURNING seq"
    )
    await conn.execute(
        "INSERT INTO outbox (event_seq, notifier, state, created_at, next_attempt_at, "
        "settled_at) VALUES ($1, 'slack', 'delivered', 0, 0, 1), ($1, 'mail', 'silenced', 0, 0, 1)",
        seq,
    )
    # Again: nothing to do, same version.
    assert await migrate(conn) == len(MIGRATIONS)


async def test_two_daemons_starting_together_migrate_once(pg_empty_url: str) -> None:
    conns = [await asyncpg.connect(pg_empty_url) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(migrate(c) for c in conns))
        assert versions == [len(MIGRATIONS)] * 3
        rows = await conns[0].fetch("SELECT application, version FROM schema_version")
        assert [tuple(r) for r in rows] == [(APPLICATION, len(MIGRATIONS))]
        assert await conns[0].fetchval("SELECT value FROM counters WHERE name = 'change_seq'") == 0
    finally:
        for c in conns:
            await c.close()


async def test_a_newer_schema_is_refused_and_left_alone(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    await conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StateError, match="schema version 99, newer than this omics-watcher"):
        await migrate(conn)
    assert await schema_version(conn) == 99


async def test_another_applications_database_is_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE runs (id integer)")
    with pytest.raises(StateError, match="another application's database"):
        await migrate(conn)
    # Left untouched: not even the version table was created.
    assert await conn.fetchval("SELECT to_regclass('schema_version')") is None
    assert await conn.fetchval("SELECT to_regclass('events')") is None


async def test_a_failed_migration_leaves_the_previous_version(conn: asyncpg.Connection) -> None:
    broken = (*MIGRATIONS, ("CREATE TABLE extra (id integer)", "SELECT * FROM no_such_table"))
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(conn, broken)
    assert await schema_version(conn) == len(MIGRATIONS)
    assert await conn.fetchval("SELECT to_regclass('extra')") is None


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, runs FROM run_counts WHERE runs <> 0")
    return {row["status"]: int(row["runs"]) for row in rows}


async def truth(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT coalesce(status, '') AS status, count(*) AS runs FROM runs WHERE tracked GROUP BY 1"
    )
    return {row["status"]: int(row["runs"]) for row in rows}


async def test_run_counts_follow_every_kind_of_write(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO runs (run_uuid, tracked_at, status, tracked) "
            "SELECT 'r' || g, 0, CASE WHEN g % 3 = 0 THEN NULL ELSE 'RUNNING' END, g % 5 <> 0 "
            "FROM generate_series(1, 300) g"
        )
        assert await counts(conn) == await truth(conn)
        await conn.execute("UPDATE runs SET status = 'COMPLETED' WHERE run_uuid LIKE 'r1%'")
        await conn.execute("UPDATE runs SET tracked = NOT tracked WHERE run_uuid LIKE 'r2%'")
        await conn.execute("UPDATE runs SET last_polled_at = 1 WHERE run_uuid LIKE 'r3%'")
        assert await counts(conn) == await truth(conn)
        await conn.execute("DELETE FROM runs WHERE run_uuid LIKE 'r4%' OR run_uuid LIKE 'r5%'")
        assert await counts(conn) == await truth(conn)
        async with conn.transaction():  # one transaction, several statements
            await conn.execute("UPDATE runs SET status = 'FAILED' WHERE status = 'COMPLETED'")
            await conn.execute("INSERT INTO runs (run_uuid, tracked_at) VALUES ('new', 0)")
        assert await counts(conn) == await truth(conn)
    finally:
        await conn.close()


async def test_opposite_status_moves_in_two_transactions_do_not_deadlock(pg_url: str) -> None:
    a, b = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
    try:
        await a.execute(
            "INSERT INTO runs (run_uuid, tracked_at, status) VALUES "
            "('x', 0, 'RUNNING'), ('y', 0, 'STARTING')"
        )
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        # a moves RUNNING -> STARTING while b moves STARTING -> RUNNING: both touch both
        # count rows, in the same (status) order, so b waits for a instead of deadlocking.
        await a.execute("UPDATE runs SET status = 'STARTING' WHERE run_uuid = 'x'")
        moving = asyncio.ensure_future(
            b.execute("UPDATE runs SET status = 'RUNNING' WHERE run_uuid = 'y'")
        )
        await ta.commit()
        await moving
        await tb.commit()
        assert await counts(a) == {"RUNNING": 1, "STARTING": 1} == await truth(a)
    finally:
        await a.close()
        await b.close()


async def test_a_database_at_an_older_version_migrates_with_its_rows(
    conn: asyncpg.Connection,
) -> None:
    assert await migrate(conn, MIGRATIONS[:1]) == 1
    seq = await conn.fetchval(
        "INSERT INTO events (id, type, run_uuid, recorded_at, body) "
        "VALUES ('e1', 'run.stuck', 'r1', 0, '\\x01') RETURNING seq"
    )
    await conn.execute(
        "INSERT INTO outbox (event_seq, notifier, state, created_at, next_attempt_at, dead_at) "
        "VALUES ($1, 'slack', 'dead', 0, 0, 42), ($1, 'mail', 'pending', 0, 0, NULL)",
        seq,
    )
    assert await migrate(conn) == len(MIGRATIONS)
    rows = await conn.fetch("SELECT notifier, state, settled_at FROM outbox ORDER BY id")
    assert [tuple(r) for r in rows] == [("slack", "dead", 42.0), ("mail", "pending", None)]
