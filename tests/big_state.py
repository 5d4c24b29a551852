"""A large state file, built fast with the store's own code, for the bounded-reads test and bench.

Why: issue 13 measured ``list``, ``/v1/runs`` and ``/metrics`` on a registry of 340,000 runs.
Growing one through the daemon takes hours; this writes the same rows in big transactions:
runs through :meth:`Store.track` (the registry's own insert, labels and all), events through
:func:`watcher.store.journal.append_event` (the very function the recorder's transaction
calls, so the body is stored however the store stores bodies) with the events ``detect``
makes, and each run's last status through the same ``runs`` columns the recorder writes (the
counting triggers fire as they do for the daemon). Events have no outbox rows: delivered, as
in a lab's long-lived file.

Runs are ``run-<n>``-shaped UUIDs; the last ``active`` of them stay ``RUNNING`` (polled),
the others end ``SUCCESS`` or, one in ten, ``FAILED``. Labels: ``team`` (``t0``..``t19``),
``run_group`` (50 runs each) and, for one run in 1,000, ``rare=yes``.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from watcher.events import RunState
from watcher.store import Store, TrackRequest
from watcher.store.db import Database, to_ts
from watcher.store.journal import append_event
from watcher.store.schema import migrate
from watcher.transitions import detect

# History ends 15 days before the file is built (run n starts 3n seconds after the first): a
# default 30-day retention keeps all of it for a while (the benchmark rebuilds older files).
HISTORY_DAYS = 25
STEPS = ("SUBMITTED", "QUEUED", "INITIALIZING", "RUNNING", "RUNNING_2", "FINISHING")
TERMINAL = frozenset({"SUCCESS", "FAILED"})
BATCH = 5_000  # runs per transaction


@dataclass(frozen=True, slots=True)
class BigState:
    path: Path
    runs: int
    events: int
    active: int

    def run_uuid(self, n: int) -> str:
        return run_uuid(n)


def run_uuid(n: int) -> str:
    return str(uuid.UUID(int=(0x5EED << 96) | n))


def labels_of(n: int) -> dict[str, str]:
    labels = {"team": f"t{n % 20}", "run_group": f"g{n // 50}"}
    if n % 1000 == 7:
        labels["rare"] = "yes"
    return labels


def final_status(n: int, runs: int, active: int) -> str:
    if n >= runs - active:
        return "RUNNING"
    return "FAILED" if n % 10 == 3 else "SUCCESS"


def _statuses(n: int, per_run: int, runs: int, active: int) -> list[str]:
    """``per_run`` statuses ending in the run's final status, each different from the last."""
    last = final_status(n, runs, active)
    steps = [s for s in STEPS if s != last][: max(0, per_run - 1)]
    while len(steps) < per_run - 1:  # more events than steps: flap between two
        steps.append(STEPS[len(steps) % 2])
    return [*steps, last]


def grow(path: Path, *, runs: int, events: int, active: int) -> BigState:
    """Create ``path`` with ``runs`` tracked runs and about ``events`` status-change events."""
    start = datetime.now(UTC) - timedelta(days=HISTORY_DAYS)
    with Store.open(path) as store:
        for first in range(0, runs, 50_000):
            store.track(
                TrackRequest(run_uuid(n), "prj-big", labels_of(n))
                for n in range(first, min(runs, first + 50_000))
            )
    db = Database.connect(path, busy_timeout=30, setup=migrate)
    written = 0
    try:
        for first in range(0, runs, BATCH):
            with db.write() as conn:
                updates: list[tuple[object, ...]] = []
                for n in range(first, min(runs, first + BATCH)):
                    per_run = events // runs + (1 if n < events % runs else 0)
                    statuses = _statuses(n, per_run, runs, active)
                    written += _record_run(conn, n, statuses, start, updates)
                conn.executemany(
                    "UPDATE runs SET status = ?, terminal = ?, status_since = ?, "
                    "last_polled_at = ? WHERE run_uuid = ?",
                    updates,
                )
    finally:
        db.close()
    return BigState(path, runs, written, active)


def _record_run(
    conn: sqlite3.Connection,
    n: int,
    statuses: list[str],
    start: datetime,
    updates: list[tuple[object, ...]],
) -> int:
    uid = run_uuid(n)
    prev: RunState | None = None
    at = start + timedelta(seconds=n * 3)
    for status in statuses:
        at += timedelta(minutes=7)
        cur = RunState(uid, "prj-big", status, at, labels_of(n), {"Status": status, "RunUuid": uid})
        event = detect(prev, cur, terminal=TERMINAL)
        assert event is not None
        append_event(conn, event, [], to_ts(at))
        prev = cur
    last = statuses[-1]
    updates.append((last, int(last in TERMINAL), to_ts(at), to_ts(at), uid))
    return len(statuses)
