"""The state's figures ``/metrics`` exports, in PostgreSQL: the statement of
:mod:`watcher.store.figures` in one round trip (its rows decoded by the same
:func:`~watcher.store.figures.state_figures`)."""

from __future__ import annotations

from datetime import datetime

from watcher.store.figures import StateFigures, state_figures
from watcher.store.history import REDELIVERED_PREFIX
from watcher.store.pg.base import PgBase

# Rows of (tag, name, number, oldest), as SQLite's; one autocommit statement is one snapshot.
_FIGURES = (
    "SELECT 'runs', status, runs, NULL::double precision FROM run_counts WHERE runs > 0 "
    "UNION ALL "
    "SELECT 'pending', NULL, count(*), min(created_at) FROM outbox WHERE state = 'pending' "
    "UNION ALL "
    "SELECT 'redelivered', substr(name, $1), value, NULL FROM counters "
    "WHERE starts_with(name, $2)"
)


class FiguresMixin(PgBase):
    async def state_figures(self, *, now: datetime) -> StateFigures:
        rows = await self._fetch(_FIGURES, len(REDELIVERED_PREFIX) + 1, REDELIVERED_PREFIX)
        return state_figures(rows, now=now)
