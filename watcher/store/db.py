"""Store plumbing: opening the SQLite file, connection settings, transactions, column codecs.

Invariants:
- One ``sqlite3.Connection`` per :class:`Database`, used from one thread (the event loop). Every
  call is short; nothing here is async.
- The connection runs in autocommit mode (``isolation_level=None``) and every multi-statement
  change goes through :meth:`Database.write`, which takes the write lock up front
  (``BEGIN IMMEDIATE``): a deferred transaction that later upgrades to a writer can fail at once
  with SQLITE_BUSY in WAL mode instead of waiting for ``busy_timeout``.
- WAL + ``synchronous=NORMAL``: a committed transaction survives a crash or SIGKILL of the
  process (only an OS crash or power loss may drop the last few), and readers (the CLI) never
  block the writer (the daemon) or the other way round.
- Any ``sqlite3.Error`` leaving this package is re-raised as :class:`StateError`, whose message
  names the file and SQLite's reason; it never contains data from rows (so never a secret).
- Every write transaction first checks that the path still names the file that was opened
  (device and inode): SQLite keeps writing into a deleted or replaced file without a word,
  and everything written there would be lost at the next start.
- Time columns hold unix seconds as REAL (UTC by definition): cheap to compare and index.
  Naive datetimes given to the store are taken as UTC.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watcher.store.outbox_changes import OutboxChanges

MEMORY = ":memory:"


class StateError(Exception):
    """The state file cannot be opened, created, migrated or used. The CLI exits with 3."""


class StateMissing(StateError):
    """A reading command found no state (no file at the path, or a database without the
    schema) and created none. The CLI exits with 1."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_ts(moment: datetime) -> float:
    """A datetime as unix seconds; naive values are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def from_ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def from_ts_opt(value: float | None) -> datetime | None:
    return None if value is None else from_ts(value)


def dump_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def load_labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    raw = json.loads(text)
    return {str(k): str(v) for k, v in raw.items()}


def describe(path: str, exc: sqlite3.Error) -> str:
    """A one-line reason that says what the user can do about it."""
    reason = str(exc) or type(exc).__name__
    lowered = reason.lower()
    if "not a database" in lowered:
        return f"state file {path} is not an SQLite database (wrong path or corrupted file)"
    if "malformed" in lowered or "corrupt" in lowered:
        return f"state file {path} is corrupted ({reason}); restore it or start a new one"
    if "readonly" in lowered or "unable to open" in lowered or "disk i/o" in lowered:
        return (
            f"state file {path} cannot be opened for writing ({reason}); "
            "check the path and its permissions"
        )
    if "locked" in lowered or "busy" in lowered:
        return f"state file {path} is locked by another process for too long ({reason})"
    return f"state file {path}: {reason}"


def _create_private(name: str) -> None:
    """Create the state file readable by its owner only (0600), if it does not exist yet.

    It holds labels, event bodies and delivery errors. SQLite gives the ``-wal`` and ``-shm``
    files it creates beside a database the database file's own mode, so creating this one
    first, empty (an empty file is a valid new database), covers all three whatever the
    umask. An existing file keeps the mode its owner gave it.
    """
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StateError(
            f"state file {name} cannot be created ({exc.strerror or exc}); "
            "check the path and its permissions"
        ) from None
    os.fchmod(fd, 0o600)  # the mode given to open() is filtered by the umask; this is not
    os.close(fd)


class Database:
    """An open SQLite connection with the watcher's settings and transaction helpers."""

    __slots__ = ("_conn", "_identity", "_outbox_changes", "path")

    def __init__(
        self, conn: sqlite3.Connection, path: str, identity: tuple[int, int] | None = None
    ) -> None:
        self._conn = conn
        self.path = path
        self._identity = identity  # (st_dev, st_ino) of the file opened; None in memory
        self._outbox_changes: OutboxChanges | None = None  # made on first use

    def _check_identity(self) -> None:
        """Raise :class:`StateError` if the path no longer names the file we opened."""
        if self._identity is None:
            return
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            raise StateError(
                f"state file {self.path} was deleted while in use; nothing more is written "
                "to it (restore it from a backup, or restart to begin a new one)"
            ) from None
        except OSError as exc:
            raise StateError(f"state file {self.path}: {exc.strerror or exc}") from None
        if (found.st_dev, found.st_ino) != self._identity:
            raise StateError(
                f"state file {self.path} was replaced by another file while in use; "
                "restart to use the new one"
            )

    @classmethod
    def connect(
        cls,
        path: str | Path,
        *,
        busy_timeout: float,
        setup: Callable[[sqlite3.Connection, str], object] | None = None,
    ) -> Database:
        """Open (creating if needed) the file, apply the settings, then run ``setup``.

        ``setup`` (the schema migration) gets the raw connection in autocommit mode; any
        error it raises closes the connection, and SQLite errors become :class:`StateError`.
        """
        name = str(path)
        if name != MEMORY:
            target = Path(name)
            # Checked by hand because SQLite's own answer is just "unable to open database file".
            if not target.parent.is_dir():
                raise StateError(
                    f"state file {name} cannot be created: directory {target.parent} does not exist"
                )
            if target.is_dir():
                raise StateError(f"state file {name} is a directory")
            _create_private(name)
        try:
            conn = sqlite3.connect(name, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateError(describe(name, exc)) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {max(0, int(busy_timeout * 1000))}")
            # Reading the schema forces SQLite to parse the header: garbage fails here.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            # Takes effect only on a new, empty file (before WAL writes its header): pages
            # freed by retention can then go back to the file system (incremental_vacuum).
            # Existing files keep their mode: a one-time VACUUM converts them (README).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if setup is not None:
                setup(conn, name)
            identity = None
            if name != MEMORY:
                opened = os.stat(name)
                identity = (opened.st_dev, opened.st_ino)
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(describe(name, exc)) from exc
        except OSError as exc:
            conn.close()
            raise StateError(f"state file {name}: {exc.strerror or exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, name, identity)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        self._check_identity()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(describe(self.path, exc)) from exc
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as exc:
            # Some errors (disk full, I/O) make SQLite roll back by itself already.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StateError(describe(self.path, exc)) from exc
            raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query in the block sees the same snapshot."""
        try:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(describe(self.path, exc)) from exc

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        """One autocommit SELECT, all rows."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StateError(describe(self.path, exc)) from exc

    def outbox_changes(self) -> OutboxChanges:
        """The outbox's change signal on this connection (:mod:`watcher.store.outbox_changes`)."""
        if self._outbox_changes is None:  # one per connection: its trigger calls this one
            self._outbox_changes = OutboxChanges(self._conn)
        return self._outbox_changes

    def set_autocheckpoint(self, pages: int) -> None:
        """Commits on this connection checkpoint the WAL once it holds ``pages`` (0: never)."""
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {max(0, int(pages))}").fetchall()

    def checkpoint(self) -> tuple[int, int]:
        """A PASSIVE WAL checkpoint: copies into the file the frames no reader still needs,
        never waits for a lock; returns ``(frames in the WAL, frames checkpointed)``."""
        try:
            row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise StateError(describe(self.path, exc)) from exc
        return int(row[1]), int(row[2])


class StoreBase:
    """What the store's parts share: the database and the wall clock."""

    _db: Database
    _clock: Callable[[], datetime]

    def defer_checkpoints(self, pages: int) -> None:
        """Let this connection's commits checkpoint the WAL only past ``pages`` (a safety
        net): the daemon checkpoints off its loop (:mod:`watcher.checkpoints`)."""
        self._db.set_autocheckpoint(pages)

    def outbox_changes(self) -> OutboxChanges:
        """What lets an idle dispatcher skip re-reading the outbox (the daemon, SQLite)."""
        return self._db.outbox_changes()

    def _now(self) -> float:
        return to_ts(self._clock())
