"""The event log: appending events with their outbox rows, reading and pruning the history.

Invariants:
- :func:`append_event` is only called inside a write transaction that also carries the state
  change the event describes: the event, its deliveries and the new state commit together.
- An event id is stored at most once (``UNIQUE``); appending a known id is a no-op.
- ``body`` is ``Event.to_json()``: what is read back is byte-for-byte what notifiers get.
- Pruning never removes an event that still has an outbox row (pending or dead letter).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime

from watcher.events import Event
from watcher.store.db import StoreBase, to_ts

_NO_LIMIT = 2**63 - 1  # above any seq: "no upper bound" without composing SQL


def notifier_names(notifiers: Iterable[str]) -> list[str]:
    """Distinct names in order; two routes naming one notifier still mean one delivery."""
    names = list(dict.fromkeys(notifiers))
    if any(not isinstance(name, str) or not name for name in names):
        raise ValueError("notifier names must be non-empty strings")
    return names


def insert_deliveries(
    conn: sqlite3.Connection, event_seq: int, notifiers: list[str], now: float
) -> None:
    conn.executemany(
        "INSERT INTO outbox (event_seq, notifier, created_at, next_attempt_at) VALUES (?, ?, ?, ?)",
        [(event_seq, name, now, now) for name in notifiers],
    )


def append_event(
    conn: sqlite3.Connection, event: Event, notifiers: list[str], now: float
) -> int | None:
    """Store ``event`` and one pending delivery per notifier; ``None`` if the id is known."""
    cursor = conn.execute(
        "INSERT INTO events (id, type, run_uuid, recorded_at, body) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (event.id, event.type, event.run_uuid, now, event.to_json()),
    )
    if cursor.rowcount != 1 or cursor.lastrowid is None:
        return None
    insert_deliveries(conn, cursor.lastrowid, notifiers, now)
    return cursor.lastrowid


class JournalMixin(StoreBase):
    def event_log(
        self,
        *,
        limit: int = 100,
        run_uuid: str | None = None,
        before_seq: int | None = None,
        event_type: str | None = None,
    ) -> list[tuple[int, Event]]:
        """``(seq, event)`` newest first; pass the last ``seq`` as ``before_seq`` to page on.

        ``run_uuid`` reads the ``events_by_run`` index; ``event_type`` filters as it reads.
        """
        before = _NO_LIMIT if before_seq is None else before_seq
        # Literal fragments, one per filter given; every value is bound.
        sql = "SELECT seq, body FROM events WHERE seq < ?"
        params: list[object] = [before]
        if run_uuid is not None:
            sql += " AND run_uuid = ?"
            params.append(run_uuid)
        if event_type is not None:
            sql += " AND type = ?"
            params.append(event_type)
        rows = self._db.query(sql + " ORDER BY seq DESC LIMIT ?", [*params, max(0, limit)])
        return [(int(seq), Event.from_json(body)) for seq, body in rows]

    def events(
        self,
        *,
        limit: int = 100,
        run_uuid: str | None = None,
        before_seq: int | None = None,
        event_type: str | None = None,
    ) -> list[Event]:
        """Events newest first (see :meth:`event_log` for paging and filters)."""
        found = self.event_log(
            limit=limit, run_uuid=run_uuid, before_seq=before_seq, event_type=event_type
        )
        return [e for _, e in found]

    def prune_events(self, *, before: datetime) -> int:
        """Delete events recorded before ``before`` that have no outbox row; returns how many."""
        with self._db.write() as conn:
            cursor = conn.execute(
                "DELETE FROM events WHERE recorded_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.event_seq = events.seq)",
                (to_ts(before),),
            )
            return cursor.rowcount
