"""What only the PostgreSQL store has: writes fenced by the lease, and errors that name the
database but never its URL or password. Against the real test cluster (``tests/pg.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from pg import Cluster, lock_waited
from support import FAKE_START, FakeClock

from watcher.events import RunState
from watcher.store import StateError, TrackRequest
from watcher.store.api import open_async_store
from watcher.store.pg import lease
from watcher.store.pg.lease import Grant, LeaseLost
from watcher.store.pg.store import PgStore
from watcher.transitions import detect

RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
TERMINAL = frozenset({"SUCCESS", "FAILED"})


async def test_bound_writes_are_fenced_by_the_lease(pg_url: str, clock: FakeClock) -> None:
    store = await PgStore.open(pg_url, clock=clock)
    conn = await asyncpg.connect(pg_url)
    try:
        await store.track([TrackRequest(RUN)])
        grant = await lease.acquire(conn, "me", 30)
        assert grant is not None
        current: list[Grant | None] = [grant]
        store.bind(lambda: current[0])
        state = RunState(RUN, "", "RUNNING", FAKE_START)
        first = detect(None, state, terminal=TERMINAL)
        assert await store.record_observation(state, first, notifiers=["ops"])

        # A standby (no grant): the daemon's writes raise LeaseLost before touching anything.
        current[0] = None
        with pytest.raises(LeaseLost):
            await store.record_polls([(RUN, FAKE_START)])
        # Another daemon took the lease over: the old grant's writes fail inside their
        # transaction and write nothing.
        current[0] = grant
        await lease.release(conn, grant)
        assert await lease.acquire(conn, "other", 30) is not None
        done = RunState(RUN, "", "SUCCESS", FAKE_START)
        second = detect(state, done, terminal=TERMINAL)
        with pytest.raises(LeaseLost):
            await store.record_observation(done, second, notifiers=["ops"])
        pending = await store.pending_deliveries()
        with pytest.raises(LeaseLost):
            await store.mark_delivered(pending[0].id)
        run = await store.get_run(RUN)
        assert run is not None
        assert run.status == "RUNNING"
        assert [d.id for d in await store.pending_deliveries()] == [pending[0].id]
        # The user's writes (track, silences, redelivery) are not the daemon's: not fenced.
        assert (await store.track([TrackRequest(RUN, labels={"a": "b"})])).existing == [RUN]
        store.bind(None)
        await store.mark_delivered(pending[0].id)
        assert await store.pending_deliveries() == []
    finally:
        await conn.close()
        await store.close()


async def _bound_with_one_pending_row(
    pg_url: str, clock: FakeClock, conn: asyncpg.Connection
) -> tuple[PgStore, Grant, int]:
    """A store bound to a lease it holds (60 s), with one pending outbox row."""
    store = await PgStore.open(pg_url, clock=clock)
    await store.track([TrackRequest(RUN)])
    grant = await lease.acquire(conn, "me", 60)
    assert grant is not None
    store.bind(lambda: grant)
    state = RunState(RUN, "", "RUNNING", FAKE_START)
    assert await store.record_observation(
        state, detect(None, state, terminal=TERMINAL), notifiers=["ops"]
    )
    [row] = await store.pending_deliveries()
    return store, grant, row.id


async def test_a_takeover_waits_for_a_mark_in_flight(pg_url: str, clock: FakeClock) -> None:
    # A mark is one statement carrying the fence: a takeover that comes while it runs waits
    # until it has committed, so the mark is ordered before the new epoch.
    conn, blocker, taker = [await asyncpg.connect(pg_url) for _ in range(3)]
    store, grant, row_id = await _bound_with_one_pending_row(pg_url, clock, conn)
    try:
        async with blocker.transaction():  # holds the outbox row: the mark stops mid-way
            await blocker.execute("SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE", row_id)
            marking = asyncio.ensure_future(store.mark_delivered(row_id))
            await lock_waited(conn, "WITH fence")
            await conn.execute("UPDATE lease SET expires_at = 0")
            taking = asyncio.ensure_future(lease.acquire(taker, "other", 60, lock_wait=60))
            await lock_waited(conn, "SELECT holder")
            assert not marking.done()
            assert not taking.done()
        await marking
        new = await taking
        assert new is not None
        assert new.epoch == grant.epoch + 1
        assert await store.pending_deliveries() == []
    finally:
        await store.close()
        for c in (conn, blocker, taker):
            await c.close()


async def test_a_mark_behind_a_takeover_writes_nothing(pg_url: str, clock: FakeClock) -> None:
    # The other way round: a takeover holds the lease row when the mark comes; the mark's
    # fence waits, then finds the new epoch, and the row stays pending for the new holder.
    conn, taker = [await asyncpg.connect(pg_url) for _ in range(2)]
    store, _, row_id = await _bound_with_one_pending_row(pg_url, clock, conn)
    try:
        async with taker.transaction():
            await taker.execute("SELECT 1 FROM lease WHERE name = 'active' FOR UPDATE")
            await taker.execute(
                "UPDATE lease SET holder = 'other', epoch = epoch + 1 WHERE name = 'active'"
            )
            marking = asyncio.ensure_future(store.mark_delivered(row_id))
            await lock_waited(conn, "WITH fence")
        with pytest.raises(LeaseLost):
            await marking
        for mark in (
            store.mark_silenced(row_id, "silenced"),
            store.mark_retry(row_id, attempts=1, next_attempt_at=FAKE_START, error="boom"),
            store.mark_dead(row_id, error="dead"),
        ):
            with pytest.raises(LeaseLost):
                await mark
        [row] = await store.pending_deliveries()
        assert (row.id, row.attempts, row.last_error) == (row_id, 0, None)
    finally:
        await store.close()
        for c in (conn, taker):
            await c.close()


async def test_errors_name_the_database_never_the_url(pg_cluster: Cluster, pg_url: str) -> None:
    name = pg_url.rsplit("/", 1)[1]
    wrong = pg_url.replace(pg_cluster.password, "not-the-password")
    with pytest.raises(StateError) as refused:
        await open_async_store(url=wrong)
    text = str(refused.value)
    assert f"database {name}" in text
    assert "not-the-password" not in text
    assert pg_cluster.password not in text
    assert "postgresql://" not in text

    closed = f"postgresql://u:secret-pw@127.0.0.1:1/{name}"
    with pytest.raises(StateError, match=f"database {name} cannot be reached") as unreachable:
        await open_async_store(url=closed)
    assert "secret-pw" not in str(unreachable.value)


async def test_reading_commands_do_not_create_a_state(pg_empty_url: str, pg_url: str) -> None:
    with pytest.raises(StateError, match="holds no omics-watcher state"):
        await open_async_store(url=pg_empty_url, create=False)
    conn = await asyncpg.connect(pg_empty_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('runs')") is None
    finally:
        await conn.close()
    store = await open_async_store(url=pg_url, create=False)
    try:
        assert await store.count_by_status() == {}
        assert store.name.startswith("database ")
    finally:
        await store.close()


async def test_a_missing_state_file_is_not_created_for_reading(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no state file at"):
        await open_async_store(path=tmp_path / "state.db", create=False)
    assert not (tmp_path / "state.db").exists()
    with pytest.raises(ValueError, match="exactly one"):
        await open_async_store()
