"""The event log and retention in PostgreSQL: the SQL of :mod:`watcher.store.journal` and
:mod:`watcher.store.recording`.

Same invariants as SQLite's: a new status, its event and one outbox row per notifier commit
in one transaction, compare-and-set on the stored status (here under the run row's lock,
``FOR UPDATE``, since PostgreSQL runs writers side by side where SQLite runs one at a time);
an event id is stored once; retention steps are bounded and never drop an owed delivery.

Retention deletes settled outbox rows first, then the events left without rows, then the runs
left without events, where SQLite relies on the cascade. Why: PostgreSQL runs writers side by
side, so a dead letter another connection redelivers (back to ``pending``) after the step
chose its runs is re-checked under that row's lock by the first ``DELETE`` and kept, and its
event and run with it; an event appended meanwhile keeps its run too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import takewhile

import asyncpg

from watcher.events import STUCK, Event, RunState
from watcher.store.codec import decode_body, encode_body
from watcher.store.db import dump_json, to_ts
from watcher.store.journal import OWES_NOTHING, PruneStep, notifier_names
from watcher.store.pg.base import NO_LIMIT, PgBase, command_count


async def append_event(
    conn: asyncpg.Connection,
    event: Event,
    notifiers: list[str],
    now: float,
    held_until: float | None = None,
) -> int | None:
    """Store ``event`` and one pending delivery per notifier; ``None`` if the id is known."""
    seq = await conn.fetchval(
        "INSERT INTO events (id, type, run_uuid, recorded_at, body, held_until) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING RETURNING seq",
        event.id,
        event.type,
        event.run_uuid,
        now,
        encode_body(event.to_json()),
        held_until,
    )
    if seq is None:
        return None
    if notifiers:
        await conn.execute(
            "INSERT INTO outbox (event_seq, notifier, created_at, next_attempt_at) "
            "SELECT $1, n, $3, $3 FROM unnest($2::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i",
            seq,
            notifiers,
            now,
        )
    return int(seq)


class RecordingMixin(PgBase):
    async def record_observation(
        self,
        state: RunState,
        event: Event | None,
        *,
        notifiers: Sequence[str],
        held_until: datetime | None = None,
    ) -> bool:
        names = notifier_names(notifiers)
        if event is not None and (event.run_uuid != state.run_uuid or event.status != state.status):
            raise ValueError("the event does not describe this observation")
        observed = to_ts(state.observed_at)
        metadata = dump_json(state.metadata)
        expected = event.previous_status if event is not None else state.status
        async with self._write() as conn:
            row = await conn.fetchrow(
                "SELECT status FROM runs WHERE run_uuid = $1 AND tracked FOR UPDATE",
                state.run_uuid,
            )
            if row is None or row[0] != expected:
                return False
            if event is None:
                await conn.execute(
                    "UPDATE runs SET metadata = $1::json, last_polled_at = $2, "
                    "consecutive_errors = 0, next_poll_after = NULL WHERE run_uuid = $3",
                    metadata,
                    observed,
                    state.run_uuid,
                )
                return True
            await conn.execute(
                "UPDATE runs SET status = $1, terminal = $2, metadata = $3::json, "
                "status_since = $4, last_polled_at = $4, consecutive_errors = 0, "
                "next_poll_after = NULL, stuck_status = NULL WHERE run_uuid = $5",
                state.status,
                bool(event.terminal),
                None if event.terminal else metadata,
                observed,
                state.run_uuid,
            )
            held = None if held_until is None else to_ts(held_until)
            if await append_event(conn, event, names, self._now(), held) is None:
                raise ValueError(f"event {event.id} is already recorded")
        return True

    async def record_not_found(
        self, run_uuid: str, event: Event, *, notifiers: Sequence[str]
    ) -> bool:
        names = notifier_names(notifiers)
        async with self._write() as conn:
            status = await conn.execute(
                "UPDATE runs SET stopped = true, stopped_at = $1, consecutive_errors = 0, "
                "next_poll_after = NULL WHERE run_uuid = $2 AND tracked AND NOT stopped",
                self._now(),
                run_uuid,
            )
            if command_count(status) != 1:
                return False
            if await append_event(conn, event, names, self._now()) is None:
                raise ValueError(f"event {event.id} is already recorded")
        return True

    async def record_event(self, event: Event, *, notifiers: Sequence[str]) -> bool:
        names = notifier_names(notifiers)
        async with self._write() as conn:
            if event.type == STUCK:
                status = await conn.execute(
                    "UPDATE runs SET stuck_status = status WHERE run_uuid = $1 AND tracked "
                    "AND status = $2 AND stuck_status IS DISTINCT FROM status",
                    event.run_uuid,
                    event.status,
                )
                if command_count(status) != 1:
                    return False
            if await append_event(conn, event, names, self._now()) is None:
                if event.type == STUCK:
                    raise ValueError(f"event {event.id} is already recorded")
                return False
        return True


class JournalMixin(PgBase):
    async def event_log(
        self,
        *,
        limit: int = 100,
        run_uuid: str | None = None,
        before_seq: int | None = None,
        event_type: str | None = None,
    ) -> list[tuple[int, Event]]:
        params: list[object] = [NO_LIMIT if before_seq is None else before_seq]
        sql = "SELECT seq, body FROM events WHERE seq < $1"
        if run_uuid is not None:
            params.append(run_uuid)
            sql += f" AND run_uuid = ${len(params)}"
        if event_type is not None:
            params.append(event_type)
            sql += f" AND type = ${len(params)}"
        params.append(max(0, limit))
        rows = await self._fetch(sql + f" ORDER BY seq DESC LIMIT ${len(params)}", *params)
        return [(int(seq), Event.from_json(decode_body(bytes(body)))) for seq, body in rows]

    async def prune_events(self, *, before: datetime) -> int:
        async with self._write() as conn:
            status = await conn.execute(
                "DELETE FROM events WHERE recorded_at < $1 "
                "AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.event_seq = events.seq "
                "AND outbox.state IN ('pending', 'dead'))",
                to_ts(before),
            )
        return command_count(status)

    async def prune_finished_runs(self, *, finished_before: datetime, limit: int) -> PruneStep:
        cutoff = to_ts(finished_before)
        async with self._write() as conn:
            uuids = [
                row[0]
                for row in await conn.fetch(
                    "SELECT run_uuid FROM runs WHERE terminal AND status_since < $1 "  # noqa: S608 - literals
                    f"AND {OWES_NOTHING} LIMIT $2",
                    cutoff,
                    limit,
                )
            ]
            uuids += [
                row[0]
                for row in await conn.fetch(
                    "SELECT run_uuid FROM runs WHERE stopped AND NOT terminal "  # noqa: S608 - literals
                    f"AND stopped_at < $1 AND {OWES_NOTHING} LIMIT $2",
                    cutoff,
                    max(0, limit - len(uuids)),
                )
            ]
            if not uuids:
                return PruneStep(runs=0, events=0, more=False)
            events = await _delete_settled(conn, "e.run_uuid = ANY($1::text[])", uuids)
            runs = command_count(
                await conn.execute(
                    "DELETE FROM runs WHERE run_uuid = ANY($1::text[]) "
                    "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.run_uuid = runs.run_uuid)",
                    uuids,
                )
            )
        return PruneStep(runs=runs, events=events, more=len(uuids) >= limit)

    async def prune_orphan_events(
        self, *, recorded_before: datetime, after_seq: int, limit: int
    ) -> tuple[int, int | None]:
        cutoff = to_ts(recorded_before)
        async with self._write() as conn:
            rows = await conn.fetch(
                "SELECT seq, recorded_at FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                after_seq,
                limit,
            )
            old = [int(seq) for seq, _ in takewhile(lambda row: row[1] < cutoff, rows)]
            deleted = 0
            if old:
                deleted = await _delete_settled(
                    conn,
                    "e.seq = ANY($1::bigint[]) "
                    "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_uuid = e.run_uuid)",
                    old,
                )
        if len(old) < len(rows) or len(rows) < limit:
            return deleted, None
        return deleted, old[-1]

    async def release_free_pages(self, max_pages: int) -> int:
        """Nothing to do: PostgreSQL's autovacuum reuses and returns space."""
        return 0


async def _delete_settled(conn: asyncpg.Connection, chosen: str, arg: Sequence[object]) -> int:
    """Delete the events ``chosen`` (a condition on ``e``, its value ``$1``) that owe no
    delivery, settled rows first (see the module docstring); returns how many events."""
    await conn.execute(
        "DELETE FROM outbox o USING events e WHERE o.event_seq = e.seq "  # noqa: S608 - literals
        f"AND {chosen} AND o.state <> 'pending' AND NOT EXISTS "
        "(SELECT 1 FROM outbox p WHERE p.event_seq = e.seq AND p.state = 'pending')",
        arg,
    )
    return command_count(
        await conn.execute(
            f"DELETE FROM events e WHERE {chosen} "  # noqa: S608 - literals
            "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_seq = e.seq)",
            arg,
        )
    )
