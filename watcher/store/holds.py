"""Held deliveries: a failure's event is recorded at once, its outbox rows wait for details.

Why: the failure details (``data.failure``, :mod:`watcher.enrich`) cost API calls at a
budgeted rate, so under a burst they take seconds per run; the status must not wait for
them, and receivers must still get one event that carries them. So the status change, the
event and its outbox rows are recorded in the usual compare-and-set transaction
(:meth:`~watcher.store.recording.RecordingMixin.record_observation` with ``held_until``),
the rows *held*; once enrichment ends, :meth:`HoldsMixin.release_event` stores the enriched
body under the same event id and releases the rows in one transaction.

Invariants:
- A held row is ``pending`` with ``held_until`` set and ``next_attempt_at`` at
  :data:`~watcher.store.journal.HELD_NEXT_ATTEMPT`: listed in outbox order (so a later row of
  its run waits behind it) but never due, so no dispatcher sends it.
- A body is rewritten only while no delivery of it can have started: in the transaction
  that releases its held rows, or, for an event recorded without any delivery (no notifier
  routed: ``unrouted``), while it still has no outbox row. A release that finds nothing held
  changes nothing (a delivered row is deleted, so "no row" alone proves nothing), so a
  receiver never sees two bodies for one event id, whoever released first.
- Nothing held is lost: rows whose holder died (a crash, a kill) are released as they are by
  :meth:`HoldsMixin.release_held` at the daemon's start (only one daemon uses a state file).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime

from watcher.events import Event
from watcher.store.codec import encode_body
from watcher.store.db import StoreBase, to_ts


class HoldsMixin(StoreBase):
    def release_event(
        self, event_id: str, enriched: Event | None = None, *, unrouted: bool = False
    ) -> int:
        """Release the held rows of ``event_id``, storing ``enriched`` as its body first.

        ``enriched`` must have the same id (its details added). Returns how many rows were
        released; 0 when none was held (already released, or pruned) and then the body is
        kept, unless ``unrouted`` (the event was recorded without deliveries) and it still
        has no outbox row (see the module invariants).
        """
        if enriched is not None and enriched.id != event_id:
            raise ValueError("the enriched event must keep the event's id")
        now = self._now()
        with self._db.write() as conn:
            row = conn.execute("SELECT seq FROM events WHERE id = ?", (event_id,)).fetchone()
            if row is None:
                return 0
            seq = int(row[0])
            released = conn.execute(
                "UPDATE outbox SET held_until = NULL, next_attempt_at = ? "
                "WHERE event_seq = ? AND held_until IS NOT NULL",
                (now, seq),
            ).rowcount
            if enriched is not None:
                rewrite = released > 0 or (
                    unrouted
                    and conn.execute("SELECT 1 FROM outbox WHERE event_seq = ?", (seq,)).fetchone()
                    is None
                )
                if rewrite:
                    conn.execute(
                        "UPDATE events SET body = ? WHERE seq = ?",
                        (encode_body(enriched.to_json()), seq),
                    )
        return released

    def release_held(self, *, held_before: datetime | None = None) -> int:
        """Release held rows as they are (their holder is gone); returns how many.

        ``held_before``: only rows whose ``held_until`` is earlier; ``None``: every one.
        """
        now = self._now()
        limit = float("inf") if held_before is None else to_ts(held_before)
        with self._db.write() as conn:
            return conn.execute(
                "UPDATE outbox SET held_until = NULL, next_attempt_at = ? "
                "WHERE held_until IS NOT NULL AND held_until < ?",
                (now, limit),
            ).rowcount

    def held_runs(self, run_uuids: Collection[str]) -> set[str]:
        """Those of ``run_uuids`` with an event whose deliveries are still held."""
        if not run_uuids:
            return set()
        rows = self._db.query(
            "SELECT DISTINCT e.run_uuid FROM outbox o JOIN events e ON e.seq = o.event_seq "
            "WHERE o.held_until IS NOT NULL "
            "AND e.run_uuid IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(set(run_uuids))),),
        )
        return {str(uuid) for (uuid,) in rows}
