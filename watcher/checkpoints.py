"""WAL checkpoints off the event loop.

Why: SQLite checkpoints the write-ahead log inside whichever commit pushes it past 1,000
pages, copying those pages into the state file and syncing it. On the daemon's event-loop
connection that one commit took 350 ms on a 726 MB state file (issue 13, registry_bench:
``/healthz`` max 366-391 ms, an idle daemon alike, a few seconds after startup; py-spy showed
``sqlite3WalCheckpoint`` → ``fdatasync`` under ``Database.write``), and nothing else on the
loop ran meanwhile: probes, polling, the API.

So the daemon checkpoints here instead: every ``interval_seconds`` a PASSIVE checkpoint in a
worker thread, on a connection of its own opened in that thread. PASSIVE never waits for a
lock and never blocks the writer or readers; what a reader still needs stays in the WAL until
the next pass. The loop connection keeps an automatic checkpoint only as a safety net, far
above what a pass leaves behind (:data:`SAFETY_NET_PAGES`), so the WAL stays bounded even if
this worker falls behind. An in-memory store has no WAL: nothing runs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import structlog

from watcher.store import StateError, Store
from watcher.store.db import MEMORY, Database
from watcher.tasks import wait_set

SAFETY_NET_PAGES = 16_384  # 64 MiB at the default page size; SQLite's default is 1,000
INTERVAL_SECONDS = 2.0
BUSY_TIMEOUT_SECONDS = 5.0


class Checkpointer:
    """Checkpoints the state file's WAL in its own thread until stopped."""

    def __init__(self, store: Store, *, interval_seconds: float = INTERVAL_SECONDS) -> None:
        self._store = store
        self._interval = interval_seconds
        self._worker: ThreadPoolExecutor | None = None
        self._db: Database | None = None  # the worker thread's own connection
        self._log = structlog.get_logger("watcher.checkpoints")

    @property
    def enabled(self) -> bool:
        return self._store.path != MEMORY

    async def run(self, stop: asyncio.Event) -> None:
        """A checkpoint every ``interval_seconds`` until ``stop`` is set (or cancelled)."""
        if not self.enabled:
            return
        self._store.defer_checkpoints(SAFETY_NET_PAGES)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await loop.run_in_executor(self._worker, self._checkpoint)
                    failures = 0
                except StateError as exc:
                    failures += 1
                    if failures in (1, 10, 100):  # the daemon's own writes report a bad file
                        self._log.warning("checkpoint_failed", error=str(exc), failures=failures)
                await wait_set(stop, self._interval)
        finally:
            self._close()

    def _checkpoint(self) -> tuple[int, int]:
        if self._db is None:
            self._db = Database.connect(self._store.path, busy_timeout=BUSY_TIMEOUT_SECONDS)
        return self._db.checkpoint()

    def _close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.submit(self._close_db)
        worker.shutdown(wait=False)

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
