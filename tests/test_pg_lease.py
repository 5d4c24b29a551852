"""The active daemon's lease with its fencing epoch, against a real PostgreSQL 15: one winner
among contenders, takeover after expiry or release bumps the epoch, a write with a stale epoch
writes nothing, a takeover waits for the old holder's write in flight, and neither a killed
connection nor a holder frozen mid-transaction breaks any of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from watcher.store.pg import lease
from watcher.store.pg.lease import Grant, LeaseLost

Connect = Callable[..., Awaitable[asyncpg.Connection]]


@pytest.fixture
async def connect(pg_url: str) -> AsyncIterator[Connect]:
    """Opens connections to the test's database; closes them all at the end."""
    opened: list[asyncpg.Connection] = []

    async def open_one(**settings: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(pg_url, server_settings=settings or None)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        if not conn.is_closed():
            conn.terminate()


async def expire(conn: asyncpg.Connection, grant: Grant) -> None:
    """Wait, by the database's clock, until ``grant`` has expired (short leases only)."""
    while (await lease.state(conn, name=grant.name)).held:
        await asyncio.sleep(0.05)


async def write_event(conn: asyncpg.Connection, grant: Grant, event_id: str) -> None:
    """A fenced write of the shape the store makes: an event and its outbox row."""
    async with lease.fenced(conn, grant):
        seq = await conn.fetchval(
            "INSERT INTO events (id, type, run_uuid, recorded_at, body) "
            "VALUES ($1, 'run.status_changed', 'r1', 0, '\\x01') RETURNING seq",
            event_id,
        )
        await conn.execute(
            "INSERT INTO outbox (event_seq, notifier, created_at, next_attempt_at) "
            "VALUES ($1, 'slack', 0, 0)",
            seq,
        )


async def events(conn: asyncpg.Connection) -> list[str]:
    return [row["id"] for row in await conn.fetch("SELECT id FROM events ORDER BY seq")]


async def test_of_two_contenders_exactly_one_wins(connect: Connect) -> None:
    a, b = await connect(), await connect()
    for round_ in range(10):
        name = f"race-{round_}"
        grants = await asyncio.gather(
            lease.acquire(a, "daemon-a", 60, name=name),
            lease.acquire(b, "daemon-b", 60, name=name),
        )
        won = [g for g in grants if g is not None]
        assert len(won) == 1
        assert won[0].epoch == 1
        seen = await lease.state(a, name=name)
        assert seen.holder == won[0].holder
        assert seen.held


async def test_a_held_lease_is_not_taken_and_renewal_keeps_it(connect: Connect) -> None:
    a, b = await connect(), await connect()
    grant = await lease.acquire(a, "daemon-a", 60)
    assert grant is not None
    assert await lease.acquire(b, "daemon-b", 60) is None
    renewed = await lease.renew(a, grant, 60)
    assert renewed is not None
    assert renewed.epoch == grant.epoch
    assert renewed.expires_at >= grant.expires_at
    assert (await lease.state(b)).holder == "daemon-a"


async def test_takeover_after_expiry_bumps_the_epoch_and_fences_the_old_holder(
    connect: Connect,
) -> None:
    a, b = await connect(), await connect()
    old = await lease.acquire(a, "daemon-a", 0.3)
    assert old is not None
    await write_event(a, old, "evt-before")
    await expire(b, old)
    new = await lease.acquire(b, "daemon-b", 60)
    assert new is not None
    assert new.epoch == old.epoch + 1
    # The old holder can neither renew nor write: the write raises and leaves no row.
    assert await lease.renew(a, old, 60) is None
    with pytest.raises(LeaseLost, match="no longer the active daemon"):
        await write_event(a, old, "evt-stale")
    assert await events(b) == ["evt-before"]
    assert await b.fetchval("SELECT count(*) FROM outbox") == 1
    # The new holder writes.
    await write_event(b, new, "evt-after")
    assert await events(a) == ["evt-before", "evt-after"]


async def test_release_hands_over_at_once(connect: Connect) -> None:
    a, b = await connect(), await connect()
    first = await lease.acquire(a, "daemon-a", 3600)
    assert first is not None
    assert await lease.acquire(b, "daemon-b", 3600) is None
    assert await lease.release(a, first)
    assert not (await lease.state(b)).held
    second = await lease.acquire(b, "daemon-b", 3600)
    assert second is not None
    assert second.epoch == first.epoch + 1
    assert not await lease.release(a, first)  # no longer ours: nothing changes
    with pytest.raises(LeaseLost):
        await write_event(a, first, "evt-stale")
    assert await events(b) == []


async def test_takeover_waits_for_the_old_holders_write_in_flight(connect: Connect) -> None:
    a, b, watch = await connect(), await connect(), await connect()
    old = await lease.acquire(a, "daemon-a", 0.3)
    assert old is not None
    async with lease.fenced(a, old):
        await a.execute(
            "INSERT INTO events (id, type, run_uuid, recorded_at, body) "
            "VALUES ('evt-in-flight', 'run.stuck', 'r1', 0, '\\x01')"
        )
        await expire(watch, old)
        pid = b.get_server_pid()
        taking = asyncio.ensure_future(lease.acquire(b, "daemon-b", 60, lock_wait=60))
        # The takeover waits on the row lock the fenced write holds...
        while not await watch.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            await asyncio.sleep(0.02)
        assert not taking.done()
    # ...and gets the lease once that write has committed, so it is ordered before the epoch.
    new = await taking
    assert new is not None
    assert new.epoch == old.epoch + 1
    assert await events(watch) == ["evt-in-flight"]
    with pytest.raises(LeaseLost):
        await write_event(a, old, "evt-late")


async def test_a_killed_connection_loses_its_transaction_not_the_lease(connect: Connect) -> None:
    a, b = await connect(), await connect()
    grant = await lease.acquire(a, "daemon-a", 60)
    assert grant is not None
    pid = a.get_server_pid()

    async def write_then_get_killed() -> None:
        async with lease.fenced(a, grant):
            await a.execute(
                "INSERT INTO events (id, type, run_uuid, recorded_at, body) "
                "VALUES ('evt-killed', 'run.stuck', 'r1', 0, '\\x01')"
            )
            assert await b.fetchval("SELECT pg_terminate_backend($1)", pid)
            await a.execute("SELECT 1")

    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
        await write_then_get_killed()
    assert await events(b) == []  # the uncommitted write died with the connection
    # The lease outlives the connection: nobody else may take it, and the holder goes on
    # with the same epoch on a new connection.
    assert await lease.acquire(b, "daemon-b", 60) is None
    again = await connect()
    renewed = await lease.renew(again, grant, 60)
    assert renewed is not None
    assert renewed.epoch == grant.epoch
    await write_event(again, renewed, "evt-reconnected")
    assert await events(b) == ["evt-reconnected"]


async def test_a_frozen_holder_mid_transaction_is_ended_and_taken_over(connect: Connect) -> None:
    # A holder that stops inside a write transaction (SIGSTOP, a GC pause): from the server's
    # side its session sits idle in the transaction, holding the fence's lock.
    frozen = await connect(**lease.session_settings(0.3))  # ended after 1 s idle in a transaction
    b = await connect()
    old = await lease.acquire(frozen, "daemon-a", 0.3)
    assert old is not None
    transaction = frozen.transaction()
    await transaction.start()
    await lease.fence(frozen, old)
    await frozen.execute(
        "INSERT INTO events (id, type, run_uuid, recorded_at, body) "
        "VALUES ('evt-frozen', 'run.stuck', 'r1', 0, '\\x01')"
    )
    await expire(b, old)
    new = None
    while new is None:  # refused while the frozen session still holds the lock, then taken
        new = await lease.acquire(b, "daemon-b", 60, lock_wait=0.2)
    assert new.epoch == old.epoch + 1
    # When it wakes up, its session is gone (the server ended it), with its write.
    while not frozen.is_closed():
        await asyncio.sleep(0.02)
    with pytest.raises(asyncpg.InterfaceError, match="connection is closed"):
        await transaction.commit()
    assert await events(b) == []
    later = await connect()
    with pytest.raises(LeaseLost):
        await write_event(later, old, "evt-after-waking")
    assert await events(b) == []


async def test_fence_outside_a_transaction_is_a_programming_error(connect: Connect) -> None:
    a = await connect()
    grant = await lease.acquire(a, "daemon-a", 60)
    assert grant is not None
    with pytest.raises(RuntimeError, match="inside the write transaction"):
        await lease.fence(a, grant)


async def test_lease_seconds_must_be_positive(connect: Connect) -> None:
    a = await connect()
    with pytest.raises(ValueError, match="lease_seconds"):
        await lease.acquire(a, "daemon-a", 0)
