"""SQLite reads that can take more than a few milliseconds, run off the event loop.

Why: a page of the registry or of the event log, filtered by a label or an event type, may
read far more rows than it returns (issue 13: a whole-registry ``GET /v1/runs`` kept
``/healthz`` from answering for 8 s). Such reads run here, in one worker thread, on a second
connection to the state file opened in that thread, so probes, ``/metrics`` and polling keep
the loop while they run. The one user is the SQLite adapter
(:class:`~watcher.store.api.SqliteStore`), which sends its heavy reads here; callers (the
admin API, the status page, the CLI) just await the store, on either backend.

Invariants:
- Only reads. Every write (and its compare-and-set) stays on the loop's connection, so
  nothing here can race a status change; WAL lets this reader run beside the writer.
- One worker thread, so at most one such read at a time: concurrent requests queue instead of
  each holding a connection and a page of rows.
- An in-memory store (tests) has no second connection: its reads run inline on the loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
S = TypeVar("S", bound="Closable")


class Closable(Protocol):
    def close(self) -> None: ...


class OffLoopReads(Generic[S]):
    """Runs read functions against a reader connection in one worker thread."""

    def __init__(self, store: S, open_reader: Callable[[], S | None]) -> None:
        self._store = store
        self._open_reader = open_reader
        self._reader: S | None = None
        self._inline: bool | None = None  # decided by the first read (in the worker)
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, read: Callable[[S], T]) -> T:
        """``read(reader)`` in the worker thread (inline for an in-memory store)."""
        if self._inline:
            return read(self._store)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-reads")
        loop = asyncio.get_running_loop()
        found, value = await loop.run_in_executor(self._executor, self._call, read)
        if found:
            return value  # type: ignore[return-value]
        self._inline = True  # no second connection: read on the loop from now on
        return read(self._store)

    def _call(self, read: Callable[[S], T]) -> tuple[bool, T | None]:
        if self._reader is None:
            self._reader = self._open_reader()
            if self._reader is None:
                return False, None
        return True, read(self._reader)

    async def close(self) -> None:
        """Close the reader in its own thread and stop the worker. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, self._close_reader)
        executor.shutdown(wait=False)

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


def json_body(value: object) -> bytes:
    """The JSON bytes of a response (compact, UTF-8)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
