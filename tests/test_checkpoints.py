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


class CountingCheckpointer(Checkpointer):
    """The daemon's checkpointer, counting its passes (each one a real checkpoint)."""

    passes = 0

    def _checkpoint(self) -> tuple[int, int]:
        self.passes += 1
        return super()._checkpoint()


def test_a_pass_runs_when_worth_it_a_burst_at_once_the_trickle_after_max_defer(
    tmp_path: Path,
) -> None:
    """Issue 12 item 5: a pass every 2 s cost CPU in steady polling; it now runs for a burst
    of writes at the next check, and otherwise only after ``max_defer_seconds``."""
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        quiet = CountingCheckpointer(store, interval_seconds=0.02, max_defer_seconds=3600)
        stop = asyncio.Event()

        async def scenario() -> tuple[int, int, int, int]:
            task = asyncio.create_task(quiet.run(stop))
            await asyncio.sleep(0.3)
            at_start = quiet.passes  # the first check passes
            store.track([TrackRequest(f"run-{i}", "p") for i in range(10)])  # a trickle
            await asyncio.sleep(0.3)
            after_trickle = quiet.passes
            before = path.stat().st_size
            grow_wal(store, 1500)  # a burst: thousands of rows
            await asyncio.sleep(0.5)
            stop.set()
            await task
            return at_start, after_trickle, quiet.passes, path.stat().st_size - before

        at_start, after_trickle, after_burst, copied = asyncio.run(scenario())
        assert at_start == 1
        assert after_trickle == 1  # ten rows and an hour to go: no pass yet
        assert after_burst >= 2  # the burst: checkpointed at the next check
        assert copied > 1000 * PAGE

        stop = asyncio.Event()
        deferred = CountingCheckpointer(store, interval_seconds=0.02, max_defer_seconds=0.2)

        async def trickle() -> int:
            task = asyncio.create_task(deferred.run(stop))
            await asyncio.sleep(1.0)
            stop.set()
            await task
            return deferred.passes

        assert asyncio.run(trickle()) >= 2  # after max_defer, even with nothing written
