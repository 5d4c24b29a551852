"""What the batch poller orders listed statuses by: when each run's recorded status held.

A DescribeRuns answer may lag behind GetRunStatus (see :mod:`watcher.polling.batch`). To
tell an older answer from a newer one, the poller needs, per active run, either the API's
``UpdateTime`` of the recorded status (kept in the stored metadata when a ``Run`` was
recorded: the batch poller puts it there) or the time GetRunStatus showed it
(``status_since`` of a status recorded from GetRunStatus, whose metadata has no
``UpdateTime``). Both are already in the ``runs`` row, so no column is needed and a per-run
↔ batch switch or a restart reads the same references. A status without metadata (a
discovery baseline) has neither: the poller then confirms a contradicting answer.

Read-only; one query (the active runs, or the given ones).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from watcher.store.db import StoreBase
from watcher.store.models import Row

# ``instr`` first: only metadata recorded from a Run mentions UpdateTime, so the JSON of
# the (larger) GetRunStatus metadata is not parsed.
# Full literals (as in registry.py): no statement is put together at run time.
_SELECT_ALL = (
    "SELECT run_uuid, status_since, metadata IS NOT NULL, "
    "CASE WHEN instr(metadata, '\"UpdateTime\"') > 0 AND json_valid(metadata) "
    "AND json_extract(metadata, '$.Status') = status "
    "THEN json_extract(metadata, '$.UpdateTime') END FROM runs "
    "WHERE tracked = 1 AND terminal = 0 AND stopped = 0 AND status IS NOT NULL"
)
_SELECT_SOME = (
    "SELECT run_uuid, status_since, metadata IS NOT NULL, "
    "CASE WHEN instr(metadata, '\"UpdateTime\"') > 0 AND json_valid(metadata) "
    "AND json_extract(metadata, '$.Status') = status "
    "THEN json_extract(metadata, '$.UpdateTime') END FROM runs "
    "WHERE tracked = 1 AND terminal = 0 AND stopped = 0 AND status IS NOT NULL "
    "AND run_uuid IN (SELECT value FROM json_each(?))"
)


def _seconds(text: object) -> float | None:
    """An RFC 3339 time with offset as unix seconds; ``None`` for anything else."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


def references(rows: Iterable[Row]) -> dict[str, tuple[float | None, float | None]]:
    """``{run_uuid: (update_time, seen_at)}`` from ``run_uuid, status_since, has metadata,
    UpdateTime text`` rows (both backends select these)."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for row in rows:
        run_uuid, status_since, has_metadata, update_text = row[0], row[1], row[2], row[3]
        update_time = _seconds(update_text)
        if update_time is not None:
            out[run_uuid] = (update_time, None)
        elif has_metadata and status_since is not None:
            out[run_uuid] = (None, float(status_since))
        else:
            out[run_uuid] = (None, None)
    return out


class ReferencesMixin(StoreBase):
    def status_references(
        self, run_uuids: Sequence[str] | None = None
    ) -> dict[str, tuple[float | None, float | None]]:
        """``{run_uuid: (update_time, seen_at)}`` for active runs with a status (all of them,
        or those of ``run_uuids``); see the module docstring. Unix seconds or ``None``."""
        if run_uuids is None:
            rows = self._db.query(_SELECT_ALL)
        else:
            rows = self._db.query(_SELECT_SOME, (json.dumps(list(run_uuids)),))
        return references(rows)
