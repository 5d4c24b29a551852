"""The registry of tracked runs in PostgreSQL: the SQL of :mod:`watcher.store.registry`.

Same invariants as the SQLite registry (idempotent ``track`` in one transaction, untrack
keeps the row, ``change_seq`` stamps every change another process must notice, keyset
pages). Differences: ``runs.id`` plays SQLite's rowid in the page cursors (the same opaque
cursor format, :func:`~watcher.store.registry.encode_cursor`); ``executemany`` becomes one
statement over ``unnest`` of arrays; the registry writers take the ``change_seq`` row first
(:func:`~watcher.store.pg.base.next_change_seq`), which orders them as SQLite's single
writer does. Pages of JSON are rendered in Python from the same rows
(``TrackedRun.to_json_dict``), byte for byte what the SQLite store's SQL renders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from watcher.limits import check_labels
from watcher.store.db import dump_json, load_labels, to_ts
from watcher.store.models import ActiveRun, TrackedRun, TrackRequest, TrackResult
from watcher.store.pg.base import PgBase, next_change_seq
from watcher.store.registry import (
    RunFilter,
    RunPage,
    RunPageJson,
    _merge_requests,
    decode_cursor,
    encode_cursor,
    tracked_run,
)

TRACKED_COLUMNS = (
    "run_uuid, project_id, status, terminal, labels::text, tracked_at, last_polled_at, "
    "status_since, stopped, consecutive_errors, next_poll_after"
)
SELECT_TRACKED = f"SELECT {TRACKED_COLUMNS} FROM runs WHERE tracked "  # noqa: S608 - literal
_SELECT_ACTIVE = (
    "SELECT run_uuid, project_id, status, last_polled_at, next_poll_after FROM runs "
    "WHERE tracked AND NOT terminal AND NOT stopped"
)


def _active_run(row: asyncpg.Record) -> ActiveRun:
    return ActiveRun(row[0], row[1], row[2], row[3], row[4])


PREFIX_INDEXED = 8  # as watcher.store.overview: a prefix this long is an index range


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def filter_sql(
    where: RunFilter, params: list[Any], windows: tuple[int, int] | None = None
) -> tuple[str, int | None]:
    """The WHERE fragments of ``where`` (literal, one per filter given; values appended to
    ``params``) and, with ``windows`` (label rows, column rows), how many rows a page may
    read when no index serves a filter (see :meth:`OverviewMixin.page_runs_window`)."""

    def bind(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    label_rows, column_rows = windows or (None, None)
    scan: int | None = None
    sql = ""
    if where.status is not None:
        sql += f" AND status = {bind(where.status)}"
    if where.active:
        sql += " AND NOT terminal AND NOT stopped"
    if where.project_id is not None:
        sql += f" AND project_id = {bind(where.project_id)}"
        scan = column_rows
    prefix = where.uuid_prefix
    if prefix is not None and len(prefix) >= PREFIX_INDEXED:
        sql += f" AND run_uuid LIKE {bind(_like_prefix(prefix))}"  # runs_uuid_pattern
    elif prefix is not None:
        sql += f" AND starts_with(run_uuid, {bind(prefix)})"
        scan = column_rows
    for key, value in where.labels.items():
        if key == "run_group":  # spelled as the runs_by_group index
            sql += f" AND labels ->> 'run_group' = {bind(value)}"
        else:
            sql += f" AND labels ->> {bind(key)} = {bind(value)}"
            scan = label_rows
    if "run_group" in where.labels:
        scan = None  # the group's index bounds the read
    return sql, scan


def page_query(where: RunFilter, after: int, limit: int) -> tuple[str, list[Any]]:
    """A keyset page on ``runs.id``."""
    params: list[Any] = [after]
    conditions, _ = filter_sql(where, params)
    sql = f"SELECT id, {TRACKED_COLUMNS} FROM runs WHERE tracked AND id > $1{conditions}"  # noqa: S608
    params.append(limit)
    return sql + f" ORDER BY id LIMIT ${len(params)}", params


Rows = list[tuple[Any, ...]]


def _classify(
    merged: dict[str, tuple[str, dict[str, str]]], known: dict[str, asyncpg.Record]
) -> tuple[list[str], list[str], Rows, Rows, Rows]:
    """``track``'s plan: (added, existing, inserts, retracks, updates), as the SQLite store."""
    added: list[str] = []
    existing: list[str] = []
    inserts: Rows = []
    retracks: Rows = []
    updates: Rows = []
    for uuid, (project, labels) in merged.items():
        row = known.get(uuid)
        if row is None:
            inserts.append((uuid, project, dump_json(labels)))
            added.append(uuid)
            continue
        new_project = project or row["project_id"]
        if not row["tracked"]:
            retracks.append((uuid, new_project, dump_json(labels)))
            added.append(uuid)
            continue
        existing.append(uuid)
        old_text = row["labels"]
        new_text = old_text
        if labels:
            combined = {**load_labels(old_text), **labels}
            check_labels(uuid, combined)  # raising rolls the whole call back
            new_text = dump_json(combined)
        if row["stopped"] or new_project != row["project_id"] or new_text != old_text:
            updates.append((uuid, new_project, new_text))
    return added, existing, inserts, retracks, updates


