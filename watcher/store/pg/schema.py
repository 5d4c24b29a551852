"""The PostgreSQL state's schema: an ordered list of migrations, numbered in ``schema_version``.

The same data as the SQLite state (:mod:`watcher.store.schema`), in PostgreSQL's own types;
its version numbers are this backend's own (PostgreSQL's version 1 is SQLite's versions 1 to
5 at once), since no database is ever converted from one backend to the other in place.

Invariants:
- ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``. Shipped migrations are
  never edited; a change is a new entry at the end (the SQLite one usually gets its twin).
- Each migration runs in its own transaction that first takes a transaction-level advisory
  lock (:data:`MIGRATION_LOCK`) and then re-reads the version: DDL is transactional in
  PostgreSQL, so two daemons starting together migrate exactly once and a crash leaves the
  database at a whole version; the lock ends with the transaction, so a dead migrator never
  blocks the next start.
- A database with a newer version than we know, with another application's row in
  ``schema_version``, or with our tables but no version (someone else's ``runs``), is refused
  with :class:`~watcher.store.db.StateError` and left untouched. Errors name the database by
  its name only: a URL may carry a password.

Choices (and why they differ from SQLite):
- Times are ``double precision`` unix seconds, as SQLite's REAL: the code above the store
  (``ActiveRun`` floats, the outbox's ``HELD_NEXT_ATTEMPT``, retention cut-offs) stays one,
  comparisons and indexes are the same, and no session time zone can change a value. The
  lease alone is timed by the database's clock (``clock_timestamp()`` as unix seconds).
- Flags are ``boolean``; ``labels`` and ``metadata`` are ``json`` (not ``jsonb``): ``json``
  keeps the text exactly as written (compact, sorted keys, what the pages and ``list --json``
  print) while still allowing ``->>`` and the expression index on ``run_group``.
- ``runs.id`` (an identity column) plays SQLite's ``rowid``: the key of the registry's page
  cursors, never changed for a run. ``events.seq`` and ``outbox.id`` are identity columns
  (never reused, like AUTOINCREMENT). Identity values are handed out at insert and may commit
  out of order under concurrent writers; only the active daemon appends events, one
  transaction at a time, which keeps the log's order.
- ``events.body`` is ``bytea``: every body is written by :mod:`watcher.store.codec` (there are
  no old TEXT bodies to read here).
- ``run_counts`` is kept by PL/pgSQL triggers in every writer's transaction, like SQLite's.
  Inserts and deletes (tracking or pruning thousands of runs at once) use statement-level
  triggers over the transition table: one upsert per status, not one per run. Updates too
  (since version 4; version 1 had a row-level trigger whose thousands of versions of one
  count row made a large untrack quadratic): a statement-level trigger nets the moves per
  status over the transition tables (PostgreSQL allows none with a column list, so it fires
  on every update of ``runs`` and writes nothing when no status or tracking changed) and
  takes the count rows in a fixed order (by status), so two transactions moving runs in
  opposite directions cannot deadlock on them.
- ``lease`` holds the active daemon's lease and fencing epoch (see
  :mod:`watcher.store.pg.lease`).

Mirrored: SQLite's versions 1 to 5 as version 1 (registry, events, outbox, discovery, run
counts, retention, held deliveries), its versions 6 and 7 as version 2 (delivery history,
silences) and its version 8 as version 3 (the status page's indexes). A later SQLite
migration gets its twin appended here. Some are PostgreSQL's alone: the run counts by
statement, and the outbox's change signal (SQLite's lives in the connection, not the file).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from watcher.store.db import StateError

APPLICATION = "omics-watcher"
# Key of the advisory lock held while migrating ("OMWC", as SQLite's application_id).
MIGRATION_LOCK = 0x4F4D5743

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    application text PRIMARY KEY,
    version     integer NOT NULL CHECK (version >= 0)
)
"""

_RUNS = """
CREATE TABLE runs (
    id                 bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    run_uuid           text PRIMARY KEY,
    project_id         text NOT NULL DEFAULT '',
    labels             json NOT NULL DEFAULT '{}',
    tracked            boolean NOT NULL DEFAULT true,
    tracked_at         double precision NOT NULL,
    status             text,
    terminal           boolean NOT NULL DEFAULT false,
    metadata           json,
    status_since       double precision,
    last_polled_at     double precision,
    stopped            boolean NOT NULL DEFAULT false,
    stopped_at         double precision,
    consecutive_errors integer NOT NULL DEFAULT 0,
    next_poll_after    double precision,
    stuck_status       text,
    change_seq         bigint NOT NULL DEFAULT 0
)
"""

