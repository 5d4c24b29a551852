"""What only the PostgreSQL store has: writes fenced by the lease, and errors that name the
database but never its URL or password. Against the real test cluster (``tests/pg.py``)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from pg import Cluster
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
