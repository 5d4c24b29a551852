"""The :class:`Store` facade: opening the state file and closing it again.

The methods live in one mixin per concern (registry, recording, journal, outbox, held
deliveries, discovery, groups); this class only owns the connection and the clock. See the
package docstring for the invariants.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType

from watcher.store.db import MEMORY, Database, utc_now
from watcher.store.discovery import DiscoveryMixin
from watcher.store.figures import FiguresMixin
from watcher.store.groups import GroupsMixin
from watcher.store.history import HistoryMixin
from watcher.store.holds import HoldsMixin
from watcher.store.journal import JournalMixin
from watcher.store.outbox import OutboxMixin
from watcher.store.overview import OverviewMixin
from watcher.store.recording import RecordingMixin
from watcher.store.references import ReferencesMixin
from watcher.store.registry import RegistryMixin
from watcher.store.schema import migrate
from watcher.store.silences import SilencesMixin

DEFAULT_BUSY_TIMEOUT = 5.0


class Store(
    RegistryMixin,
    RecordingMixin,
    JournalMixin,
    OutboxMixin,
    HistoryMixin,
    HoldsMixin,
    DiscoveryMixin,
    GroupsMixin,
    ReferencesMixin,
    OverviewMixin,
    SilencesMixin,
    FiguresMixin,
):
    """The watcher's SQLite state: registry, event log and outbox. One instance per process."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = db
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        clock: Callable[[], datetime] = utc_now,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> Store:
        """Open the state file, creating and migrating it as needed.

        Raises :class:`StateError` if the file cannot be used: a missing or unwritable
        directory, not an SQLite file, corrupted, another application's database, or a schema
        newer than this version knows. ``busy_timeout`` is how long a call waits for another
        process's write lock (the CLI and the daemon share the file).
        """
        db = Database.connect(path, busy_timeout=busy_timeout, setup=migrate)
        return cls(db, clock=clock)

    @property
    def path(self) -> str:
        return self._db.path

    def open_reader(self) -> Store | None:
        """A second connection to the same file, for reads made off the event loop: open and
        use it in one worker thread (a connection stays in the thread that opened it).
        ``None`` for an in-memory store, which no other connection can see."""
        if self.path == MEMORY:
            return None
        return Store.open(self.path, clock=self._clock)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
