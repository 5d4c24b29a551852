"""The state's figures ``/metrics`` exports, read in one statement: tracked runs by status,
the outbox's pending rows and the age of the oldest, and redeliveries by notifier.

Why one statement: ``/metrics`` is scraped every few seconds by every Prometheus, on every
replica. Three separate reads cost three connection uses on SQLite (three hops to the
off-loop reader) and three round trips on PostgreSQL, and could each see a different moment.
One ``UNION ALL`` of the three small reads costs one, and is one snapshot on both backends.
Each part reads what the separate reads read: the trigger-kept ``run_counts`` table (a few
rows whatever the size of the registry), the ``pending`` partial index of the outbox, and the
``redelivered:`` range of ``counters``.

The statement is the backend's (:data:`SQLITE_FIGURES` here, its twin in
:mod:`watcher.store.pg.figures`); the rows it returns are decoded by :func:`state_figures`
for both, so the figures mean the same thing whichever backend holds the state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from watcher.store.db import StoreBase, to_ts
from watcher.store.history import REDELIVERED_PREFIX
from watcher.store.models import Row

# The tag in each row's first column: which of the three reads the row answers.
RUNS = "runs"
PENDING = "pending"
REDELIVERED = "redelivered"

# Rows of (tag, name, number, oldest): a status and its runs (``''``: not polled yet); one
# row of pending rows and their oldest ``created_at``; a notifier and its redeliveries.
SQLITE_FIGURES = (
    "SELECT 'runs', status, runs, NULL FROM run_counts WHERE runs > 0 "
    "UNION ALL "
    "SELECT 'pending', NULL, count(*), min(created_at) FROM outbox WHERE state = 'pending' "
    "UNION ALL "
    "SELECT 'redelivered', substr(name, ?1), value, NULL FROM counters "
    "WHERE name >= ?2 AND name < ?3"  # the prefix as a range of the primary key
)
SQLITE_FIGURES_ARGS = (
    len(REDELIVERED_PREFIX) + 1,
    REDELIVERED_PREFIX,
    REDELIVERED_PREFIX[:-1] + ";",  # ';' sorts right after ':'
)


@dataclass(frozen=True, slots=True)
class StateFigures:
    """What ``/metrics`` reports of the state.

    ``runs_by_status``: tracked runs per last seen status (``None``: not polled yet), as
    ``count_by_status``; ``outbox_pending`` and ``oldest_pending_seconds``: as
    ``outbox_stats`` (``0.0`` when nothing is pending); ``redeliveries``: redelivered rows so
    far by notifier (counted in the redelivery's transaction, so the CLI's count too).
    """

    runs_by_status: dict[str | None, int]
    outbox_pending: int
    oldest_pending_seconds: float
    redeliveries: dict[str, int]


def state_figures(rows: Iterable[Row], *, now: datetime) -> StateFigures:
    """The figures from the rows of either backend's statement; ``now`` dates the oldest."""
    runs: dict[str | None, int] = {}
    redeliveries: dict[str, int] = {}
    pending, oldest = 0, 0.0
    for row in rows:
        tag, name, number, first = row[0], row[1], row[2], row[3]
        if tag == RUNS:
            runs[name if name != "" else None] = int(number)
        elif tag == REDELIVERED:
            redeliveries[str(name)] = int(number)
        elif tag == PENDING and number and first is not None:
            pending, oldest = int(number), max(0.0, to_ts(now) - float(first))
    return StateFigures(runs, pending, oldest, redeliveries)


class FiguresMixin(StoreBase):
    def state_figures(self, *, now: datetime) -> StateFigures:
        """Runs by status, the outbox's pending rows and redeliveries, in one statement."""
        return state_figures(self._db.query(SQLITE_FIGURES, SQLITE_FIGURES_ARGS), now=now)
