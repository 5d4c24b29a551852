"""The outbox keeps its record: delivered and silenced rows, the history of a run, dead letters
and their redelivery, and the migration that rebuilt the outbox of existing state files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FAKE_START, FakeClock

from watcher.events import Event, RunState
from watcher.store import Store, TrackRequest
from watcher.store.history import Redelivery, redelivery_ids
from watcher.store.schema import APPLICATION_ID, MIGRATIONS
from watcher.transitions import detect

T0 = FAKE_START
RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
OTHER = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
TERMINAL = frozenset({"SUCCESS", "FAILED"})


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db", clock=clock) as opened:
        yield opened


def record(
    store: Store, clock: FakeClock, run: str, prev: str | None, status: str, *notifiers: str
) -> Event:
    at = clock.now
    before = RunState(run, "prj", prev, at) if prev else None
    event = detect(before, RunState(run, "prj", status, at), terminal=TERMINAL)
    assert event is not None
    assert store.record_observation(RunState(run, "prj", status, at), event, notifiers=notifiers)
    return event


def test_history_shows_every_state_and_dead_letters_go_back_with_their_event(
    store: Store, clock: FakeClock
) -> None:
    store.track([TrackRequest(RUN, "prj"), TrackRequest(OTHER, "prj")])
    first = record(store, clock, RUN, None, "RUNNING", "hook", "chat", "mail")
    second = record(store, clock, RUN, "RUNNING", "FAILED", "hook")
    other = record(store, clock, OTHER, None, "RUNNING", "hook")
    rows = {(d.event.id, d.notifier): d for d in store.pending_deliveries(limit=10)}
    store.mark_delivered(rows[first.id, "hook"].id)
    store.mark_silenced(rows[first.id, "chat"].id, "silenced by 3 (night rerun)")
    store.mark_retry(rows[first.id, "mail"].id, attempts=4, next_attempt_at=clock.now, error="503")
    store.mark_dead(rows[first.id, "mail"].id, error="gave up: 503", attempts=5)
    store.mark_dead(rows[other.id, "hook"].id, error="HTTP 410", attempts=1)
    store.mark_silenced(rows[first.id, "hook"].id, "too late")  # settled rows do not change
    assert store.outbox_stats(now=clock.now) == (1, 0.0)  # only the pending one counts

    history = store.run_history(RUN)
    assert history is not None
    assert [entry.event for entry in history] == [first, second]  # oldest first
    assert [(d.notifier, d.state, d.attempts, d.last_error) for d in history[0].deliveries] == [
        ("hook", "delivered", 0, None),
        ("chat", "silenced", 0, "silenced by 3 (night rerun)"),
        ("mail", "dead", 5, "gave up: 503"),
    ]
    assert [(d.notifier, d.state) for d in history[1].deliveries] == [("hook", "pending")]
    assert store.run_history("never-tracked") is None

    dead = store.list_dead_letters()
    assert [(d.notifier, d.event_id, d.run_uuid, d.type) for d in dead] == [
        ("hook", other.id, OTHER, "run.status_changed"),
        ("mail", first.id, RUN, "run.status_changed"),
    ]
    assert dead[1].dead_at == clock.now
    assert [d.notifier for d in store.list_dead_letters(notifier="mail")] == ["mail"]

    later = clock.advance(3600)
    mail_row = rows[first.id, "mail"].id
    # A delivered row, an unknown id and a pending row are left alone.
    assert store.redeliver(Redelivery(ids=(rows[first.id, "hook"].id, 999, mail_row))) == [mail_row]
    assert store.redeliver(Redelivery(ids=(mail_row,))) == []  # no longer dead
    again = {d.id: d for d in store.pending_deliveries(limit=10)}[mail_row]
    assert (again.event, again.notifier, again.attempts, again.last_error) == (
        first,
        "mail",
        0,
        None,
    )
    assert again.created_at == later  # the max_age clock starts again
    assert store.redeliver(Redelivery(notifier="nobody")) == []
    assert store.redeliver(Redelivery(all=True)) == [rows[other.id, "hook"].id]
    assert store.list_dead_letters() == []
    assert store.redelivery_counts() == {"hook": 1, "mail": 1}
    store.mark_dead(mail_row, error="down again")
    assert store.redeliver(Redelivery(notifier="mail")) == [mail_row]
    assert store.redelivery_counts() == {"hook": 1, "mail": 2}


def test_a_redelivery_names_exactly_one_choice() -> None:
    for bad in ({}, {"all": True, "notifier": "x"}, {"ids": (1,), "all": True}):
        with pytest.raises(ValueError, match="exactly one"):
            Redelivery(**bad)  # type: ignore[arg-type]
    assert redelivery_ids(["3", 4]) == (3, 4)
    for value in ("x", 0, -1, True, 1.5, None):
        with pytest.raises(ValueError, match="not a delivery id"):
            redelivery_ids([value])


def test_prune_events_keeps_owed_and_dead_deliveries(store: Store, clock: FakeClock) -> None:
    store.track([TrackRequest(RUN)])
    record(store, clock, RUN, None, "QUEUED", "hook")
    record(store, clock, RUN, "QUEUED", "RUNNING", "hook")
    record(store, clock, RUN, "RUNNING", "SUCCESS", "hook")
    first, second, _third = store.pending_deliveries(limit=10)
    store.mark_delivered(first.id)
    store.mark_dead(second.id, error="HTTP 500")
    clock.advance(10)
    assert store.prune_events(before=clock.now) == 1  # only the delivered one
    history = store.run_history(RUN)
    assert history is not None
    assert [[d.state for d in entry.deliveries] for entry in history] == [["dead"], ["pending"]]


def _file_before_the_history(path: Path) -> dict[str, int]:
    """A state file as the release before the outbox kept its record: a pending row, a dead
    row, and a delivered row already deleted (its id used, above every remaining id)."""
    upto = next(i for i, step in enumerate(MIGRATIONS) if "outbox_new" in " ".join(step))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    for step in MIGRATIONS[:upto]:
        for statement in step:
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {upto}")
    ts = T0.timestamp()
    conn.execute("INSERT INTO runs (run_uuid, tracked_at) VALUES (?, ?)", (RUN, ts))
    ids: dict[str, int] = {}
    for name in ("pending", "dead", "gone"):
        event = Event("run.status_changed", f"evt_{name}", T0, {"run_uuid": RUN})
        seq = conn.execute(
            "INSERT INTO events (id, type, run_uuid, recorded_at, body) VALUES (?, ?, ?, ?, ?)",
            (event.id, event.type, RUN, ts, event.to_json()),
        ).lastrowid
        row = conn.execute(
            "INSERT INTO outbox (event_seq, notifier, created_at, next_attempt_at) "
            "VALUES (?, 'hook', ?, ?)",
            (seq, ts, ts),
        ).lastrowid
        assert row is not None
        ids[name] = row
    conn.execute(
        "UPDATE outbox SET state = 'dead', dead_at = ?, attempts = 3, last_error = 'HTTP 500' "
        "WHERE id = ?",
        (ts, ids["dead"]),
    )
    conn.execute("DELETE FROM outbox WHERE id = ?", (ids["gone"],))  # delivered, the old way
    conn.close()
    return ids


def test_an_existing_file_migrates_keeping_ids_sequence_indexes_and_cascade(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "old.db"
    ids = _file_before_the_history(path)
    with Store.open(path, clock=clock) as store:
        (pending,) = store.pending_deliveries()
        assert (pending.id, pending.event.id) == (ids["pending"], "evt_pending")
        (dead,) = store.list_dead_letters()
        assert (dead.id, dead.attempts, dead.last_error) == (ids["dead"], 3, "HTTP 500")
        store.mark_delivered(pending.id)
        event = Event("run.custom", "evt_new", clock.now, {"run_uuid": RUN})
        assert store.record_event(event, notifiers=["hook"])
        (new,) = store.pending_deliveries()
        assert new.id > ids["gone"]  # a deleted row's id is never handed out again
        history = store.run_history(RUN)
        assert history is not None
        assert [d.state for entry in history for d in entry.deliveries] == [
            "delivered",
            "dead",
            "pending",
        ]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"outbox_due", "outbox_pending_by_notifier", "outbox_dead"} <= names
        assert "outbox_new" not in names
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE outbox SET state = 'lost' WHERE id = ?", (ids["dead"],))
        plan = " ".join(
            str(row)
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE state = 'pending' "
                "AND notifier = 'hook' ORDER BY id"
            )
        )
        assert "outbox_pending_by_notifier" in plan
        conn.execute("DELETE FROM events WHERE run_uuid = ?", (RUN,))
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0  # cascade
    finally:
        conn.close()
