"""Has the outbox changed? A cheap answer, so an idle dispatcher need not re-read it.

Why: every notifier's worker re-read its pending rows every second, to see rows written by
other processes (a CLI ``redeliver``) and by parts of this one that do not announce their
writes (the admin API's and the page's redeliver). Nearly always nothing had changed: issue
12 item 5 counts the daemon's CPU per poll, and that read is paid whether or not anything
happened. Two signals answer the question without reading the outbox:

* ``PRAGMA data_version`` on the daemon's connection changes when *another* connection
  committed (a CLI command, the pruner's own connection, another process): the outbox may
  have changed;
* a TEMP trigger on this connection counts every row written to ``outbox`` through it (the
  sink's inserts, the redeliver of the admin API and the page, the dispatcher's own marks).
  TEMP triggers live in this connection only: nothing is stored, other processes never see it.

:meth:`OutboxChanges.version` is the pair: when it is the same as at a worker's last read,
that read is still what the outbox holds for it (rows due later are in it with their times).
A rolled-back write still counts: one re-read too many, never one too few.
"""

from __future__ import annotations

import sqlite3

_FUNCTION = "omics_watcher_outbox_written"


class OutboxChanges:
    """The outbox's change signal on one SQLite connection (the daemon's loop connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._written = 0
        conn.create_function(_FUNCTION, 0, self._count)
        for op in ("INSERT", "UPDATE", "DELETE"):
            conn.execute(
                f"CREATE TEMP TRIGGER IF NOT EXISTS omics_watcher_outbox_{op.lower()} "
                f"AFTER {op} ON main.outbox BEGIN SELECT {_FUNCTION}(); END"
            )

    def _count(self) -> None:
        self._written += 1

    def version(self) -> tuple[int, int]:
        """Changes when another connection committed or this one wrote an outbox row."""
        (data_version,) = self._conn.execute("PRAGMA data_version").fetchone()
        return int(data_version), self._written
