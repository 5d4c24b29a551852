"""Discovery, run groups and status references in PostgreSQL: the SQL of
:mod:`watcher.store.discovery`, :mod:`watcher.store.groups` and
:mod:`watcher.store.references`.

Same invariants: discovery inserts only runs the registry has never seen, in one
transaction (under the ``change_seq`` row lock, so two daemons' passes cannot both insert
a run); a baseline gives a new run its status without an event. Group reads use the
``runs_by_group`` expression index, spelled ``labels ->> 'run_group'`` exactly as the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from watcher.events import NOT_FOUND, RUN_GROUP_LABEL, STATUS_CHANGED
from watcher.store.db import dump_json, to_ts
from watcher.store.discovery import distinct_runs
from watcher.store.groups import GroupMember, group_member
from watcher.store.models import DiscoveredRun
from watcher.store.pg.base import PgBase, lock_change_seq, next_change_seq
from watcher.store.references import references

assert RUN_GROUP_LABEL == "run_group"  # spelled literally below and in the index

_UPDATE_TIME = (
    "CASE WHEN strpos(metadata::text, '\"UpdateTime\"') > 0 "
    "AND metadata ->> 'Status' = status THEN metadata ->> 'UpdateTime' END"
)
_REFERENCES = (
    f"SELECT run_uuid, status_since, metadata IS NOT NULL, {_UPDATE_TIME} FROM runs "  # noqa: S608 - literal
    "WHERE tracked AND NOT terminal AND NOT stopped AND status IS NOT NULL"
)


class DiscoveryMixin(PgBase):
    async def track_discovered(
        self, runs: Sequence[DiscoveredRun], *, baseline: bool, terminal: frozenset[str]
    ) -> list[str]:
        found = distinct_runs(runs)
        if not found:
            return []
        now = self._now()
        async with self._write() as conn:
            await lock_change_seq(conn)
            known = {
                row[0]
                for row in await conn.fetch(
                    "SELECT run_uuid FROM runs WHERE run_uuid = ANY($1::text[])", list(found)
                )
            }
            new = [run for uuid, run in found.items() if uuid not in known]
            if not new:
                return []
            seq = await next_change_seq(conn)
            columns: list[list[Any]] = [[], [], [], [], []]
            for run in new:
                columns[0].append(run.run_uuid)
                columns[1].append(run.project_id)
                columns[2].append(dump_json({str(k): str(v) for k, v in run.labels.items()}))
                columns[3].append(run.status if baseline else None)
                columns[4].append(baseline and run.status in terminal)
            seen_at = now if baseline else None
            await conn.execute(
                "INSERT INTO runs (run_uuid, project_id, labels, tracked_at, change_seq, "
                "status, terminal, status_since, last_polled_at) "
                "SELECT u, p, l::json, $6, $7, s, t, $8, $8 FROM unnest($1::text[], "
                "$2::text[], $3::text[], $4::text[], $5::boolean[]) WITH ORDINALITY "
                "AS x(u, p, l, s, t, n) ORDER BY n",
                *columns,
                now,
                seq,
                seen_at,
            )
        return [run.run_uuid for run in new]

    async def discovery_done(self, watch_key: str) -> bool:
        rows = await self._fetch("SELECT 1 FROM discovery WHERE watch_key = $1", watch_key)
        return bool(rows)

    async def mark_discovery_done(self, watch_key: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO discovery (watch_key, first_pass_at) VALUES ($1, $2) "
                "ON CONFLICT (watch_key) DO NOTHING",
                watch_key,
                self._now(),
            )


class GroupsMixin(PgBase):
    async def group_members(self, run_group: str) -> list[GroupMember]:
        rows = await self._fetch(
            "SELECT run_uuid, project_id, status, terminal, stopped, labels::text FROM runs "
            "WHERE tracked AND labels ->> 'run_group' = $1 ORDER BY tracked_at, id",
            run_group,
        )
        return [group_member(row) for row in rows]

    async def has_event(self, event_id: str) -> bool:
        return bool(await self._fetch("SELECT 1 FROM events WHERE id = $1", event_id))

    async def groups_finished_since(self, since: datetime) -> list[str]:
        rows = await self._fetch(
            "SELECT DISTINCT r.labels ->> 'run_group' FROM runs r "
            "WHERE r.tracked AND r.terminal AND r.status_since >= $1 "
            "AND r.labels ->> 'run_group' IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM events e WHERE e.run_uuid = r.run_uuid "
            "AND e.type IN ($2, $3))",
            to_ts(since),
            STATUS_CHANGED,
            NOT_FOUND,
        )
        return sorted(str(row[0]) for row in rows if row[0] not in (None, ""))

    async def status_references(
        self, run_uuids: Sequence[str] | None = None
    ) -> dict[str, tuple[float | None, float | None]]:
        if run_uuids is None:
            rows = await self._fetch(_REFERENCES)
        else:
            rows = await self._fetch(
                _REFERENCES + " AND run_uuid = ANY($1::text[])", list(run_uuids)
            )
        return references(rows)
