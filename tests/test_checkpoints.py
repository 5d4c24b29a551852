"""WAL checkpoints run off the event loop (watcher.checkpoints).

Why: a commit that pushed the WAL past 1,000 pages checkpointed it on the daemon's loop
connection, syncing the state file while probes and polling waited (issue 13). Real state
file: the loop connection's commits no longer move pages into the file; the checkpointer does,
in its own thread, and stops cleanly.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from watcher.checkpoints import Checkpointer
from watcher.store import Store, TrackRequest

PAGE = 4096


def grow_wal(store: Store, pages: int) -> None:
    """Track runs with big labels until about ``pages`` pages went through the WAL."""
    label = "x" * 200
    per_call = 50
    calls = pages * PAGE // (per_call * 300) + 1
    for call in range(calls):
        store.track([TrackRequest(f"run-{call}-{i}", "p", {"k": label}) for i in range(per_call)])


def test_loop_commits_leave_the_wal_to_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        checkpointer = Checkpointer(store, interval_seconds=0.05)
        stop = asyncio.Event()

        async def scenario() -> tuple[int, int, int]:
            task = asyncio.create_task(checkpointer.run(stop))
            await asyncio.sleep(0.2)  # the first pass; the loop connection's net is set
            stop.set()
            await task
            before = path.stat().st_size
            grow_wal(store, 3000)  # three times SQLite's default automatic threshold
            wal = Path(f"{path}-wal").stat().st_size
            stop.clear()
            task = asyncio.create_task(checkpointer.run(stop))
            await asyncio.sleep(0.5)
            stop.set()
            await task
            return before, wal, path.stat().st_size

        before, wal, after = asyncio.run(scenario())
        # No commit on the loop connection checkpointed: everything piled up in the WAL ...
        assert wal > 2000 * PAGE
        # ... until the checkpointer's own connection copied it into the file.
        assert after - before > 1000 * PAGE
        assert store.list_runs()


def test_an_in_memory_store_needs_no_checkpoints() -> None:
    with Store.open(":memory:") as store:
        checkpointer = Checkpointer(store, interval_seconds=0.01)
        assert not checkpointer.enabled
        asyncio.run(checkpointer.run(asyncio.Event()))  # returns at once


def test_a_cancelled_checkpointer_closes_its_connection(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        checkpointer = Checkpointer(store, interval_seconds=0.01)

        async def scenario() -> None:
            task = asyncio.create_task(checkpointer.run(asyncio.Event()))
            await asyncio.sleep(0.1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.1)

        asyncio.run(scenario())
        grow_wal(store, 50)
    # Last connection closed: SQLite checkpointed and removed the WAL (no reader left open).
    assert not os.path.exists(f"{path}-wal")