_EVENTS = """
CREATE TABLE events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    type        text NOT NULL,
    run_uuid    text NOT NULL,
    recorded_at double precision NOT NULL,
    body        bytea NOT NULL,
    held_until  double precision
)
"""

_OUTBOX = """
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq       bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    notifier        text NOT NULL CHECK (notifier <> ''),
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      double precision NOT NULL,
    next_attempt_at double precision NOT NULL,
    last_error      text,
    dead_at         double precision,
    UNIQUE (event_seq, notifier)
)
"""

# Counts per status (``''``: not polled yet) of tracked runs. Statement-level for inserts and
# deletes (one upsert per status whatever the number of rows), row-level for updates of
# status or tracking, taking the two count rows in status order (no deadlock between two
# opposite moves).
_COUNT_FUNCTIONS = (
    """
    CREATE FUNCTION run_counts_add(key text, delta bigint) RETURNS void
    LANGUAGE sql AS $$
        INSERT INTO run_counts (status, runs) VALUES (key, delta)
        ON CONFLICT (status) DO UPDATE SET runs = run_counts.runs + EXCLUDED.runs
    $$
    """,
    """
    CREATE FUNCTION runs_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO run_counts (status, runs)
        SELECT coalesce(status, ''), count(*) FROM new_rows WHERE tracked
        GROUP BY 1 ORDER BY 1
        ON CONFLICT (status) DO UPDATE SET runs = run_counts.runs + EXCLUDED.runs;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION runs_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO run_counts (status, runs)
        SELECT coalesce(status, ''), -count(*) FROM old_rows WHERE tracked
        GROUP BY 1 ORDER BY 1
        ON CONFLICT (status) DO UPDATE SET runs = run_counts.runs + EXCLUDED.runs;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION runs_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        old_key text := coalesce(OLD.status, '');
        new_key text := coalesce(NEW.status, '');
        old_delta bigint := CASE WHEN OLD.tracked THEN -1 ELSE 0 END;
        new_delta bigint := CASE WHEN NEW.tracked THEN 1 ELSE 0 END;
    BEGIN
        IF old_key = new_key THEN
            PERFORM run_counts_add(new_key, old_delta + new_delta);
        ELSIF old_key < new_key THEN
            PERFORM run_counts_add(old_key, old_delta);
            PERFORM run_counts_add(new_key, new_delta);
        ELSE
            PERFORM run_counts_add(new_key, new_delta);
            PERFORM run_counts_add(old_key, old_delta);
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER runs_count_insert AFTER INSERT ON runs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION runs_count_inserted()
    """,
    """
    CREATE TRIGGER runs_count_delete AFTER DELETE ON runs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION runs_count_deleted()
    """,
    """
    CREATE TRIGGER runs_count_update AFTER UPDATE OF status, tracked ON runs FOR EACH ROW
    WHEN (OLD.tracked IS DISTINCT FROM NEW.tracked OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION runs_count_updated()
    """,
)

_V1: tuple[str, ...] = (
    """
    CREATE TABLE counters (
        name  text PRIMARY KEY,
        value bigint NOT NULL
    )
    """,
    "INSERT INTO counters (name, value) VALUES ('change_seq', 0)",
    _RUNS,
    "CREATE INDEX runs_by_change_seq ON runs (change_seq)",
    "CREATE INDEX runs_active ON runs (stopped) WHERE tracked AND NOT terminal AND NOT stopped",
    "CREATE INDEX runs_tracked_by_status ON runs (status, id) WHERE tracked",
    "CREATE INDEX runs_by_group ON runs ((labels ->> 'run_group')) WHERE tracked",
    "CREATE INDEX runs_finished ON runs (status_since) WHERE terminal",
    "CREATE INDEX runs_stopped ON runs (stopped_at) WHERE stopped AND NOT terminal",
    _EVENTS,
    "CREATE INDEX events_by_run ON events (run_uuid, seq)",
    "CREATE INDEX events_held ON events (held_until) WHERE held_until IS NOT NULL",
    _OUTBOX,
    "CREATE INDEX outbox_event ON outbox (event_seq)",
    "CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending'",
    "CREATE INDEX outbox_pending_by_notifier ON outbox (notifier, id) WHERE state = 'pending'",
    "CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead'",
    """
    CREATE TABLE discovery (
        watch_key     text PRIMARY KEY,
        first_pass_at double precision NOT NULL
    )
    """,
    """
    CREATE TABLE run_counts (
        status text PRIMARY KEY,
        runs   bigint NOT NULL
    )
    """,
    *_COUNT_FUNCTIONS,
    """
    CREATE TABLE lease (
        name       text PRIMARY KEY,
        holder     text,
        epoch      bigint NOT NULL DEFAULT 0,
        expires_at double precision NOT NULL DEFAULT 0
    )
    """,
)

