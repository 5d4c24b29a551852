"""The outbox, its history, redelivery and held deliveries in PostgreSQL: the SQL of
:mod:`watcher.store.outbox`, :mod:`watcher.store.history` and :mod:`watcher.store.holds`.

Same invariants as SQLite's: only ``pending`` rows change when marked; settled rows stay as
the run's history; redelivery puts ``dead`` rows back as they were recorded (same id, same
event) and counts them under ``redelivered:NOTIFIER`` in the same transaction; a held
event's rows are listed with a never-due ``next_attempt_at``; a body is rewritten only in
the transaction that releases its held event. Marks and releases are the daemon's writes
(fenced); redelivery is the user's (not fenced).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from datetime import datetime

import asyncpg

from watcher.events import Event
from watcher.store.codec import decode_body, encode_body
from watcher.store.db import to_ts
from watcher.store.history import (
    REDELIVERED_PREFIX,
    RUN_DEAD_LETTERS,
    RUN_HISTORY_DELIVERIES,
    RUN_HISTORY_EVENTS,
    DeadLetter,
    HistoryEntry,
    Redelivery,
    dead_letter_row,
    dead_letters_query,
    history_entries,
    run_dead_letters,
)
from watcher.store.models import Delivery
from watcher.store.outbox import cut_error, delivery_row
from watcher.store.pg.base import NO_LIMIT, PgBase, command_count

_SELECT = (
    "SELECT o.id, e.body, o.notifier, o.attempts, o.created_at, "
    "CASE WHEN e.held_until IS NULL THEN o.next_attempt_at ELSE 253402300799.0 END, "
    "o.last_error FROM outbox o JOIN events e ON e.seq = o.event_seq "
)

_RUN_DEAD_LETTERS = RUN_DEAD_LETTERS.format(p="$1")  # one round trip
_RUN_HISTORY_EVENTS = RUN_HISTORY_EVENTS.format(p="$1")
_RUN_HISTORY_DELIVERIES = RUN_HISTORY_DELIVERIES.format(p="$1")


class OutboxMixin(PgBase):
    async def pending_deliveries(
        self, notifier: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        if notifier is None:
            rows = await self._fetch(
                _SELECT + "WHERE o.state = 'pending' ORDER BY o.id LIMIT $1", max(0, limit)
            )
        else:
            rows = await self._fetch(
                _SELECT + "WHERE o.state = 'pending' AND o.notifier = $1 ORDER BY o.id LIMIT $2",
                notifier,
                max(0, limit),
            )
        return [delivery_row(row) for row in rows]

    async def mark_delivered(self, delivery_id: int) -> None:
        await self._write_one(
            "UPDATE outbox SET state = 'delivered', settled_at = $1, attempts = attempts + 1 "
            "FROM fence WHERE outbox.id = $2 AND outbox.state = 'pending'",
            self._now(),
            delivery_id,
        )

    async def mark_silenced(self, delivery_id: int, reason: str) -> None:
        await self._write_one(
            "UPDATE outbox SET state = 'silenced', settled_at = $1, last_error = $2 "
            "FROM fence WHERE outbox.id = $3 AND outbox.state = 'pending'",
            self._now(),
            cut_error(reason),
            delivery_id,
        )

    async def mark_retry(
        self, delivery_id: int, *, attempts: int, next_attempt_at: datetime, error: str
    ) -> None:
        await self._write_one(
            "UPDATE outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 "
            "FROM fence WHERE outbox.id = $4 AND outbox.state = 'pending'",
            attempts,
            to_ts(next_attempt_at),
            cut_error(error),
            delivery_id,
        )

    async def mark_dead(self, delivery_id: int, *, error: str, attempts: int | None = None) -> None:
        await self._write_one(
            "UPDATE outbox SET state = 'dead', dead_at = $1, settled_at = $1, "
            "last_error = $2, attempts = coalesce($3, attempts) "
            "FROM fence WHERE outbox.id = $4 AND outbox.state = 'pending'",
            self._now(),
            cut_error(error),
            attempts,
            delivery_id,
        )

    async def dead_letters(self, *, limit: int = 100) -> list[Delivery]:
        rows = await self._fetch(
            _SELECT + "WHERE o.state = 'dead' ORDER BY o.id DESC LIMIT $1", max(0, limit)
        )
        return [delivery_row(row) for row in rows]

    async def outbox_stats(self, *, now: datetime) -> tuple[int, float]:
        rows = await self._fetch(
            "SELECT count(*), min(created_at) FROM outbox WHERE state = 'pending'"
        )
        count, oldest = rows[0]
        if not count or oldest is None:
            return 0, 0.0
        return int(count), max(0.0, to_ts(now) - float(oldest))

    async def dead_letter_removed_notifiers(self, *, known_notifiers: set[str]) -> list[int]:
        now = self._now()
        async with self._write() as conn:
            names = [
                row[0]
                for row in await conn.fetch(
                    "SELECT DISTINCT notifier FROM outbox WHERE state = 'pending' "
                    "AND NOT (notifier = ANY($1::text[]))",
                    sorted(known_notifiers),
                )
            ]
            if not names:
                return []
            rows = await conn.fetch(
                "UPDATE outbox SET state = 'dead', dead_at = $1, settled_at = $1, "
                "last_error = t.m FROM unnest($2::text[], $3::text[]) AS t(n, m) "
                "WHERE outbox.state = 'pending' AND outbox.notifier = t.n RETURNING outbox.id",
                now,
                names,
                [f"notifier {name!r} is no longer configured" for name in names],
            )
        return sorted(int(row[0]) for row in rows)

    async def outbox_version(self) -> Hashable:
        """The ``outbox_seq`` counter (bumped by triggers whenever a row may have become due:
        :mod:`watcher.store.outbox_changes`) and the server's start time: after a failover
        or a restart the counter may be back at a value seen before (commits the old
        primary had not replicated), and the start time tells the two apart. One
        primary-key lookup. Without the row (a database edited by hand) every answer is new,
        so the dispatcher re-reads every interval as it used to."""
        rows = await self._fetch(
            "SELECT value, pg_postmaster_start_time() FROM counters WHERE name = 'outbox_seq'"
        )
        if not rows:
            return object()
        return int(rows[0][0]), rows[0][1]


class HistoryMixin(PgBase):
    async def run_history(self, run_uuid: str) -> list[HistoryEntry] | None:
        async with self._snapshot() as conn:
            if await conn.fetchval("SELECT 1 FROM runs WHERE run_uuid = $1", run_uuid) is None:
                return None
            events = await conn.fetch(_RUN_HISTORY_EVENTS, run_uuid)
            rows = await conn.fetch(_RUN_HISTORY_DELIVERIES, run_uuid)
        return history_entries(events, rows)

    async def list_dead_letters(
        self, *, notifier: str | None = None, limit: int = 1000, before_id: int | None = None
    ) -> list[DeadLetter]:
        sql = dead_letters_query(notifier=notifier is not None, placeholder="${n}")
        below = NO_LIMIT if before_id is None else before_id
        params = [below] if notifier is None else [below, notifier]
        rows = await self._fetch(sql, *params, max(0, limit))
        return [dead_letter_row(row) for row in rows]

    async def run_dead_letters(self, run_uuid: str) -> list[DeadLetter] | None:
        return run_dead_letters(await self._fetch(_RUN_DEAD_LETTERS, run_uuid))

    async def redeliver(self, which: Redelivery) -> list[int]:
        now = self._now()
        async with self._write(fenced=False) as conn:
            ids = await _dead_ids(conn, which)
            if not ids:
                return []
            await conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, last_error = NULL, "
                "dead_at = NULL, settled_at = NULL, created_at = $1, next_attempt_at = $1 "
                "WHERE state = 'dead' AND id = ANY($2::bigint[])",
                now,
                ids,
            )
            await conn.execute(
                "INSERT INTO counters (name, value) "
                "SELECT $1 || notifier, count(*) FROM outbox WHERE id = ANY($2::bigint[]) "
                "GROUP BY notifier ORDER BY 1 "
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + EXCLUDED.value",
                REDELIVERED_PREFIX,
                ids,
            )
        return ids


async def _dead_ids(conn: asyncpg.Connection, which: Redelivery) -> list[int]:
    """The chosen dead rows, locked until the transaction ends."""
    if which.all:
        found = await conn.fetch(
            "SELECT id, notifier FROM outbox WHERE state = 'dead' ORDER BY id FOR UPDATE"
        )
    elif which.notifier is not None:
        found = await conn.fetch(
            "SELECT id, notifier FROM outbox WHERE state = 'dead' AND notifier = $1 "
            "ORDER BY id FOR UPDATE",
            which.notifier,
        )
    else:
        found = await conn.fetch(
            "SELECT id, notifier FROM outbox WHERE state = 'dead' AND id = ANY($1::bigint[]) "
            "ORDER BY id FOR UPDATE",
            sorted(set(which.ids)),
        )
    configured = which.configured
    return [int(row[0]) for row in found if configured is None or row[1] in configured]


class HoldsMixin(PgBase):
    async def release_event(self, event_id: str, enriched: Event | None = None) -> bool:
        if enriched is not None and enriched.id != event_id:
            raise ValueError("the enriched event must keep the event's id")
        body = None if enriched is None else encode_body(enriched.to_json())
        async with self._write() as conn:
            status = await conn.execute(
                "UPDATE events SET held_until = NULL, body = coalesce($1, body) "
                "WHERE id = $2 AND held_until IS NOT NULL",
                body,
                event_id,
            )
        return command_count(status) == 1

    async def held_events(self, *, limit: int = 10_000) -> list[Event]:
        rows = await self._fetch(
            "SELECT body FROM events WHERE held_until IS NOT NULL ORDER BY seq LIMIT $1",
            max(0, limit),
        )
        return [Event.from_json(decode_body(bytes(row[0]))) for row in rows]

    async def release_held(self) -> int:
        async with self._write() as conn:
            status = await conn.execute(
                "UPDATE events SET held_until = NULL WHERE held_until IS NOT NULL"
            )
        return command_count(status)

    async def held_runs(self, run_uuids: Collection[str]) -> set[str]:
        if not run_uuids:
            return set()
        rows = await self._fetch(
            "SELECT DISTINCT run_uuid FROM events WHERE held_until IS NOT NULL "
            "AND run_uuid = ANY($1::text[])",
            sorted(set(run_uuids)),
        )
        return {str(row[0]) for row in rows}
