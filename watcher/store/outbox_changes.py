"""Has the outbox changed? A cheap answer, so an idle dispatcher need not re-read it.

Why: every notifier's worker re-read its pending rows every second, to see rows written by
other processes (a CLI ``redeliver``, another replica's admin API) and by parts of this one
that do not announce their writes (the admin API's and the page's redeliver). Nearly always
nothing had changed: the read is paid in every idle second (issue 12 item 5), and on
PostgreSQL it is a query joining the outbox and the events per notifier per second, whose
rows are decoded every time (a muted notifier's backlog, or rows waiting for a retry, are
read and decoded again each second).

The contract (``AsyncStore.outbox_version``, the same for both backends): a value that
changes whenever a row may have become due to send other than through the dispatcher's own
marks, i.e. a row inserted (by any process), put back by ``redeliver`` or released from
hold. The dispatcher (:meth:`~watcher.delivery.dispatcher.Dispatcher._look`) reads it
before each outbox read and skips the timed re-read while it is unchanged: rows due later
(retries, digest and mute windows) are in the last read with their times. It may change
more often than needed (one re-read too many), never less.

SQLite (:class:`OutboxChanges`, on the daemon's loop connection):

* ``PRAGMA data_version`` changes when *another* connection committed (a CLI command, the
  pruner's own connection, another process);
* TEMP triggers on this connection count every row written to ``outbox`` through it (the
  sink's inserts, the redeliver of the admin API and the page, the dispatcher's own marks)
  and every held event released through it. TEMP triggers live in this connection only:
  nothing is stored, other processes never see them. A rolled-back write still counts.

PostgreSQL has no ``data_version``: another connection's commit is not visible to a session
without reading something. There the signal is a counter row, ``counters.outbox_seq``,
bumped by triggers in the writer's own transaction (a migration in
:mod:`watcher.store.pg.schema`), and read by
:meth:`~watcher.store.pg.outbox.OutboxMixin.outbox_version` in one primary-key lookup.
"""

from __future__ import annotations

import sqlite3

_FUNCTION = "omics_watcher_outbox_written"

# Written through this connection: any outbox row, and a held event's release (its rows,
# listed as never due while held, become due without an outbox write).
_TRIGGERS = (
    *(
        f"CREATE TEMP TRIGGER IF NOT EXISTS omics_watcher_outbox_{op.lower()} "
        f"AFTER {op} ON main.outbox BEGIN SELECT {_FUNCTION}(); END"
        for op in ("INSERT", "UPDATE", "DELETE")
    ),
    "CREATE TEMP TRIGGER IF NOT EXISTS omics_watcher_events_released "
    "AFTER UPDATE OF held_until ON main.events "
    f"WHEN OLD.held_until IS NOT NULL AND NEW.held_until IS NULL BEGIN SELECT {_FUNCTION}(); END",
)


class OutboxChanges:
    """The outbox's change signal on one SQLite connection (the daemon's loop connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._written = 0
        conn.create_function(_FUNCTION, 0, self._count)
        for trigger in _TRIGGERS:
            conn.execute(trigger)

    def _count(self) -> None:
        self._written += 1

    def version(self) -> tuple[int, int]:
        """Changes when another connection committed or this one wrote an outbox row (or
        released a held event)."""
        (data_version,) = self._conn.execute("PRAGMA data_version").fetchone()
        return int(data_version), self._written