def _json(run: TrackedRun) -> str:
    """The run as ``GET /v1/runs`` prints it (what SQLite's ``json_object`` renders)."""
    return json.dumps(run.to_json_dict(), ensure_ascii=False, separators=(",", ":"))


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[], [], []]


class RegistryMixin(PgBase):
    async def track(self, requests: Iterable[TrackRequest]) -> TrackResult:
        merged = _merge_requests(requests)
        if not merged:
            return TrackResult(added=[], existing=[])
        now = self._now()
        async with self._write(fenced=False) as conn:
            seq = await next_change_seq(conn)
            known = {
                row["run_uuid"]: row
                for row in await conn.fetch(
                    "SELECT run_uuid, tracked, project_id, labels::text AS labels, stopped "
                    "FROM runs WHERE run_uuid = ANY($1::text[]) FOR UPDATE",
                    list(merged),
                )
            }
            added, existing, inserts, retracks, updates = _classify(merged, known)
            if inserts:
                await conn.execute(
                    "INSERT INTO runs (run_uuid, project_id, labels, tracked_at, change_seq) "
                    "SELECT u, p, l::json, $4, $5 FROM unnest($1::text[], $2::text[], "
                    "$3::text[]) WITH ORDINALITY AS t(u, p, l, n) ORDER BY n",
                    *_columns(inserts),
                    now,
                    seq,
                )
            if retracks:
                await conn.execute(
                    "UPDATE runs SET tracked = true, stopped = false, consecutive_errors = 0, "
                    "next_poll_after = NULL, stuck_status = NULL, project_id = t.p, "
                    "labels = t.l::json, tracked_at = $4, change_seq = $5 "
                    "FROM unnest($1::text[], $2::text[], $3::text[]) AS t(u, p, l) "
                    "WHERE runs.run_uuid = t.u",
                    *_columns(retracks),
                    now,
                    seq,
                )
            if updates:
                await conn.execute(
                    "UPDATE runs SET project_id = t.p, labels = t.l::json, change_seq = $4, "
                    "consecutive_errors = CASE WHEN stopped THEN 0 ELSE consecutive_errors END, "
                    "next_poll_after = CASE WHEN stopped THEN NULL ELSE next_poll_after END, "
                    "stopped = false FROM unnest($1::text[], $2::text[], $3::text[]) "
                    "AS t(u, p, l) WHERE runs.run_uuid = t.u",
                    *_columns(updates),
                    seq,
                )
        return TrackResult(added=added, existing=existing)

    async def untrack(self, run_uuids: Iterable[str]) -> list[str]:
        uuids = list(dict.fromkeys(run_uuids))
        async with self._write(fenced=False) as conn:
            removed = {
                row[0]
                for row in await conn.fetch(
                    "SELECT run_uuid FROM runs WHERE tracked AND run_uuid = ANY($1::text[]) "
                    "FOR UPDATE",
                    uuids,
                )
            }
            if removed:
                seq = await next_change_seq(conn)
                await conn.execute(
                    "UPDATE runs SET tracked = false, change_seq = $2 "
                    "WHERE run_uuid = ANY($1::text[])",
                    sorted(removed),
                    seq,
                )
        return [uuid for uuid in uuids if uuid in removed]

    async def get_run(self, run_uuid: str) -> TrackedRun | None:
        rows = await self._fetch(SELECT_TRACKED + "AND run_uuid = $1", run_uuid)
        return tracked_run(rows[0]) if rows else None

    async def _page_rows(
        self, limit: int, cursor: str | None, where: RunFilter | None
    ) -> tuple[list[asyncpg.Record], str | None]:
        if limit < 1:
            raise ValueError("limit: must be at least 1")
        after = 0 if cursor is None else decode_cursor(cursor)
        sql, params = page_query(where or RunFilter(), after, limit + 1)
        rows = await self._fetch(sql, *params)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(int(rows[-1][0])) if more else None

    async def page_runs(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPage:
        rows, next_cursor = await self._page_rows(limit, cursor, where)
        return RunPage([tracked_run(row[1:]) for row in rows], next_cursor)

    async def page_runs_json(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPageJson:
        rows, next_cursor = await self._page_rows(limit, cursor, where)
        runs = [_json(tracked_run(row[1:])) for row in rows]
        return RunPageJson(runs, next_cursor)

    async def tracked_among(self, run_uuids: Iterable[str]) -> set[str]:
        rows = await self._fetch(
            "SELECT run_uuid FROM runs WHERE tracked AND run_uuid = ANY($1::text[])",
            list(run_uuids),
        )
        return {row[0] for row in rows}

    async def active_runs(self) -> list[ActiveRun]:
        return [_active_run(row) for row in await self._fetch(_SELECT_ACTIVE)]

    async def snapshot(self) -> tuple[int, list[ActiveRun]]:
        async with self._snapshot() as conn:
            cursor = await conn.fetchval("SELECT value FROM counters WHERE name = 'change_seq'")
            rows = await conn.fetch(_SELECT_ACTIVE)
        return int(cursor), [_active_run(row) for row in rows]

    async def changes_since(self, cursor: int) -> tuple[int, list[ActiveRun], list[str]]:
        async with self._snapshot() as conn:
            current = int(
                await conn.fetchval("SELECT value FROM counters WHERE name = 'change_seq'")
            )
            if current <= cursor:
                return current, [], []
            rows = await conn.fetch(
                "SELECT run_uuid, project_id, status, last_polled_at, next_poll_after, "
                "tracked, terminal, stopped FROM runs "
                "WHERE change_seq > $1 AND change_seq <= $2 ORDER BY change_seq",
                cursor,
                current,
            )
        active = [_active_run(row) for row in rows if row[5] and not row[6] and not row[7]]
        untracked = [row[0] for row in rows if not row[5]]
        return current, active, untracked

    async def record_polls(self, polled: Sequence[tuple[str, datetime]]) -> None:
        if not polled:
            return
        latest = {uuid: to_ts(at) for uuid, at in polled}  # the last one wins, as in SQLite
        async with self._write() as conn:
            await conn.execute(
                "UPDATE runs SET last_polled_at = t.at, consecutive_errors = 0, "
                "next_poll_after = NULL FROM unnest($1::text[], $2::float8[]) AS t(u, at) "
                "WHERE runs.run_uuid = t.u",
                list(latest),
                list(latest.values()),
            )

    async def record_error(
        self, run_uuid: str, *, consecutive_errors: int, next_poll_after: datetime | None
    ) -> None:
        async with self._write() as conn:
            await conn.execute(
                "UPDATE runs SET consecutive_errors = $1, next_poll_after = $2 WHERE run_uuid = $3",
                consecutive_errors,
                None if next_poll_after is None else to_ts(next_poll_after),
                run_uuid,
            )

    async def labels_of(self, run_uuid: str) -> dict[str, str]:
        rows = await self._fetch("SELECT labels::text FROM runs WHERE run_uuid = $1", run_uuid)
        return load_labels(rows[0][0]) if rows else {}

    async def count_by_status(self) -> dict[str | None, int]:
        rows = await self._fetch("SELECT status, runs FROM run_counts WHERE runs > 0")
        return {(status if status != "" else None): int(count) for status, count in rows}

    async def stuck_candidates(self, *, after_seconds: float) -> list[TrackedRun]:
        if after_seconds <= 0:
            return []
        rows = await self._fetch(
            SELECT_TRACKED + "AND NOT terminal AND NOT stopped AND status IS NOT NULL "
            "AND last_polled_at - status_since >= $1 "
            "AND stuck_status IS DISTINCT FROM status",
            float(after_seconds),
        )
        return [tracked_run(row) for row in rows]
