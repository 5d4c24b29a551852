"""The status page's reads in PostgreSQL: the SQL of :mod:`watcher.store.overview`.

Same bounds as SQLite's: groups are found through the partial index of active runs and
counted through the group index; failures read one index range per failing status; the
outbox counts read the ``pending`` and ``dead`` partial indexes. Read-only.
"""

from __future__ import annotations

from collections.abc import Iterable

from watcher.events import Event
from watcher.store.codec import decode_body
from watcher.store.models import TrackedRun
from watcher.store.overview import (
    SCAN_COLUMN_ROWS,
    SCAN_LABEL_ROWS,
    GroupCount,
    NotifierOutbox,
    WindowPage,
)
from watcher.store.pg.base import PgBase
from watcher.store.pg.registry import SELECT_TRACKED, TRACKED_COLUMNS, filter_sql
from watcher.store.registry import RunFilter, decode_cursor, encode_cursor, tracked_run

_ACTIVE_GROUPS = (
    "SELECT DISTINCT labels ->> 'run_group' FROM runs "
    "WHERE tracked AND NOT terminal AND NOT stopped "
    "AND labels ->> 'run_group' IS NOT NULL ORDER BY 1 LIMIT $1"
)
_GROUP_COUNTS = (
    "SELECT status, terminal, stopped, count(*) FROM runs "
    "WHERE tracked AND labels ->> 'run_group' = $1 GROUP BY status, terminal, stopped"
)


class OverviewMixin(PgBase):
    async def active_groups(self, *, limit: int = 20) -> dict[str, list[GroupCount]]:
        names = sorted(str(row[0]) for row in await self._fetch(_ACTIVE_GROUPS, max(0, limit)))
        found: dict[str, list[GroupCount]] = {}
        for name in names:
            found[name] = [
                GroupCount(row[0], bool(row[1]), bool(row[2]), int(row[3]))
                for row in await self._fetch(_GROUP_COUNTS, name)
            ]
        return found

    async def latest_in_statuses(self, statuses: Iterable[str], *, limit: int) -> list[TrackedRun]:
        wanted = sorted(set(statuses))
        if not wanted:
            return []
        runs: list[TrackedRun] = []
        for status in wanted:
            rows = await self._fetch(
                SELECT_TRACKED + "AND status = $1 ORDER BY status_since DESC NULLS LAST LIMIT $2",
                status,
                max(0, limit),
            )
            runs.extend(tracked_run(row) for row in rows)
        runs.sort(key=lambda run: run.status_since or run.tracked_at, reverse=True)
        return runs[:limit]

    async def page_runs_window(
        self,
        where: RunFilter,
        *,
        limit: int,
        cursor: str | None = None,
        windows: tuple[int, int] = (SCAN_LABEL_ROWS, SCAN_COLUMN_ROWS),
    ) -> WindowPage:
        """:meth:`page_runs` reading at most one window of ``runs.id`` when no index serves
        a filter (the SQLite store's contract, :mod:`watcher.store.overview`)."""
        if limit < 1:
            raise ValueError("limit: must be at least 1")
        after = 0 if cursor is None else decode_cursor(cursor)
        params: list[object] = [after]
        conditions, scan = filter_sql(where, params, windows)
        if scan is not None:
            params.append(after + scan)
            conditions += f" AND id <= ${len(params)}"
        params.append(limit + 1)
        rows = await self._fetch(
            f"SELECT id, {TRACKED_COLUMNS} FROM runs WHERE tracked AND id > $1{conditions} "  # noqa: S608
            f"ORDER BY id LIMIT ${len(params)}",
            *params,
        )
        runs = [tracked_run(row[1:]) for row in rows[:limit]]
        if len(rows) > limit:
            return WindowPage(runs, encode_cursor(int(rows[limit - 1][0])))
        if scan is None:
            return WindowPage(runs, None)
        newest = int((await self._fetch("SELECT coalesce(max(id), 0) FROM runs"))[0][0])
        if after + scan >= newest:
            return WindowPage(runs, None)
        return WindowPage(runs, encode_cursor(after + scan), after + scan, newest, after + 1)

    async def last_event_of(self, run_uuid: str) -> Event | None:
        rows = await self._fetch(
            "SELECT body FROM events WHERE run_uuid = $1 ORDER BY seq DESC LIMIT 1", run_uuid
        )
        return Event.from_json(decode_body(bytes(rows[0][0]))) if rows else None

    async def events_after(self, seq: int, *, limit: int) -> list[tuple[int, Event]]:
        rows = await self._fetch(
            "SELECT seq, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            seq,
            max(0, limit),
        )
        return [(int(s), Event.from_json(decode_body(bytes(body)))) for s, body in rows]

    async def last_event_seq(self) -> int:
        rows = await self._fetch("SELECT max(seq) FROM events")
        return int(rows[0][0] or 0)

    async def dead_letter_count(self) -> int:
        rows = await self._fetch("SELECT count(*) FROM outbox WHERE state = 'dead'")
        return int(rows[0][0])

    async def notifier_outboxes(self) -> list[NotifierOutbox]:
        pending = {
            row[0]: (int(row[1]), int(row[2] or 0), row[3])
            for row in await self._fetch(
                "SELECT notifier, count(*), count(*) FILTER (WHERE attempts > 0), "
                "max(CASE WHEN last_error IS NOT NULL THEN id END) "
                "FROM outbox WHERE state = 'pending' GROUP BY notifier"
            )
        }
        dead = {
            row[0]: (int(row[1]), row[2])
            for row in await self._fetch(
                "SELECT notifier, count(*), max(id) FROM outbox WHERE state = 'dead' "
                "GROUP BY notifier"
            )
        }
        newest_ids: list[int] = []
        for name in set(pending) | set(dead):
            ids = (pending.get(name, (0, 0, None))[2], dead.get(name, (0, None))[1])
            newest_ids.extend(int(i) for i in ids if i is not None)
        errors = {
            int(row[0]): row[1]
            for row in await self._fetch(
                "SELECT id, last_error FROM outbox WHERE id = ANY($1::bigint[])", newest_ids
            )
        }
        result = []
        for name in sorted(set(pending) | set(dead)):
            count, retrying, newest_pending = pending.get(name, (0, 0, None))
            dead_count, newest_dead = dead.get(name, (0, None))
            newest = max((i for i in (newest_pending, newest_dead) if i is not None), default=None)
            error = None if newest is None else errors.get(int(newest))
            result.append(NotifierOutbox(name, count, retrying, dead_count, error))
        return result
