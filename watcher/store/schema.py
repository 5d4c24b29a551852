"""The state file's schema: an ordered list of migrations keyed by ``PRAGMA user_version``.

Invariants:
- ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``. Shipped migrations are
  never edited; a change is a new entry at the end.
- Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the
  ``user_version`` bump, so a crash leaves the file at a whole version, and two processes
  opening a new file at once migrate it exactly once (the version is re-read under the lock).
- A file with a newer version than we know, or one that is some other application's SQLite
  database, is refused with :class:`StateError` and left untouched.

Tables (times are unix seconds, REAL):
- ``counters``: named integers; ``change_seq`` is bumped by every registry change another
  process must see (track, re-track, untrack).
- ``runs``: one row per run ever tracked; ``tracked = 0`` after untrack (the row stays so a
  re-track keeps the last status and history). ``change_seq`` is the counter value of the
  run's last registry change (indexed) for :meth:`Store.changes_since`. ``stuck_status`` is
  the status a ``run.stuck`` event was already recorded for.
- ``events``: the append-only event log; ``seq`` orders it, ``id`` is the event's stable id,
  ``body`` is the event's JSON exactly as notifiers receive it.
- ``outbox``: one row per (event, notifier): still to deliver (``pending``), given up
  (``dead``), sent (``delivered``) or withheld by a silence (``silenced``); settled rows stay
  as the run's delivery history until retention removes the run. ``settled_at``: when the row
  left ``pending``. AUTOINCREMENT keeps ids unique forever.
- ``events.held_until`` (held deliveries): set while the event waits for its failure
  details; its outbox rows are never due meanwhile (see :mod:`watcher.store.holds`).
- ``discovery`` (version 2): one row per ``[[watch]]`` entry (``watch_key`` names its
  project and filters) whose first discovery pass completed, so a restart does not treat
  the project's existing runs as news again. Rows of ``runs`` are deleted only by retention:
  discovery tracks only runs without a row, which is what keeps untracked runs untracked,
  and skips runs finished longer ago than the retention (see :mod:`watcher.polling.discovery`).
- ``run_counts`` (bounded reads): tracked runs per last seen status (``''``: not polled
  yet), kept by triggers on ``runs`` so every writer (daemon, CLI, pruning) updates it in its
  own transaction. Partial indexes ``runs_active`` and ``runs_tracked_by_status`` serve the
  active-run snapshot and the filtered pages of the registry.
- Retention: finished runs (``terminal`` since ``status_since``, or ``stopped`` since
  ``stopped_at``) older than ``[state] retention_days`` and owing no delivery (no
  ``pending`` row) are deleted with their events, and the events' settled outbox rows by
  cascade (see :mod:`watcher.retention`, :data:`watcher.store.journal.OWES_NOTHING`). Event
  bodies written since are compressed BLOBs (:mod:`watcher.store.codec`); older TEXT bodies
  stay readable as they are. ``runs.metadata`` is dropped when a run becomes terminal (its
  events carry it).
"""

from __future__ import annotations

import sqlite3

from watcher.store.db import StateError

APPLICATION_ID = 0x4F4D5743  # "OMWC": marks the file as ours for `file(1)` and for open()

