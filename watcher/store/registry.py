"""The registry of tracked runs: tracking, untracking, reading, and cheap change feeds.

Invariants:
- ``track`` is idempotent and runs in one transaction whatever its size (``executemany``).
- Untracking keeps the row (``tracked = 0``) so history and the last status survive; reads
  other than :meth:`labels_of` only ever show tracked runs.
- Every change another process must notice (track, re-track, project or label change, untrack)
  stamps the touched rows with a fresh value of the ``change_seq`` counter, bumped once per
  transaction. Readers see the counter and the rows in one snapshot, so a cursor never skips
  a change: :meth:`changes_since` is an indexed range scan, usually empty.
- Nothing here reads the whole registry in one go: :meth:`page_runs` is a keyset page on the
  rowid (opaque cursor), :meth:`snapshot` reads the ``runs_active`` partial index (startup
  costs what the active runs cost, not the history), and :meth:`count_by_status` reads the
  trigger-maintained ``run_counts`` table.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from watcher.limits import check_labels
from watcher.store.db import (
    StoreBase,
    dump_json,
    from_ts,
    from_ts_opt,
    load_labels,
    to_ts,
)
from watcher.store.models import ActiveRun, Row, TrackedRun, TrackRequest, TrackResult

# Full statements rather than composed fragments: every query here is a literal, and every
# value is bound. Column order matches tracked_run / _active_run.
_SELECT_TRACKED = (
    "SELECT run_uuid, project_id, status, terminal, labels, tracked_at, last_polled_at, "
    "status_since, stopped, consecutive_errors, next_poll_after FROM runs WHERE tracked = 1 "
)
_SELECT_ACTIVE = (
    "SELECT run_uuid, project_id, status, last_polled_at, next_poll_after FROM runs "
    "WHERE tracked = 1 AND terminal = 0 AND stopped = 0"
)


# Pages of the registry (``list``, ``GET /v1/runs``): keyset pagination on the rowid, which
# never changes for a run (a re-track keeps the row), so a page walk returns every run that
# stays tracked exactly once however the registry changes meanwhile. The WHERE clause is put
# together from the literal fragments below, one per filter given; values are always bound.
_PAGE_SELECT = (
    "SELECT rowid, run_uuid, project_id, status, terminal, labels, tracked_at, last_polled_at, "
    "status_since, stopped, consecutive_errors, next_poll_after FROM runs "
    "WHERE tracked = 1 AND rowid > ?"
)


# The same page rendered by SQLite, one JSON object per run, byte for byte what
# ``json.dumps(run.to_json_dict(), ensure_ascii=False, separators=(",", ":"))`` gives (the
# server's bodies): a page of ``/v1/runs`` is then built in C with the GIL released, so the
# worker thread that reads it does not keep the event loop waiting for the GIL (issue 13).
# Labels are the stored text as is (always written by ``dump_json``: the same rendering).
def _iso_sql(column: str) -> str:
    """SQL for :func:`~watcher.events.isoformat_z` of :func:`from_ts` of ``column``.

    Exactly as ``datetime.fromtimestamp`` does it: the fraction of the second rounded to
    microseconds (a carry moves to the second), then cut to milliseconds. Only ever called
    with the literal column names below. Non-negative timestamps (after 1970).
    """
    micros = (
        f"(CAST({column} AS INTEGER) * 1000000 + "
        f"CAST(round(({column} - CAST({column} AS INTEGER)) * 1000000.0) AS INTEGER))"
    )
    return (
        f"CASE WHEN {column} IS NULL THEN NULL ELSE "
        f"strftime('%Y-%m-%dT%H:%M:%S', {micros} / 1000000, 'unixepoch') "
        f"|| printf('.%03dZ', {micros} % 1000000 / 1000) END"
    )


_PAGE_SELECT_JSON = (
    "SELECT rowid, json_object("  # noqa: S608 - literal column names; values are bound
    "'run_uuid', run_uuid, 'project_id', project_id, 'status', status, "
    "'terminal', json(CASE WHEN terminal THEN 'true' ELSE 'false' END), "
    "'labels', json(CASE WHEN labels IS NULL OR labels = '' THEN '{}' ELSE labels END), "
    f"'tracked_at', {_iso_sql('tracked_at')}, "
    f"'last_polled_at', {_iso_sql('last_polled_at')}, "
    f"'status_since', {_iso_sql('status_since')}, "
    "'stopped', json(CASE WHEN stopped THEN 'true' ELSE 'false' END)"
    ") FROM runs WHERE tracked = 1 AND rowid > ?"
)
_PAGE_STATUS = " AND status = ?"
_PAGE_ACTIVE = " AND terminal = 0 AND stopped = 0"
_PAGE_PROJECT = " AND project_id = ?"
_PAGE_PREFIX = " AND substr(run_uuid, 1, ?) = ?"
_PAGE_LABEL = " AND EXISTS (SELECT 1 FROM json_each(runs.labels) WHERE key = ? AND value = ?)"
_PAGE_ORDER = " ORDER BY rowid LIMIT ?"
_CURSOR_PREFIX = "r1:"
_CURSOR_BODY = re.compile(r"r1:[0-9]{1,19}")


def encode_cursor(rowid: int) -> str:
    """An opaque page cursor: callers hand it back, never build or read it."""
    raw = f"{_CURSOR_PREFIX}{rowid}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The rowid a cursor from :func:`encode_cursor` stands for; ``ValueError`` if it is not one."""
    if not cursor or len(cursor) > 40 or not cursor.isascii():
        raise ValueError("cursor: not a cursor this server returned")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("cursor: not a cursor this server returned") from None
    if not _CURSOR_BODY.fullmatch(text):
        raise ValueError("cursor: not a cursor this server returned")
    return int(text[len(_CURSOR_PREFIX) :])


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which tracked runs a page shows; every condition given must hold.

    ``status``: the last seen status, exactly; ``labels``: each key has exactly that value;
    ``active``: not terminal and not stopped (the runs being polled); ``project_id``:
    exactly; ``uuid_prefix``: the run UUID starts with it (the status page's filters).
    """

    status: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    active: bool = False
    project_id: str | None = None
    uuid_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of the registry; ``next_cursor`` is ``None`` on the last page."""

    runs: list[TrackedRun]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class RunPageJson:
    """One page of the registry as JSON text: one object per run, as ``to_json_dict``."""

    runs: list[str]
    next_cursor: str | None


class PageRuns(Protocol):
    """A backend's ``page_runs``."""

    def __call__(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> Awaitable[RunPage]: ...


async def walk_runs(
    page_runs: PageRuns, where: RunFilter | None, page: int
) -> AsyncIterator[TrackedRun]:
    """Every run ``where`` selects, ``page`` at a time: the cursor walk of both backends'
    ``iter_runs``."""
    cursor: str | None = None
    while True:
        found = await page_runs(limit=page, cursor=cursor, where=where)
        for run in found.runs:
            yield run
        if found.next_cursor is None:
            return
        cursor = found.next_cursor


def _page_query(
    where: RunFilter, after: int, limit: int, select: str = _PAGE_SELECT
) -> tuple[str, list[Any]]:
    sql = select
    params: list[Any] = [after]
    if where.status is not None:
        sql += _PAGE_STATUS
        params.append(where.status)
    if where.active:
        sql += _PAGE_ACTIVE
    if where.project_id is not None:
        sql += _PAGE_PROJECT
        params.append(where.project_id)
    if where.uuid_prefix is not None:
        sql += _PAGE_PREFIX
        params.extend((len(where.uuid_prefix), where.uuid_prefix))
    for key, value in where.labels.items():
        sql += _PAGE_LABEL
        params.extend((key, value))
    return sql + _PAGE_ORDER, [*params, limit]


def tracked_run(row: Row) -> TrackedRun:
    """A tracked run from its columns in the order both backends select them."""
    return TrackedRun(
        run_uuid=row[0],
        project_id=row[1],
        status=row[2],
        terminal=bool(row[3]),
        labels=load_labels(row[4]),
        tracked_at=from_ts(row[5]),
        last_polled_at=from_ts_opt(row[6]),
        status_since=from_ts_opt(row[7]),
        stopped=bool(row[8]),
        consecutive_errors=int(row[9]),
        next_poll_after=from_ts_opt(row[10]),
    )


def _active_run(row: tuple[Any, ...]) -> ActiveRun:
    return ActiveRun(row[0], row[1], row[2], row[3], row[4])


def next_change_seq(conn: sqlite3.Connection) -> int:
    """Bump and return the change counter; call inside a write transaction."""
    conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'change_seq'")
    return int(conn.execute("SELECT value FROM counters WHERE name = 'change_seq'").fetchone()[0])


def _current_change_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM counters WHERE name = 'change_seq'").fetchone()[0])


def _merge_requests(requests: Iterable[TrackRequest]) -> dict[str, tuple[str, dict[str, str]]]:
    """One entry per run, in first-seen order; later duplicates add labels and a project."""
    merged: dict[str, tuple[str, dict[str, str]]] = {}
    for request in requests:
        if not request.run_uuid:
            raise ValueError("run_uuid must not be empty")
        project, labels = merged.get(request.run_uuid, ("", {}))
        labels = {**labels, **{str(k): str(v) for k, v in request.labels.items()}}
        check_labels(request.run_uuid, labels)
        merged[request.run_uuid] = (request.project_id or project, labels)
    return merged


class RegistryMixin(StoreBase):
    def track(self, requests: Iterable[TrackRequest]) -> TrackResult:
        """Track runs; idempotent. Labels given for an already tracked run are merged in.

        A run tracked before and untracked since is re-activated (reported as added): its
        last status is kept, so the next poll reports a change that happened meanwhile (a run
        whose last status was terminal stays terminal and is not polled again).
        Tracking a run again also re-activates it if it was stopped as not found, e.g. to
        retry it with the right ``project_id``.
        """
        merged = _merge_requests(requests)
        if not merged:
            return TrackResult(added=[], existing=[])
        now = self._now()
        uuids = list(merged)
        added: list[str] = []
        existing: list[str] = []
        with self._db.write() as conn:
            seq = next_change_seq(conn)
            known: dict[str, tuple[int, str, str, int]] = {
                uuid: (tracked, project, labels, stopped)
                for uuid, tracked, project, labels, stopped in conn.execute(
                    "SELECT run_uuid, tracked, project_id, labels, stopped FROM runs "
                    "WHERE run_uuid IN (SELECT value FROM json_each(?))",
                    (json.dumps(uuids),),
                )
            }
            inserts: list[tuple[Any, ...]] = []
            retracks: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            for uuid in uuids:
                project, labels = merged[uuid]
                row = known.get(uuid)
                if row is None:
                    inserts.append((uuid, project, dump_json(labels), now, seq))
                    added.append(uuid)
                    continue
                tracked, old_project, old_labels_text, stopped = row
                new_project = project or old_project
                if not tracked:
                    # A fresh tracking session: the old labels belonged to the old one.
                    retracks.append((new_project, dump_json(labels), now, seq, uuid))
                    added.append(uuid)
                    continue
                existing.append(uuid)
                new_labels_text = old_labels_text
                if labels:  # skip the JSON round trip in the common "track again" case
                    combined = {**load_labels(old_labels_text), **labels}
                    check_labels(uuid, combined)  # raising rolls the whole call back
                    new_labels_text = dump_json(combined)
                if stopped or new_project != old_project or new_labels_text != old_labels_text:
                    updates.append((new_project, new_labels_text, seq, uuid))
            conn.executemany(
                "INSERT INTO runs (run_uuid, project_id, labels, tracked_at, change_seq) "
                "VALUES (?, ?, ?, ?, ?)",
                inserts,
            )
            conn.executemany(
                "UPDATE runs SET tracked = 1, stopped = 0, consecutive_errors = 0, "
                "next_poll_after = NULL, stuck_status = NULL, project_id = ?, labels = ?, "
                "tracked_at = ?, change_seq = ? WHERE run_uuid = ?",
                retracks,
            )
            conn.executemany(
                "UPDATE runs SET project_id = ?, labels = ?, change_seq = ?, "
                "consecutive_errors = CASE WHEN stopped = 1 THEN 0 ELSE consecutive_errors END, "
                "next_poll_after = CASE WHEN stopped = 1 THEN NULL ELSE next_poll_after END, "
                "stopped = 0 WHERE run_uuid = ?",
                updates,
            )
        return TrackResult(added=added, existing=existing)

    def untrack(self, run_uuids: Iterable[str]) -> list[str]:
        """Stop watching runs; returns those that were tracked. Their events stay."""
        uuids = list(dict.fromkeys(run_uuids))
        with self._db.write() as conn:
            removed = {
                uuid
                for (uuid,) in conn.execute(
                    "SELECT run_uuid FROM runs WHERE tracked = 1 "
                    "AND run_uuid IN (SELECT value FROM json_each(?))",
                    (json.dumps(uuids),),
                )
            }
            if removed:
                seq = next_change_seq(conn)
                conn.executemany(
                    "UPDATE runs SET tracked = 0, change_seq = ? WHERE run_uuid = ?",
                    [(seq, uuid) for uuid in removed],
                )
        return [uuid for uuid in uuids if uuid in removed]

    def get_run(self, run_uuid: str) -> TrackedRun | None:
        rows = self._db.query(_SELECT_TRACKED + "AND run_uuid = ?", (run_uuid,))
        return tracked_run(rows[0]) if rows else None

    def list_runs(self) -> list[TrackedRun]:
        """Every tracked run, in the order they were first tracked (tests, small registries:
        anything that may meet a large registry pages with :meth:`iter_runs`)."""
        return list(self.iter_runs())

    def page_runs(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPage:
        """Up to ``limit`` tracked runs matching ``where``, after ``cursor``, first tracked first.

        Raises ``ValueError`` (naming ``cursor``) for a cursor this store did not hand out.
        One indexed range read of at most ``limit + 1`` rows (a label filter reads on until it
        has them).
        """
        if limit < 1:
            raise ValueError("limit: must be at least 1")
        after = 0 if cursor is None else decode_cursor(cursor)
        sql, params = _page_query(where or RunFilter(), after, limit + 1)
        rows = self._db.query(sql, params)
        more = len(rows) > limit
        rows = rows[:limit]
        runs = [tracked_run(row[1:]) for row in rows]
        return RunPage(runs, encode_cursor(int(rows[-1][0])) if more else None)

    def page_runs_json(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPageJson:
        """:meth:`page_runs` with each run rendered to compact JSON text by SQLite."""
        if limit < 1:
            raise ValueError("limit: must be at least 1")
        after = 0 if cursor is None else decode_cursor(cursor)
        sql, params = _page_query(where or RunFilter(), after, limit + 1, _PAGE_SELECT_JSON)
        rows = self._db.query(sql, params)
        more = len(rows) > limit
        rows = rows[:limit]
        runs = [row[1] for row in rows]
        return RunPageJson(runs, encode_cursor(int(rows[-1][0])) if more else None)

    def iter_runs(
        self, where: RunFilter | None = None, *, page: int = 1000
    ) -> Iterator[TrackedRun]:
        """Every tracked run matching ``where``, read page by page (bounded memory)."""
        cursor: str | None = None
        while True:
            found = self.page_runs(limit=page, cursor=cursor, where=where)
            yield from found.runs
            if found.next_cursor is None:
                return
            cursor = found.next_cursor

    def tracked_among(self, run_uuids: Iterable[str]) -> set[str]:
        """Which of ``run_uuids`` are tracked (an indexed lookup per id, not a registry scan)."""
        rows = self._db.query(
            "SELECT run_uuid FROM runs WHERE tracked = 1 "
            "AND run_uuid IN (SELECT value FROM json_each(?))",
            (json.dumps(list(run_uuids)),),
        )
        return {row[0] for row in rows}

    def active_runs(self) -> list[ActiveRun]:
        """Runs to poll: tracked, not terminal, not stopped."""
        return [_active_run(row) for row in self._db.query(_SELECT_ACTIVE)]

    def snapshot(self) -> tuple[int, list[ActiveRun]]:
        """``(cursor, active runs)`` read together: start :meth:`changes_since` from ``cursor``."""
        with self._db.read() as conn:
            cursor = _current_change_seq(conn)
            runs = [_active_run(row) for row in conn.execute(_SELECT_ACTIVE)]
        return cursor, runs

    def changes_since(self, cursor: int) -> tuple[int, list[ActiveRun], list[str]]:
        """Registry changes after ``cursor``: ``(new cursor, (re)activated runs, untracked)``.

        The active list may repeat runs the caller already polls (for instance after a label
        or project change): treat it as an upsert. Runs that are tracked but terminal or
        stopped appear in neither list.
        """
        with self._db.read() as conn:
            current = _current_change_seq(conn)
            if current <= cursor:
                return current, [], []
            rows = conn.execute(
                "SELECT run_uuid, project_id, status, last_polled_at, next_poll_after, "
                "tracked, terminal, stopped FROM runs "
                "WHERE change_seq > ? AND change_seq <= ? ORDER BY change_seq",
                (cursor, current),
            ).fetchall()
        active = [_active_run(row) for row in rows if row[5] and not row[6] and not row[7]]
        untracked = [row[0] for row in rows if not row[5]]
        return current, active, untracked

    def record_polls(self, polled: Sequence[tuple[str, datetime]]) -> None:
        """Successful polls without news: stamp ``last_polled_at``, clear the error streak."""
        if not polled:
            return
        with self._db.write() as conn:
            conn.executemany(
                "UPDATE runs SET last_polled_at = ?, consecutive_errors = 0, "
                "next_poll_after = NULL WHERE run_uuid = ?",
                [(to_ts(at), uuid) for uuid, at in polled],
            )

    def record_error(
        self, run_uuid: str, *, consecutive_errors: int, next_poll_after: datetime | None
    ) -> None:
        """A failed poll: remember the streak and when to try again (survives restarts)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE runs SET consecutive_errors = ?, next_poll_after = ? WHERE run_uuid = ?",
                (
                    consecutive_errors,
                    None if next_poll_after is None else to_ts(next_poll_after),
                    run_uuid,
                ),
            )

    def labels_of(self, run_uuid: str) -> dict[str, str]:
        """The run's labels (also for an untracked run); ``{}`` if unknown."""
        rows = self._db.query("SELECT labels FROM runs WHERE run_uuid = ?", (run_uuid,))
        return load_labels(rows[0][0]) if rows else {}

    def count_by_status(self) -> dict[str | None, int]:
        """Tracked runs per last seen status (``None``: not polled yet).

        Read from ``run_counts``, which triggers keep in step with ``runs`` in every write
        transaction: a few rows whatever the size of the registry.
        """
        rows = self._db.query("SELECT status, runs FROM run_counts WHERE runs > 0")
        return {(status if status != "" else None): int(count) for status, count in rows}

    def stuck_candidates(self, *, after_seconds: float) -> list[TrackedRun]:
        """Active runs a poll saw still in their status ``after_seconds`` or more after the
        watcher first saw that status (``last_polled_at - status_since``), not yet reported
        stuck in it. Never "now - status_since": a poll cycle longer than the limit must not
        turn a status that was short, and over before the next poll, into a stuck one.
        """
        if after_seconds <= 0:
            return []
        return [
            tracked_run(row)
            for row in self._db.query(
                _SELECT_TRACKED + "AND terminal = 0 AND stopped = 0 AND status IS NOT NULL "
                "AND last_polled_at - status_since >= ? AND stuck_status IS NOT status",
                (after_seconds,),
            )
        ]
