"""The PostgreSQL store's pool sends one round trip per store call, not two.

asyncpg's default pool reset sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
RESET ALL`` every time a connection goes back to the pool, which doubled the statements the
server ran for the daemon's single-statement calls (``benchmarks/backend_bench.py``, issue
15). The store keeps no session state, so its pool resets nothing; a call that fails inside
its transaction still leaves a clean connection for the next one. Checked with the server's
own statement log (``log_statement = all`` for the test's database only), against the real
test cluster (``tests/pg.py``).
"""

from __future__ import annotations

import asyncpg
import pytest
from pg import Cluster

from watcher.limits import MAX_LABELS, LabelError
from watcher.store import TrackRequest
from watcher.store.pg.base import database_name
from watcher.store.pg.store import PgStore

RUN = "5d0c2f1e-8a7b-4c3d-9e2f-0a1b2c3d4e5f"


async def test_a_store_call_is_its_statement_and_no_reset(pg_cluster: Cluster, pg_url: str) -> None:
    name = database_name(pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")
    finally:
        await conn.close()
    log = pg_cluster.folder / "server.log"
    start = log.stat().st_size
    store = await PgStore.open(pg_url, pool_size=1)
    try:
        await store.track([TrackRequest(RUN, labels={"team": "a"})])
        for _ in range(20):
            assert (await store.get_run(RUN)) is not None
        # A call that fails inside its transaction (merged labels over the limit) rolls
        # back; the one pooled connection serves the next call as before.
        too_many = {f"k{i}": "v" for i in range(MAX_LABELS)}
        with pytest.raises(LabelError):
            await store.track([TrackRequest(RUN, labels=too_many)])
        run = await store.get_run(RUN)
        assert run is not None
        assert run.labels == {"team": "a"}
    finally:
        await store.close()
    with log.open(errors="replace") as text:
        text.seek(start)
        # Simple queries log as "statement: ...", asyncpg's prepared ones as "execute ...: ...".
        statements = [line for line in text if "statement: " in line or "execute " in line]
    reads = [line for line in statements if "FROM runs WHERE tracked AND run_uuid" in line]
    assert len(reads) == 21, statements[-5:]
    resets = [line for line in statements if "RESET ALL" in line or "unlock_all" in line]
    assert resets == []