_V1 = (
    """
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    "INSERT INTO counters (name, value) VALUES ('change_seq', 0)",
    """
    CREATE TABLE runs (
        run_uuid           TEXT PRIMARY KEY,
        project_id         TEXT NOT NULL DEFAULT '',
        labels             TEXT NOT NULL DEFAULT '{}',
        tracked            INTEGER NOT NULL DEFAULT 1 CHECK (tracked IN (0, 1)),
        tracked_at         REAL NOT NULL,
        status             TEXT,
        terminal           INTEGER NOT NULL DEFAULT 0 CHECK (terminal IN (0, 1)),
        metadata           TEXT,
        status_since       REAL,
        last_polled_at     REAL,
        stopped            INTEGER NOT NULL DEFAULT 0 CHECK (stopped IN (0, 1)),
        consecutive_errors INTEGER NOT NULL DEFAULT 0,
        next_poll_after    REAL,
        stuck_status       TEXT,
        change_seq         INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX runs_by_change_seq ON runs (change_seq)",
    """
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        type        TEXT NOT NULL,
        run_uuid    TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        body        TEXT NOT NULL
    )
    """,
    "CREATE INDEX events_by_run ON events (run_uuid, seq)",
    """
    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq       INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
        notifier        TEXT NOT NULL CHECK (notifier <> ''),
        state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        created_at      REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT,
        dead_at         REAL,
        UNIQUE (event_seq, notifier)
    )
    """,
    # Partial indexes: the queries spell `state = 'pending'` literally so SQLite can use them.
    "CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending'",
    "CREATE INDEX outbox_pending_by_notifier ON outbox (notifier, id) WHERE state = 'pending'",
    "CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead'",
)

_V2 = (
    """
    CREATE TABLE discovery (
        watch_key     TEXT PRIMARY KEY,
        first_pass_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
)

# Bounded reads (issue 13): runs per status kept by triggers in every writer's transaction, so
# /metrics reads a handful of rows, never the whole registry; partial indexes so the active
# runs (startup, stuck checks) and the pages of `list` / `GET /v1/runs` by status are read
# without scanning the history. The counts are filled once from the existing rows here.
_RUN_COUNTS = (
    """
    CREATE TABLE run_counts (
        status TEXT PRIMARY KEY,
        runs   INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    INSERT INTO run_counts (status, runs)
    SELECT coalesce(status, ''), count(*) FROM runs WHERE tracked = 1 GROUP BY 1
    """,
    """
    CREATE TRIGGER runs_count_insert AFTER INSERT ON runs WHEN NEW.tracked = 1 BEGIN
        INSERT INTO run_counts (status, runs) VALUES (coalesce(NEW.status, ''), 1)
            ON CONFLICT (status) DO UPDATE SET runs = runs + 1;
    END
    """,
    """
    CREATE TRIGGER runs_count_delete AFTER DELETE ON runs WHEN OLD.tracked = 1 BEGIN
        UPDATE run_counts SET runs = runs - 1 WHERE status = coalesce(OLD.status, '');
    END
    """,
    """
    CREATE TRIGGER runs_count_update AFTER UPDATE OF status, tracked ON runs
    WHEN OLD.tracked IS NOT NEW.tracked OR OLD.status IS NOT NEW.status BEGIN
        UPDATE run_counts SET runs = runs - OLD.tracked WHERE status = coalesce(OLD.status, '');
        INSERT INTO run_counts (status, runs) VALUES (coalesce(NEW.status, ''), NEW.tracked)
            ON CONFLICT (status) DO UPDATE SET runs = runs + NEW.tracked;
    END
    """,
    "CREATE INDEX runs_active ON runs (stopped) WHERE tracked = 1 AND terminal = 0 AND stopped = 0",
    "CREATE INDEX runs_tracked_by_status ON runs (status) WHERE tracked = 1",
    # A group's members (digests, roll-ups) without a registry scan; the expression must stay
    # the one watcher.store.groups spells for its queries to use it.
    "CREATE INDEX runs_by_group ON runs (json_extract(labels, '$.\"run_group\"')) "
    "WHERE tracked = 1",
)

# Retention (issue 13): finished runs are deleted with their history once they have been
# finished for `[state] retention_days`. A run is finished when terminal (since `status_since`)
# or stopped as not found (since the new `stopped_at`, filled here from the run's last event).
# Partial indexes find the oldest finished runs without reading the active or recent ones.
_RETENTION = (
    "ALTER TABLE runs ADD COLUMN stopped_at REAL",
    """
    UPDATE runs SET stopped_at = coalesce(
        (SELECT max(e.recorded_at) FROM events e WHERE e.run_uuid = runs.run_uuid),
        last_polled_at, tracked_at)
    WHERE stopped = 1
    """,
    "CREATE INDEX runs_finished ON runs (status_since) WHERE terminal = 1",
    "CREATE INDEX runs_stopped ON runs (stopped_at) WHERE stopped = 1 AND terminal = 0",
)

# Held deliveries (issue 12): a failure's status change is recorded at once and its event
# marked held (``held_until``) until its enrichment stores the details (or gives up); no
# dispatcher sends an outbox row of a held event (see watcher.store.holds).
_HELD = (
    "ALTER TABLE events ADD COLUMN held_until REAL",
    "CREATE INDEX events_held ON events (held_until) WHERE held_until IS NOT NULL",
)

# Delivery history (issue 14): an outbox row keeps its record once settled: ``delivered``
# (sent) and ``silenced`` (a silence matched; never sent) join ``pending`` and ``dead``, with
# ``settled_at`` stamped when a row leaves ``pending``. A CHECK constraint cannot be altered
# in SQLite, so the table is rebuilt: same ids, the AUTOINCREMENT sequence carried over (ids
# of rows deleted before stay unused), the cascade from events and the pending/dead indexes.
_OUTBOX_HISTORY = (
    """
    CREATE TABLE outbox_new (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq       INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
        notifier        TEXT NOT NULL CHECK (notifier <> ''),
        state           TEXT NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'dead', 'delivered', 'silenced')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        created_at      REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT,
        dead_at         REAL,
        settled_at      REAL,
        UNIQUE (event_seq, notifier)
    )
    """,
    """
    INSERT INTO outbox_new (id, event_seq, notifier, state, attempts, created_at,
                            next_attempt_at, last_error, dead_at, settled_at)
    SELECT id, event_seq, notifier, state, attempts, created_at, next_attempt_at, last_error,
           dead_at, dead_at FROM outbox ORDER BY id
    """,
    "DELETE FROM sqlite_sequence WHERE name = 'outbox_new'",
    """
    INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', max(
        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
        coalesce((SELECT max(id) FROM outbox_new), 0))
    """,
    "DROP TABLE outbox",
    "ALTER TABLE outbox_new RENAME TO outbox",
    "CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending'",
    "CREATE INDEX outbox_pending_by_notifier ON outbox (notifier, id) WHERE state = 'pending'",
    "CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead'",
)

# Silences (issue 14): deliveries to withhold while a silence matches their event (see
# watcher.store.silences); ``silence_seq`` is bumped by every silence written, so a daemon
# notices a change another process made by reading one row.
_SILENCES = (
    """
    CREATE TABLE silences (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        matchers   TEXT NOT NULL,
        notifiers  TEXT NOT NULL DEFAULT '[]',
        starts_at  REAL NOT NULL,
        ends_at    REAL NOT NULL,
        comment    TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX silences_by_end ON silences (ends_at)",
    "INSERT INTO counters (name, value) VALUES ('silence_seq', 0)",
)

# Status page (issue 16): its reads stay bounded at 300,000 runs. The latest failures are
# read newest first from an index on (status, status_since) instead of sorting every run of
# each failing status; the run groups in progress are read in name order from an index of the
# active runs' group (the expression spelled as in runs_by_group and watcher.store.overview).
_UI_READS = (
    "CREATE INDEX runs_tracked_by_status_since ON runs (status, status_since) WHERE tracked = 1",
    "CREATE INDEX runs_active_by_group ON runs (json_extract(labels, '$.\"run_group\"')) "
    "WHERE tracked = 1 AND terminal = 0 AND stopped = 0",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1,
    _V2,
    _RUN_COUNTS,
    _RETENTION,
    _HELD,
    _OUTBOX_HISTORY,
    _SILENCES,
    _UI_READS,
)


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the schema to the newest version; returns it. Raises :class:`StateError`."""
    known = len(MIGRATIONS)
    current = _user_version(conn)
    if current > known:
        raise StateError(
            f"state file {path} has schema version {current}, newer than this omics-watcher "
            f"knows ({known}); upgrade omics-watcher or point state.path at another file"
        )
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    tables = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
    foreign = app_id not in (0, APPLICATION_ID) or (current == 0 and tables > 0)
    if foreign or (current > 0 and app_id != APPLICATION_ID):
        raise StateError(f"state file {path} is an SQLite database of another application")
    for version in range(current + 1, known + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            if _user_version(conn) < version:
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return known
