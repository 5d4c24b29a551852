"""Reads for the status page (:mod:`watcher.ui`): run groups in progress, recent failures,
the newest events after a cursor, and the outbox per notifier.

Why a module of its own: these questions are asked only by the page, and each is bounded so
that a page stays within 50 ms of server time at 300,000 tracked runs
(``benchmarks/ui_bench.py``): groups are read in name order from the ``runs_active_by_group``
index (only as many as shown) and counted through ``runs_by_group``; failures read the newest
end of the ``runs_tracked_by_status_since`` index of each failing status; the outbox counts
read its ``pending`` and ``dead`` partial indexes (delivered rows, kept for history, are never
read). The runs page's filters that no index serves (a label, a project, a short UUID
prefix) read a bounded window of the registry per page (:meth:`OverviewMixin.page_runs_window`).

Invariants: read-only; only tracked runs are shown; every value is bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from watcher.events import RUN_GROUP_LABEL, Event
from watcher.store.codec import decode_body
from watcher.store.db import StoreBase
from watcher.store.models import TrackedRun
from watcher.store.registry import (
    _PAGE_ACTIVE,
    _PAGE_LABEL,
    _PAGE_ORDER,
    _PAGE_PREFIX,
    _PAGE_PROJECT,
    _PAGE_SELECT,
    _PAGE_STATUS,
    _SELECT_TRACKED,
    RunFilter,
    decode_cursor,
    encode_cursor,
    tracked_run,
)

# The runs page: a filter no index serves is checked row by row, so one page reads at most a
# window of the registry (by rowid, from the cursor on): a label (``json_each`` per row, about
# 1 µs) over 20,000 rows, a column (project, a short UUID prefix) over 100,000; a page that
# ends in its window before it fills says how far it searched and links on.
SCAN_LABEL_ROWS = 20_000
SCAN_COLUMN_ROWS = 100_000
# A UUID prefix this long or longer is looked up as a range of the run_uuid index (a few
# runs at most, run UUIDs being random); a shorter one matches often and is scanned for.
PREFIX_INDEXED = 8
_PAGE_GROUP = " AND json_extract(labels, '$.\"run_group\"') = ?"  # the runs_by_group index
# The range is read in the run_uuid index first: as a plain condition the planner prefers
# the rowid order of the page and checks every row.
_PAGE_UUID_RANGE = " AND rowid IN (SELECT rowid FROM runs WHERE run_uuid >= ? AND run_uuid < ?)"
_PAGE_WINDOW = " AND rowid <= ?"

# Groups with at least one active run, from the partial index of active runs; the members
# of each are then counted through the group index (the expression spelled as in groups.py).
_ACTIVE_GROUPS = (
    "SELECT DISTINCT json_extract(labels, '$.\"run_group\"') FROM runs "
    "INDEXED BY runs_active_by_group "  # else the planner reads every active run (runs_active)
    "WHERE tracked = 1 AND terminal = 0 AND stopped = 0 "
    "AND json_extract(labels, '$.\"run_group\"') IS NOT NULL ORDER BY 1 LIMIT ?"
)
_LATEST_IN_STATUS = _SELECT_TRACKED + "AND status = ? ORDER BY status_since DESC LIMIT ?"
_GROUP_COUNTS = (
    "SELECT status, terminal, stopped, count(*) FROM runs "
    "WHERE tracked = 1 AND json_extract(labels, '$.\"run_group\"') = ? "
    "GROUP BY status, terminal, stopped"
)


@dataclass(frozen=True, slots=True)
class GroupCount:
    """How many runs of a group have one (status, terminal, stopped) combination."""

    status: str | None
    terminal: bool
    stopped: bool
    runs: int


@dataclass(frozen=True, slots=True)
class WindowPage:
    """One page of the runs page: ``next_cursor`` is ``None`` on the last page;
    ``searched_from``..``searched_to``: the rowids of the window that ended before the page
    filled (``None``: it filled, or nothing is left to search), of ``newest`` (the newest
    run's rowid)."""

    runs: list[TrackedRun]
    next_cursor: str | None
    searched_to: int | None = None
    newest: int = 0
    searched_from: int = 1


def _window_query(
    where: RunFilter, after: int, windows: tuple[int, int]
) -> tuple[str, list[Any], int | None]:
    """The page's statement (without its order and limit), its values and its window
    (``windows``: rows read for a label filter, for a column filter)."""
    label_rows, column_rows = windows
    sql = _PAGE_SELECT
    params: list[Any] = [after]
    scan: int | None = None
    if where.status is not None:
        sql += _PAGE_STATUS
        params.append(where.status)
    if where.active:
        sql += _PAGE_ACTIVE
    if where.project_id is not None:
        sql += _PAGE_PROJECT
        params.append(where.project_id)
        scan = column_rows
    prefix = where.uuid_prefix
    if prefix is not None and len(prefix) >= PREFIX_INDEXED:
        sql += _PAGE_UUID_RANGE
        params.extend((prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))
    elif prefix is not None:
        sql += _PAGE_PREFIX
        params.extend((len(prefix), prefix))
        scan = column_rows
    for key, value in where.labels.items():
        if key == RUN_GROUP_LABEL:
            sql += _PAGE_GROUP
            params.append(value)
        else:
            sql += _PAGE_LABEL
            params.extend((key, value))
            scan = label_rows
    if RUN_GROUP_LABEL in where.labels:
        scan = None  # the group's index bounds the read
    return sql, params, scan


@dataclass(frozen=True, slots=True)
class NotifierOutbox:
    """One notifier's outbox: rows waiting, of which retried at least once, dead letters,
    and the error of its newest failed row (pending or dead)."""

    notifier: str
    pending: int
    retrying: int
    dead: int
    last_error: str | None


class OverviewMixin(StoreBase):
    def active_groups(self, *, limit: int = 20) -> dict[str, list[GroupCount]]:
        """The first ``limit`` run groups by name with a run still active, each with its runs
        counted by status (one index read of the active runs' groups, stopped at ``limit``)."""
        names = [row[0] for row in self._db.query(_ACTIVE_GROUPS, (max(0, limit),))]
        found: dict[str, list[GroupCount]] = {}
        for name in sorted(str(n) for n in names):
            found[name] = [
                GroupCount(row[0], bool(row[1]), bool(row[2]), int(row[3]))
                for row in self._db.query(_GROUP_COUNTS, (name,))
            ]
        return found

    def latest_in_statuses(self, statuses: Iterable[str], *, limit: int) -> list[TrackedRun]:
        """The tracked runs in any of ``statuses`` that reached it last, newest first: per
        status, the newest ``limit`` entries of ``runs_tracked_by_status_since``."""
        wanted = sorted(set(statuses))
        if not wanted:
            return []
        runs: list[TrackedRun] = []
        for status in wanted:  # one index range per status, each cut at ``limit``
            rows = self._db.query(_LATEST_IN_STATUS, (status, max(0, limit)))
            runs.extend(tracked_run(row) for row in rows)
        runs.sort(key=lambda run: run.status_since or run.tracked_at, reverse=True)
        return runs[:limit]

    def page_runs_window(
        self,
        where: RunFilter,
        *,
        limit: int,
        cursor: str | None = None,
        windows: tuple[int, int] = (SCAN_LABEL_ROWS, SCAN_COLUMN_ROWS),
    ) -> WindowPage:
        """Up to ``limit`` tracked runs matching ``where`` after ``cursor``, first tracked
        first, as :meth:`page_runs` but reading at most one window of rows (see above).

        Raises ``ValueError`` (naming ``cursor``) for a cursor this store did not hand out.
        """
        if limit < 1:
            raise ValueError("limit: must be at least 1")
        after = 0 if cursor is None else decode_cursor(cursor)
        sql, params, scan = _window_query(where, after, windows)
        if scan is not None:
            sql += _PAGE_WINDOW
            params.append(after + scan)
        rows = self._db.query(sql + _PAGE_ORDER, [*params, limit + 1])
        runs = [tracked_run(row[1:]) for row in rows[:limit]]
        if len(rows) > limit:
            return WindowPage(runs, encode_cursor(int(rows[limit - 1][0])))
        if scan is None:
            return WindowPage(runs, None)
        newest = int(self._db.query("SELECT coalesce(max(rowid), 0) FROM runs")[0][0])
        if after + scan >= newest:
            return WindowPage(runs, None)
        return WindowPage(runs, encode_cursor(after + scan), after + scan, newest, after + 1)

    def last_event_of(self, run_uuid: str) -> Event | None:
        """The run's newest event (its failure details, its metadata)."""
        rows = self._db.query(
            "SELECT body FROM events WHERE run_uuid = ? ORDER BY seq DESC LIMIT 1", (run_uuid,)
        )
        return Event.from_json(decode_body(rows[0][0])) if rows else None

    def events_after(self, seq: int, *, limit: int) -> list[tuple[int, Event]]:
        """``(seq, event)`` recorded after ``seq``, oldest first (a live feed's next step)."""
        rows = self._db.query(
            "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, max(0, limit)),
        )
        return [(int(s), Event.from_json(decode_body(body))) for s, body in rows]

    def last_event_seq(self) -> int:
        """The newest event's ``seq`` (0 for an empty log): where a live feed starts."""
        rows = self._db.query("SELECT max(seq) FROM events")
        return int(rows[0][0] or 0)

    def dead_letter_count(self) -> int:
        return int(self._db.query("SELECT count(*) FROM outbox WHERE state = 'dead'")[0][0])

    def notifier_outboxes(self) -> list[NotifierOutbox]:
        """Per notifier with rows waiting or dead; notifiers with neither are not listed."""
        pending = {
            name: (int(count), int(retrying or 0), newest)
            for name, count, retrying, newest in self._db.query(
                "SELECT notifier, count(*), sum(attempts > 0), "
                "max(CASE WHEN last_error IS NOT NULL THEN id END) "
                "FROM outbox WHERE state = 'pending' GROUP BY notifier"
            )
        }
        dead = {
            name: (int(count), newest)
            for name, count, newest in self._db.query(
                "SELECT notifier, count(*), max(id) FROM outbox WHERE state = 'dead' "
                "GROUP BY notifier"
            )
        }
        result = []
        for name in sorted(set(pending) | set(dead)):
            count, retrying, newest_pending = pending.get(name, (0, 0, None))
            dead_count, newest_dead = dead.get(name, (0, None))
            newest = max((i for i in (newest_pending, newest_dead) if i is not None), default=None)
            error = None
            if newest is not None:
                rows = self._db.query("SELECT last_error FROM outbox WHERE id = ?", (newest,))
                error = rows[0][0] if rows else None
            result.append(NotifierOutbox(name, count, retrying, dead_count, error))
        return result