# Delivery history and silences (issue 14; SQLite's versions 6 and 7): settled outbox rows
# stay (``delivered``, ``silenced``, with ``settled_at``); silences, whose every write bumps
# ``silence_seq``. No table rebuild here: PostgreSQL alters a CHECK constraint in place.
_HISTORY_AND_SILENCES: tuple[str, ...] = (
    "ALTER TABLE outbox DROP CONSTRAINT outbox_state_check",
    "ALTER TABLE outbox ADD CONSTRAINT outbox_state_check "
    "CHECK (state IN ('pending', 'dead', 'delivered', 'silenced'))",
    "ALTER TABLE outbox ADD COLUMN settled_at double precision",
    "UPDATE outbox SET settled_at = dead_at WHERE dead_at IS NOT NULL",
    """
    CREATE TABLE silences (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        matchers   text NOT NULL,
        notifiers  text NOT NULL DEFAULT '[]',
        starts_at  double precision NOT NULL,
        ends_at    double precision NOT NULL,
        comment    text NOT NULL DEFAULT '',
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL
    )
    """,
    "CREATE INDEX silences_by_end ON silences (ends_at)",
    "INSERT INTO counters (name, value) VALUES ('silence_seq', 0)",
)

# The status page's bounded reads (issue 16; SQLite's version 8): the latest failures newest
# first per status, the run groups in progress from the active runs only, and (PostgreSQL
# only) a pattern index so a long run UUID prefix is an index range whatever the collation.
_UI_READS: tuple[str, ...] = (
    "CREATE INDEX runs_tracked_by_status_since ON runs (status, status_since) WHERE tracked",
    "CREATE INDEX runs_active_by_group ON runs ((labels ->> 'run_group')) "
    "WHERE tracked AND NOT terminal AND NOT stopped",
    "CREATE INDEX runs_uuid_pattern ON runs (run_uuid text_pattern_ops) WHERE tracked",
)

# Run counts on updates, set-based: the row-level trigger updated the same few count rows
# once per run, and thousands of versions of one row in one transaction (untracking 50,000
# runs) made each next update slower (40 s for 50,000). One statement-level trigger over the
# transition tables nets the changes per status instead (linear; writes nothing when a
# statement changed no status or tracking, as a poll's), taking the count rows in status
# order like the others.
_COUNTS_BY_STATEMENT: tuple[str, ...] = (
    "DROP TRIGGER runs_count_update ON runs",
    """
    CREATE FUNCTION runs_count_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO run_counts (status, runs)
        SELECT key, sum(delta) FROM (
            SELECT coalesce(status, '') AS key, -count(*) AS delta FROM old_rows
            WHERE tracked GROUP BY 1
            UNION ALL
            SELECT coalesce(status, ''), count(*) FROM new_rows WHERE tracked GROUP BY 1
        ) AS moves GROUP BY key HAVING sum(delta) <> 0 ORDER BY key
        ON CONFLICT (status) DO UPDATE SET runs = run_counts.runs + EXCLUDED.runs;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER runs_count_update AFTER UPDATE ON runs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION runs_count_changed()
    """,
)

