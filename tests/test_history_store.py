"""The outbox keeps its record: what stays here is SQLite-only (the migration that rebuilt the
outbox of existing state files) and the redelivery choice itself; the history, dead letters
and redelivery through the store run on both backends in ``test_store_contract_more.py``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support import FAKE_START, FakeClock, state_file_before

from watcher.events import Event
from watcher.store import Store
from watcher.store.history import Redelivery, redelivery_ids
from watcher.store.schema import MIGRATIONS

T0 = FAKE_START
RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
OTHER = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
TERMINAL = frozenset({"SUCCESS", "FAILED"})


def test_a_redelivery_names_exactly_one_choice() -> None:
    for bad in ({}, {"all": True, "notifier": "x"}, {"ids": (1,), "all": True}):
        with pytest.raises(ValueError, match="exactly one"):
            Redelivery(**bad)  # type: ignore[arg-type]
    assert redelivery_ids(["3", 4]) == (3, 4)
    for value in ("x", 0, -1, True, 1.5, None):
        with pytest.raises(ValueError, match="not a delivery id"):
            redelivery_ids([value])


def _file_before_the_history(path: Path) -> dict[str, int]:
    """A state file as the release before the outbox kept its record: a pending row, a dead
    row, and a delivered row already deleted (its id used, above every remaining id)."""
    upto = next(i for i, step in enumerate(MIGRATIONS) if "outbox_new" in " ".join(step))
    conn = state_file_before(path, upto)
    conn.execute("PRAGMA foreign_keys = ON")
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
