"""The store contract's fixtures: one :class:`~watcher.store.api.AsyncStore` per backend.

``backend`` is parametrized over ``sqlite`` (a real file in ``tmp_path``) and ``postgres`` (a
fresh database of the test cluster, ``pg_url``); ``astore`` is a store opened on it with the
test's fake clock. Contract tests import both (``from astore import astore, backend``) and
so run every assertion against each backend. ``Backend.open`` opens a second store on the
same state (the CLI beside the daemon); ``Backend.table_counts`` counts rows the way an
operator would, outside the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from support import FakeClock

from watcher.events import Event, RunState
from watcher.store.api import AsyncStore, open_async_store
from watcher.transitions import detect

TERMINAL = frozenset({"SUCCESS", "FAILED"})
TABLES = ("runs", "events", "outbox")


@dataclass
class Backend:
    kind: str
    clock: FakeClock
    path: Path | None = None
    url: str | None = None

    async def open(self) -> AsyncStore:
        return await open_async_store(path=self.path, url=self.url, clock=self.clock)

    async def table_counts(self) -> dict[str, int]:
        """Rows in ``runs``, ``events`` and ``outbox``, read outside the store."""
        if self.url is not None:
            conn = await asyncpg.connect(self.url)
            try:
                return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
            finally:
                await conn.close()
        assert self.path is not None
        db = sqlite3.connect(self.path)
        try:
            return {t: int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}
        finally:
            db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Backend:
    if request.param == "postgres":
        return Backend("postgres", clock, url=request.getfixturevalue("pg_url"))
    return Backend("sqlite", clock, path=tmp_path / "state.db")


@pytest.fixture
async def astore(backend: Backend) -> AsyncIterator[AsyncStore]:
    store = await backend.open()
    try:
        yield store
    finally:
        await store.close()


async def observe(
    store: AsyncStore,
    run_uuid: str,
    status: str,
    at: datetime,
    *,
    notifiers: tuple[str, ...] = ("ops",),
    previous: str | None = None,
    project_id: str = "",
    held_until: datetime | None = None,
) -> Event | None:
    """A poll result through detect() into record_observation, as the poller does it; the
    previous status is the stored one unless ``previous`` is given."""
    prev = None if previous is None else RunState(run_uuid, project_id, previous, at)
    if previous is None:
        stored = await store.get_run(run_uuid)
        if stored is not None and stored.status is not None:
            prev = RunState(run_uuid, stored.project_id, stored.status, at, stored.labels)
    labels = await store.labels_of(run_uuid)
    cur = RunState(run_uuid, project_id, status, at, labels, {"Status": status})
    event = detect(prev, cur, terminal=TERMINAL)
    assert await store.record_observation(cur, event, notifiers=notifiers, held_until=held_until)
    return event