# The idle dispatcher's change signal (``PgStore.outbox_version``, no SQLite twin: SQLite's
# is connection-local, ``PRAGMA data_version`` and TEMP triggers, nothing stored): the
# ``outbox_seq`` counter row, bumped in the writer's own transaction whenever a row may have
# become due other than by the dispatcher's marks (an outbox insert, a row put back to
# pending by ``redeliver``, a held event released), so a reader sees the bump exactly when it
# can see the rows. Once per transaction (a transaction-local flag): a redeliver of 50,000
# rows bumps it once, not 50,000 versions of one row. The marks (delivered, retry, dead,
# silenced) never fire it: their WHEN is false or their SET leaves ``state`` alone, so the
# delivery path takes no lock on it and pays no function call. Deletes do not bump it: no
# delete makes a row due (retention deletes settled rows only), and a bump in the pruner's
# transaction, which takes ``run_counts`` rows after the outbox's, would order the two locks
# the other way round from a recording's (run counts, then the outbox): a deadlock.
_OUTBOX_CHANGES: tuple[str, ...] = (
    "INSERT INTO counters (name, value) VALUES ('outbox_seq', 0) ON CONFLICT (name) DO NOTHING",
    """
    CREATE FUNCTION outbox_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('omics_watcher.outbox_changed', true) IS DISTINCT FROM 'yes' THEN
            UPDATE counters SET value = value + 1 WHERE name = 'outbox_seq';
            PERFORM set_config('omics_watcher.outbox_changed', 'yes', true);
        END IF;
        RETURN NULL;
    END
    $$
    """,
    "CREATE TRIGGER outbox_changed_insert AFTER INSERT ON outbox "
    "FOR EACH STATEMENT EXECUTE FUNCTION outbox_changed()",
    "CREATE TRIGGER outbox_changed_pending AFTER UPDATE OF state ON outbox FOR EACH ROW "
    "WHEN (OLD.state <> 'pending' AND NEW.state = 'pending') EXECUTE FUNCTION outbox_changed()",
    "CREATE TRIGGER outbox_changed_released AFTER UPDATE OF held_until ON events FOR EACH ROW "
    "WHEN (OLD.held_until IS NOT NULL AND NEW.held_until IS NULL) "
    "EXECUTE FUNCTION outbox_changed()",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1,
    _HISTORY_AND_SILENCES,
    _UI_READS,
    _COUNTS_BY_STATEMENT,
    _OUTBOX_CHANGES,
)

# Tables that say a database without a version row is not empty (and so not ours to create).
_OURS = ("runs", "events", "outbox", "counters", "lease")


async def schema_version(conn: asyncpg.Connection) -> int:
    """The database's version of our schema (0: none yet)."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    found = await conn.fetchval(
        "SELECT version FROM schema_version WHERE application = $1", APPLICATION
    )
    return 0 if found is None else int(found)


async def _check(conn: asyncpg.Connection, name: str, known: int) -> int:
    """The version to migrate from; raises :class:`StateError` for a database not ours."""
    others = await conn.fetchval(
        "SELECT string_agg(application, ', ') FROM schema_version WHERE application <> $1",
        APPLICATION,
    )
    if others:
        raise StateError(f"database {name} belongs to another application ({others})")
    current = await schema_version(conn)
    if current > known:
        raise StateError(
            f"database {name} has schema version {current}, newer than this omics-watcher "
            f"knows ({known}); upgrade omics-watcher or point [state] url at another database"
        )
    if current == 0:
        taken = await conn.fetchval(
            "SELECT string_agg(relname, ', ') FROM pg_class "
            "WHERE relname = ANY($1::text[]) AND relnamespace = current_schema()::regnamespace",
            list(_OURS),
        )
        if taken:
            raise StateError(
                f"database {name} already has tables named {taken} without omics-watcher's "
                "schema version: it is another application's database"
            )
    return current


async def migrate(
    conn: asyncpg.Connection, migrations: Sequence[tuple[str, ...]] = MIGRATIONS
) -> int:
    """Bring the schema to the newest version; returns it. Raises :class:`StateError`.

    ``conn`` must not be in a transaction. Safe to call from several processes at once.
    """
    name = str(await conn.fetchval("SELECT current_database()"))
    known = len(migrations)
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(_VERSION_TABLE)
            version = await _check(conn, name, known)
            if version >= known:
                return version
            for statement in migrations[version]:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version (application, version) VALUES ($1, $2) "
                "ON CONFLICT (application) DO UPDATE SET version = EXCLUDED.version",
                APPLICATION,
                version + 1,
            )
