"""Held deliveries: a failure's event is recorded at once, its outbox rows wait for details.

Why: the failure details (``data.failure``, :mod:`watcher.enrich`) cost API calls at a
budgeted rate, so under a burst they take seconds per run; the status must not wait for
them, and receivers must still get one event that carries them. So the status change, the
event and its outbox rows are recorded in the usual compare-and-set transaction
(:meth:`~watcher.store.recording.RecordingMixin.record_observation` with ``held_until``),
the rows *held*; once enrichment ends, :meth:`HoldsMixin.release_event` stores the enriched
body under the same event id and releases the rows in one transaction.

Invariants:
- A held event has ``held_until`` set (the time its lookup should end by); its outbox rows
  are listed in outbox order but with a ``next_attempt_at`` that is never due
  (:data:`~watcher.store.outbox.HELD_NEXT_ATTEMPT`), so no dispatcher sends them and a later
  row of its run waits behind them.
- A body is rewritten only while its event is held, in the transaction that releases it: no
  delivery of it can have started, and once released it never changes again. A release
  that finds the event no longer held changes nothing, so a receiver never sees two bodies
  for one event id, whoever released first.
- Nothing held is lost: a process that dies while holding leaves the events held; the next
  start finds them (:meth:`HoldsMixin.held_events`) and completes or releases them (only
  one daemon uses a state file, so every held event it finds at start is an orphan).
"""

from __future__ import annotations

import json
from collections.abc import Collection

from watcher.events import Event
from watcher.store.codec import decode_body, encode_body
from watcher.store.db import StoreBase


class HoldsMixin(StoreBase):
    def release_event(self, event_id: str, enriched: Event | None = None) -> bool:
        """Release the held event ``event_id``, storing ``enriched`` as its body first.

        ``enriched`` must have the same id (its details added). Returns whether the event
        was held; if not (already released, or pruned) nothing changes.
        """
        if enriched is not None and enriched.id != event_id:
            raise ValueError("the enriched event must keep the event's id")
        body = None if enriched is None else encode_body(enriched.to_json())
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE events SET held_until = NULL, body = coalesce(?, body) "
                "WHERE id = ? AND held_until IS NOT NULL",
                (body, event_id),
            )
            return cursor.rowcount == 1

    def held_events(self, *, limit: int = 10_000) -> list[Event]:
        """Held events, oldest first."""
        rows = self._db.query(
            "SELECT body FROM events WHERE held_until IS NOT NULL ORDER BY seq LIMIT ?",
            (max(0, limit),),
        )
        return [Event.from_json(decode_body(body)) for (body,) in rows]

    def release_held(self) -> int:
        """Release every held event as it is; returns how many."""
        with self._db.write() as conn:
            return conn.execute(
                "UPDATE events SET held_until = NULL WHERE held_until IS NOT NULL"
            ).rowcount

    def held_runs(self, run_uuids: Collection[str]) -> set[str]:
        """Those of ``run_uuids`` with an event still held."""
        if not run_uuids:
            return set()
        rows = self._db.query(
            "SELECT DISTINCT run_uuid FROM events WHERE held_until IS NOT NULL "
            "AND run_uuid IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(set(run_uuids))),),
        )
        return {str(uuid) for (uuid,) in rows}
