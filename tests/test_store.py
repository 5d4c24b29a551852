"""The SQLite store against real files: what only SQLite has (schema and file checks, locks,
a failure inside the transaction, a crash right after a commit). The store contract both
backends share (registry, recording, outbox) is in ``test_store_contract*.py``."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FAKE_START, FakeClock

from watcher.events import RunState
from watcher.store import StateError, Store, TrackRequest
from watcher.store.db import Database
from watcher.store.schema import APPLICATION_ID, MIGRATIONS
from watcher.store.store import DEFAULT_BUSY_TIMEOUT
from watcher.transitions import detect

TERMINAL = frozenset({"SUCCESS", "FAILED"})
T0 = FAKE_START  # where the ``clock`` fixture starts
RUN_A = "84232c68-a016-4668-b2e3-168a175d6f29"
RUN_B = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> Iterator[Store]:
    """This file's store runs on the fake clock (``clock`` starts at ``T0``)."""
    with Store.open(db_path, clock=clock) as opened:
        yield opened


# --- opening, schema, failures -------------------------------------------------------------


def test_creates_schema_and_reopens_idempotently(db_path: Path, clock: FakeClock) -> None:
    with Store.open(db_path, clock=clock) as store:
        store.track([TrackRequest(RUN_A, labels={"team": "g"})])
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"runs", "events", "outbox", "counters"} <= tables
    with Store.open(str(db_path), clock=clock) as again:
        run = again.get_run(RUN_A)
        assert run is not None
        assert run.labels == {"team": "g"}
        assert run.tracked_at == T0


def test_connection_settings(db_path: Path) -> None:
    # The connection every Store.open makes (the pragmas are per connection, so they are
    # read through the same public connection layer rather than a second raw connection).
    db = Database.connect(db_path, busy_timeout=DEFAULT_BUSY_TIMEOUT)
    try:
        assert db.query("PRAGMA foreign_keys") == [(1,)]
        assert db.query("PRAGMA synchronous") == [(1,)]  # NORMAL
        assert db.query("PRAGMA busy_timeout")[0][0] >= 5000
    finally:
        db.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(StateError, match="schema version 999, newer"):
        Store.open(db_path)


def test_garbage_file_is_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite at all, just some text\n" * 200)
    with pytest.raises(StateError, match="not an SQLite database"):
        Store.open(db_path)


def test_corrupted_file_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()  # the last close checkpoints the WAL into the main file
    with db_path.open("r+b") as raw:
        raw.seek(100)  # past the header: the schema table's b-tree page
        raw.write(b"\xff" * 3000)
    with pytest.raises(StateError, match=r"state file .*(corrupted|malformed|not an SQLite)"):
        Store.open(db_path)


def test_lock_held_too_long_is_a_state_error(db_path: Path) -> None:
    with Store.open(db_path, busy_timeout=0.1) as cli:
        # Another process (the daemon) in the middle of a write transaction.
        daemon = sqlite3.connect(db_path, isolation_level=None)
        try:
            daemon.execute("BEGIN IMMEDIATE")
            with pytest.raises(StateError, match="locked"):
                cli.track([TrackRequest(RUN_A)])
            assert cli.list_runs() == []  # readers are not blocked by the writer
            daemon.execute("COMMIT")
        finally:
            daemon.close()
        assert cli.track([TrackRequest(RUN_A)]).added == [RUN_A]


def test_other_applications_database_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(StateError, match="another application"):
        Store.open(db_path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        Store.open(tmp_path / "nope" / "state.db")


def test_path_below_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="state file"):
        Store.open(tmp_path / "file" / "state.db")


def test_directory_as_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="is a directory"):
        Store.open(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(StateError, match="cannot be opened for writing"):
            Store.open(locked / "state.db")
    finally:
        locked.chmod(stat.S_IRWXU)


# --- recording -----------------------------------------------------------------------------


def test_observation_is_atomic(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.track([TrackRequest(RUN_A)])
    cur = RunState(RUN_A, "", "RUNNING", T0)
    event = detect(None, cur, terminal=TERMINAL)

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    # Fails after the run row was updated and the event inserted, inside the transaction.
    monkeypatch.setattr("watcher.store.journal.insert_deliveries", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.record_observation(cur, event, notifiers=["ops"])
    monkeypatch.undo()
    run = store.get_run(RUN_A)
    assert run is not None
    assert (run.status, run.last_polled_at) == (None, None)
    assert store.events() == []
    assert store.pending_deliveries() == []
    # Invalid notifier names are refused before anything is written.
    with pytest.raises(ValueError, match="notifier names"):
        store.record_observation(cur, event, notifiers=["ops", ""])
    assert store.events() == []
    # And the store is still usable afterwards.
    assert store.record_observation(cur, event, notifiers=["ops"])
    assert store.events() == [event]


# --- durability ----------------------------------------------------------------------------


def test_sigkill_right_after_recording_keeps_the_event(db_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from datetime import UTC, datetime
        from watcher.events import RunState
        from watcher.store import Store, TrackRequest
        from watcher.transitions import detect

        store = Store.open({str(db_path)!r})
        store.track([TrackRequest({RUN_A!r})])
        state = RunState({RUN_A!r}, "", "SUCCESS", datetime.now(UTC))
        event = detect(None, state, terminal=frozenset({{"SUCCESS"}}))
        assert store.record_observation(state, event, notifiers=["ops"])
        print(event.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    event_id = proc.stdout.strip()
    assert Path(f"{db_path}-wal").exists()  # committed, not checkpointed: recovery is tested
    with Store.open(db_path) as store:
        run = store.get_run(RUN_A)
        assert run is not None
        assert (run.status, run.terminal) == ("SUCCESS", True)
        assert [e.id for e in store.events()] == [event_id]
        assert [(d.event.id, d.notifier) for d in store.pending_deliveries()] == [(event_id, "ops")]
