"""The SQLite store against real files: schema, registry, atomic recording, outbox, crashes."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support import FAKE_START, FakeClock

from watcher.events import STUCK, Event, RunState
from watcher.store import StateError, Store, TrackRequest
from watcher.store.db import Database
from watcher.store.schema import APPLICATION_ID, MIGRATIONS
from watcher.store.store import DEFAULT_BUSY_TIMEOUT
from watcher.transitions import detect, not_found_event, stuck_event

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


def observe(
    store: Store,
    run_uuid: str,
    status: str,
    at: datetime,
    *,
    notifiers: tuple[str, ...] = ("ops",),
    previous: str | None = None,
) -> Event | None:
    """Poll result through detect() into record_observation, as the scheduler will do it."""
    prev = None if previous is None else RunState(run_uuid, "", previous, at)
    if previous is None:
        stored = store.get_run(run_uuid)
        if stored is not None and stored.status is not None:
            prev = RunState(run_uuid, stored.project_id, stored.status, at, stored.labels)
    cur = RunState(run_uuid, "", status, at, store.labels_of(run_uuid), {"Status": status})
    event = detect(prev, cur, terminal=TERMINAL)
    assert store.record_observation(cur, event, notifiers=notifiers)
    return event


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


# --- registry ------------------------------------------------------------------------------


def test_track_is_idempotent_and_merges_labels(store: Store, clock: FakeClock) -> None:
    first = store.track(
        [
            TrackRequest(RUN_A, labels={"team": "g"}),
            TrackRequest(RUN_B, "prj-1"),
            TrackRequest(RUN_A, labels={"env": "prod"}),  # duplicate in one call: merged
        ]
    )
    assert (first.added, first.existing) == ([RUN_A, RUN_B], [])
    clock.advance(10)
    second = store.track([TrackRequest(RUN_A, "prj-2", {"team": "h"}), TrackRequest(RUN_B)])
    assert (second.added, second.existing) == ([], [RUN_A, RUN_B])
    run_a, run_b = store.get_run(RUN_A), store.get_run(RUN_B)
    assert run_a is not None
    assert run_b is not None
    assert run_a.labels == {"team": "h", "env": "prod"}
    assert run_a.project_id == "prj-2"
    assert run_a.tracked_at == T0  # tracking again is not a new tracking session
    assert run_b.project_id == "prj-1"  # "" never overwrites a known project
    assert [r.run_uuid for r in store.list_runs()] == [RUN_A, RUN_B]
    with pytest.raises(ValueError, match="empty"):
        store.track([TrackRequest("")])


def test_untrack_keeps_history_and_retrack_reactivates(store: Store, clock: FakeClock) -> None:
    store.track([TrackRequest(RUN_A, labels={"team": "g"})])
    observe(store, RUN_A, "RUNNING", T0)
    assert store.untrack([RUN_A, RUN_B, RUN_A]) == [RUN_A]
    assert store.untrack([RUN_A]) == []
    assert store.get_run(RUN_A) is None
    assert store.list_runs() == []
    assert store.active_runs() == []
    assert [e.status for e in store.events(run_uuid=RUN_A)] == ["RUNNING"]
    assert store.labels_of(RUN_A) == {"team": "g"}
    # An untracked run is never written to by polling.
    late = RunState(RUN_A, "", "SUCCESS", T0)
    assert not store.record_observation(late, None, notifiers=[])

    clock.advance(60)
    result = store.track([TrackRequest(RUN_A, labels={"team": "new"})])
    assert result.added == [RUN_A]
    run = store.get_run(RUN_A)
    assert run is not None
    assert (run.status, run.labels, run.tracked_at) == ("RUNNING", {"team": "new"}, clock.now)
    assert [r.run_uuid for r in store.active_runs()] == [RUN_A]


def test_hundred_thousand_runs_in_one_call(store: Store) -> None:
    uuids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(100_000)]
    result = store.track(TrackRequest(u, labels={"batch": "1"}) for u in uuids)
    assert result.added == uuids
    assert result.existing == []
    active = store.active_runs()
    assert len(active) == 100_000
    assert {run.run_uuid for run in active} == set(uuids)
    assert store.count_by_status() == {None: 100_000}
    again = store.track(TrackRequest(u) for u in uuids)
    assert (len(again.added), len(again.existing)) == (0, 100_000)
    assert len(store.untrack(uuids[:50_000])) == 50_000
    assert len(store.active_runs()) == 50_000


def test_daemon_sees_cli_changes_through_changes_since(db_path: Path, clock: FakeClock) -> None:
    with Store.open(db_path, clock=clock) as daemon, Store.open(db_path, clock=clock) as cli:
        cli.track([TrackRequest(RUN_A)])
        cursor, runs = daemon.snapshot()
        assert [r.run_uuid for r in runs] == [RUN_A]
        assert daemon.changes_since(cursor) == (cursor, [], [])

        cli.track([TrackRequest(RUN_B, "prj-9")])
        cursor2, added, removed = daemon.changes_since(cursor)
        assert cursor2 > cursor
        assert [(r.run_uuid, r.project_id, r.status) for r in added] == [(RUN_B, "prj-9", None)]
        assert removed == []

        cli.untrack([RUN_A])
        cursor3, added, removed = daemon.changes_since(cursor2)
        assert (added, removed) == ([], [RUN_A])
        assert daemon.changes_since(cursor3) == (cursor3, [], [])
        assert daemon.snapshot()[0] == cursor3

        # Re-tracking shows up as an activation again; a terminal run does not.
        cli.track([TrackRequest(RUN_A)])
        observe(daemon, RUN_B, "SUCCESS", T0)
        cli.track([TrackRequest(RUN_B, labels={"x": "y"})])
        _, added, removed = daemon.changes_since(cursor3)
        assert ([r.run_uuid for r in added], removed) == ([RUN_A], [])


def test_record_polls_and_errors(store: Store) -> None:
    store.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    retry_at = T0 + timedelta(seconds=40)
    store.record_error(RUN_A, consecutive_errors=3, next_poll_after=retry_at)
    run = store.get_run(RUN_A)
    assert run is not None
    assert (run.consecutive_errors, run.next_poll_after) == (3, retry_at)
    active = {r.run_uuid: r for r in store.active_runs()}
    assert active[RUN_A].next_poll_after == retry_at.timestamp()

    polled_at = T0 + timedelta(seconds=50)
    store.record_polls([(RUN_A, polled_at), (RUN_B, polled_at)])
    run = store.get_run(RUN_A)
    assert run is not None
    assert (run.consecutive_errors, run.next_poll_after, run.last_polled_at) == (0, None, polled_at)
    store.record_polls([])


def test_tracked_run_json(store: Store, clock: FakeClock) -> None:
    store.track([TrackRequest(RUN_A, "prj-1", {"team": "g"})])
    observe(store, RUN_A, "SUCCESS", T0 + timedelta(seconds=1.5))
    run = store.get_run(RUN_A)
    assert run is not None
    assert run.to_json_dict() == {
        "run_uuid": RUN_A,
        "project_id": "prj-1",
        "status": "SUCCESS",
        "terminal": True,
        "labels": {"team": "g"},
        "tracked_at": "2026-11-27T10:00:00.000Z",
        "last_polled_at": "2026-11-27T10:00:01.500Z",
        "status_since": "2026-11-27T10:00:01.500Z",
        "stopped": False,
    }
    assert store.active_runs() == []
    assert store.count_by_status() == {"SUCCESS": 1}


# --- recording -----------------------------------------------------------------------------


def test_observation_writes_status_event_and_outbox(store: Store) -> None:
    store.track([TrackRequest(RUN_A, labels={"team": "g"})])
    event = observe(store, RUN_A, "RUNNING", T0, notifiers=("ops", "chat", "ops"))
    assert event is not None
    assert store.events() == [event]
    pending = store.pending_deliveries()
    assert [(d.notifier, d.event) for d in pending] == [("ops", event), ("chat", event)]
    # Unchanged status: no event, but the poll time moves.
    later = T0 + timedelta(seconds=30)
    assert observe(store, RUN_A, "RUNNING", later) is None
    run = store.get_run(RUN_A)
    assert run is not None
    assert (run.status, run.status_since, run.last_polled_at) == ("RUNNING", T0, later)
    assert len(store.events()) == 1


def test_observation_compare_and_set(store: Store) -> None:
    store.track([TrackRequest(RUN_A)])
    observe(store, RUN_A, "RUNNING", T0)
    # A writer that still believes the run was never seen (stale previous status):
    stale = RunState(RUN_A, "", "SUCCESS", T0 + timedelta(seconds=5))
    event = detect(None, stale, terminal=TERMINAL)
    assert event is not None
    assert not store.record_observation(stale, event, notifiers=["ops"])
    # ...and a "no change" observation whose status differs from the stored one.
    assert not store.record_observation(stale, None, notifiers=["ops"])
    run = store.get_run(RUN_A)
    assert run is not None
    assert (run.status, run.last_polled_at) == ("RUNNING", T0)
    assert [e.status for e in store.events()] == ["RUNNING"]
    assert len(store.pending_deliveries()) == 1
    # The same transition recorded twice (e.g. two daemons) is applied once.
    cur = RunState(RUN_A, "", "SUCCESS", T0 + timedelta(seconds=6))
    prev = RunState(RUN_A, "", "RUNNING", T0)
    first = detect(prev, cur, terminal=TERMINAL)
    second = detect(prev, cur, terminal=TERMINAL)
    assert first is not None
    assert second is not None
    assert store.record_observation(cur, first, notifiers=["ops"])
    assert not store.record_observation(cur, second, notifiers=["ops"])
    assert next(e.id for e in store.events()) == first.id


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


def test_observation_must_match_its_event(store: Store) -> None:
    store.track([TrackRequest(RUN_A)])
    event = detect(None, RunState(RUN_A, "", "RUNNING", T0), terminal=TERMINAL)
    with pytest.raises(ValueError, match="does not describe"):
        store.record_observation(RunState(RUN_A, "", "QUEUED", T0), event, notifiers=[])


def test_not_found_stops_polling_until_tracked_again(store: Store) -> None:
    store.track([TrackRequest(RUN_A, labels={"team": "g"})])
    run = store.get_run(RUN_A)
    assert run is not None
    event = not_found_event(run, now=T0)
    assert store.record_not_found(RUN_A, event, notifiers=["ops"])
    assert not store.record_not_found(RUN_A, not_found_event(run, now=T0), notifiers=["ops"])
    stopped = store.get_run(RUN_A)
    assert stopped is not None
    assert stopped.stopped
    assert store.active_runs() == []
    assert store.events() == [event]
    assert [d.event.id for d in store.pending_deliveries()] == [event.id]
    cursor, _ = store.snapshot()
    assert store.track([TrackRequest(RUN_A, "prj-right")]).existing == [RUN_A]
    assert [r.project_id for r in store.changes_since(cursor)[1]] == ["prj-right"]
    assert [r.run_uuid for r in store.active_runs()] == [RUN_A]


def test_stuck_once_per_status(store: Store, clock: FakeClock) -> None:
    store.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    observe(store, RUN_A, "QUEUED", T0)
    observe(store, RUN_B, "RUNNING", T0)
    now = clock.advance(3600)
    # An hour old, but no poll saw them since: not seen stuck.
    assert store.stuck_candidates(after_seconds=1800) == []
    store.record_polls([(RUN_A, now)])
    assert store.stuck_candidates(after_seconds=0) == []
    assert store.stuck_candidates(after_seconds=3601) == []
    candidates = store.stuck_candidates(after_seconds=1800)
    assert [r.run_uuid for r in candidates] == [RUN_A]
    run = candidates[0]
    since = T0
    assert run.status_since == since
    event = stuck_event(run, since=since, now=now)
    assert store.record_event(event, notifiers=["ops"])
    again = stuck_event(run, since=since, now=now)
    assert not store.record_event(again, notifiers=["ops"])
    store.record_polls([(RUN_B, now)])
    assert store.stuck_candidates(after_seconds=1800) == [store.get_run(RUN_B)]
    # The next transition re-arms it for the new status.
    observe(store, RUN_A, "RUNNING", now)
    later = clock.advance(3600)
    rearmed = store.get_run(RUN_A)
    assert rearmed is not None
    assert rearmed.status_since == now
    assert store.record_event(stuck_event(rearmed, since=now, now=later), notifiers=[])
    types = [e.type for e in store.events(run_uuid=RUN_A)]
    assert types == [STUCK, "run.status_changed", STUCK, "run.status_changed"]


def test_record_event_ignores_known_ids(store: Store) -> None:
    event = Event("run.custom", "evt_1", T0, {"run_uuid": RUN_A})
    assert store.record_event(event, notifiers=["ops"])
    assert not store.record_event(event, notifiers=["ops"])
    assert len(store.pending_deliveries()) == 1


def test_events_newest_first_with_paging(store: Store) -> None:
    store.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    for i, status in enumerate(["QUEUED", "RUNNING", "SUCCESS"]):
        observe(store, RUN_A, status, T0 + timedelta(seconds=i))
        observe(store, RUN_B, status, T0 + timedelta(seconds=i))
    assert [e.status for e in store.events(run_uuid=RUN_A)] == ["SUCCESS", "RUNNING", "QUEUED"]
    page = store.event_log(limit=4)
    assert len(page) == 4
    rest = store.event_log(limit=4, before_seq=page[-1][0])
    assert [seq for seq, _ in page + rest] == [6, 5, 4, 3, 2, 1]
    assert store.events(limit=1, run_uuid=RUN_B, before_seq=page[0][0])[0].status == "RUNNING"


def test_prune_keeps_undelivered_events(store: Store, clock: FakeClock) -> None:
    store.track([TrackRequest(RUN_A)])
    observe(store, RUN_A, "QUEUED", T0, notifiers=())
    observe(store, RUN_A, "RUNNING", T0, notifiers=("ops",))
    clock.advance(10)
    assert store.prune_events(before=clock.now) == 1
    assert [e.status for e in store.events()] == ["RUNNING"]


# --- outbox --------------------------------------------------------------------------------


def test_outbox_lifecycle(store: Store, clock: FakeClock) -> None:
    store.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    e1 = observe(store, RUN_A, "RUNNING", T0, notifiers=("ops", "chat"))
    clock.advance(1)
    e2 = observe(store, RUN_B, "RUNNING", T0, notifiers=("ops",))
    assert e1 is not None
    assert e2 is not None
    now = clock.advance(1)
    assert store.outbox_stats(now=now) == (3, 2.0)

    due = store.pending_deliveries(limit=10)
    assert [(d.event.id, d.notifier) for d in due] == [
        (e1.id, "ops"),
        (e1.id, "chat"),
        (e2.id, "ops"),
    ]
    assert [d.id for d in due] == sorted(d.id for d in due)
    assert due[0].created_at == T0
    assert due[0].attempts == 0
    assert due[0].next_attempt_at == T0
    assert store.pending_deliveries("chat", limit=1)[0].id == due[1].id
    assert len(store.pending_deliveries(limit=2)) == 2

    # Retry: no longer due, still pending and first in per-notifier order.
    store.mark_retry(due[0].id, attempts=1, next_attempt_at=now + timedelta(seconds=5), error="503")
    pending_ops = store.pending_deliveries("ops", limit=10)
    assert [d.id for d in pending_ops] == [due[0].id, due[2].id]
    assert (pending_ops[0].attempts, pending_ops[0].last_error) == (1, "503")
    assert pending_ops[0].next_attempt_at == now + timedelta(seconds=5)

    store.mark_delivered(due[2].id)
    store.mark_delivered(due[2].id)  # twice is harmless
    store.mark_dead(due[1].id, error="400 Bad Request " + "x" * 5000)
    store.mark_retry(due[1].id, attempts=9, next_attempt_at=now, error="too late")  # no-op
    dead = store.dead_letters()
    assert [d.id for d in dead] == [due[1].id]
    assert dead[0].last_error is not None
    assert dead[0].last_error.startswith("400 Bad Request")
    assert len(dead[0].last_error) == 2000
    assert store.outbox_stats(now=now) == (1, 2.0)

    store.mark_delivered(due[0].id)
    assert store.outbox_stats(now=now) == (0, 0.0)
    assert store.pending_deliveries() == []
    assert len(store.events()) == 2  # delivery does not touch the history
    # Settled rows stay as the record of what became of each delivery.
    history = store.run_history(RUN_A)
    assert history is not None
    assert [(d.notifier, d.state, d.attempts) for d in history[0].deliveries] == [
        ("ops", "delivered", 1),
        ("chat", "dead", 0),
    ]
    other = store.run_history(RUN_B)
    assert other is not None
    assert [(d.notifier, d.state) for d in other[0].deliveries] == [("ops", "delivered")]


def test_dead_letter_removed_notifiers(store: Store) -> None:
    store.track([TrackRequest(RUN_A)])
    observe(store, RUN_A, "RUNNING", T0, notifiers=("ops", "old", "older"))
    ids = {d.notifier: d.id for d in store.pending_deliveries()}
    dropped = store.dead_letter_removed_notifiers(known_notifiers={"ops"})
    assert dropped == sorted([ids["old"], ids["older"]])
    assert [d.notifier for d in store.pending_deliveries()] == ["ops"]
    dead = {d.notifier: d.last_error for d in store.dead_letters()}
    assert dead == {
        "old": "notifier 'old' is no longer configured",
        "older": "notifier 'older' is no longer configured",
    }
    assert store.dead_letter_removed_notifiers(known_notifiers={"ops"}) == []


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
