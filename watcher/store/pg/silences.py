"""Silences in PostgreSQL: the SQL of :mod:`watcher.store.silences`.

Same invariants: every write bumps ``silence_seq`` in its transaction; expiring sets the end
(and an unstarted start) to now; ended silences are kept 7 days, then deleted by the next
write, and never read past that; ids are never reused (an identity column). Silences are
the user's writes (any replica, not fenced).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from watcher.delivery.silencing import KEEP_ENDED, Silence
from watcher.store.db import dump_json, to_ts
from watcher.store.pg.base import PgBase, command_count
from watcher.store.silences import silence_row

_SELECT = "SELECT id, matchers, notifiers, starts_at, ends_at, comment, created_at FROM silences "


async def _bump(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'silence_seq'")


async def _prune(conn: asyncpg.Connection, now: float) -> None:
    status = await conn.execute(
        "DELETE FROM silences WHERE ends_at < $1", now - KEEP_ENDED.total_seconds()
    )
    if command_count(status):
        await _bump(conn)


class SilencesMixin(PgBase):
    async def add_silence(
        self,
        *,
        matchers: Mapping[str, str],
        ends_at: datetime,
        notifiers: Sequence[str] = (),
        starts_at: datetime | None = None,
        comment: str = "",
    ) -> Silence:
        now = self._now()
        start = now if starts_at is None else to_ts(starts_at)
        async with self._write(fenced=False) as conn:
            await _prune(conn, now)
            row = await conn.fetchrow(
                "INSERT INTO silences (matchers, notifiers, starts_at, ends_at, comment, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) "
                "RETURNING id, matchers, notifiers, starts_at, ends_at, comment, created_at",
                dump_json(dict(matchers)),
                json.dumps(sorted(set(notifiers)), ensure_ascii=False),
                start,
                to_ts(ends_at),
                comment,
                now,
            )
            await _bump(conn)
        assert row is not None
        return silence_row(row)

    async def expire_silence(self, silence_id: int) -> Silence | None:
        now = self._now()
        async with self._write(fenced=False) as conn:
            await _prune(conn, now)
            await conn.execute(
                "UPDATE silences SET ends_at = $1, starts_at = least(starts_at, $1), "
                "updated_at = $1 WHERE id = $2 AND ends_at > $1",
                now,
                silence_id,
            )
            await _bump(conn)
            row = await conn.fetchrow(_SELECT + "WHERE id = $1", silence_id)
        return None if row is None else silence_row(row)

    async def get_silence(self, silence_id: int) -> Silence | None:
        rows = await self._fetch(
            _SELECT + "WHERE id = $1 AND ends_at >= $2",
            silence_id,
            self._now() - KEEP_ENDED.total_seconds(),
        )
        return silence_row(rows[0]) if rows else None

    async def silences(self) -> list[Silence]:
        rows = await self._fetch(
            _SELECT + "WHERE ends_at >= $1 ORDER BY id", self._now() - KEEP_ENDED.total_seconds()
        )
        return [silence_row(row) for row in rows]

    async def current_silences(self) -> list[Silence]:
        rows = await self._fetch(_SELECT + "WHERE ends_at > $1 ORDER BY id", self._now())
        return [silence_row(row) for row in rows]

    async def silence_version(self) -> int:
        rows = await self._fetch("SELECT value FROM counters WHERE name = 'silence_seq'")
        return int(rows[0][0]) if rows else 0
