"""The outbox: deliveries still owed to notifiers, for at-least-once delivery.

Rows are created by :mod:`watcher.store.journal` together with their event. The dispatcher
reads due rows, sends, then marks each one delivered, for retry (new ``next_attempt_at``) or
dead (listable, and re-queued by :mod:`watcher.store.history`); a silence marks a row
silenced instead of sending it. Settled rows (delivered, dead, silenced) stay: they are the
run's delivery history (``history``) until retention removes the run. Ordering is by outbox
``id``, which follows event order, so a dispatcher can keep per-(run, notifier) order.

Invariants:
- Only ``pending`` rows change; marking a row that is already settled or gone is a no-op, so a
  dispatcher racing a reload (:meth:`OutboxMixin.dead_letter_removed_notifiers`) cannot
  resurrect a row.
- Error texts are stored as given, cut to :data:`MAX_ERROR_CHARS`. Callers redact them: the
  store cannot know what a secret looks like.
"""

from __future__ import annotations

from datetime import datetime

from watcher.events import Event
from watcher.store.codec import decode_body
from watcher.store.db import StoreBase, from_ts, to_ts
from watcher.store.models import Delivery, Row

MAX_ERROR_CHARS = 2000

# A row of a held event (watcher.store.holds) is listed with this next_attempt_at
# (9999-12-31T23:59:59Z): never due, still in outbox order, so a dispatcher neither sends it
# nor lets a later row of its run overtake it.
HELD_NEXT_ATTEMPT = 253402300799.0

# Every query below is this literal plus a literal tail; values are always bound.
_SELECT = (
    "SELECT o.id, e.body, o.notifier, o.attempts, o.created_at, "
    "CASE WHEN e.held_until IS NULL THEN o.next_attempt_at ELSE 253402300799.0 END, "
    "o.last_error FROM outbox o JOIN events e ON e.seq = o.event_seq "
)


def delivery_row(row: Row) -> Delivery:
    """A delivery from :data:`_SELECT`'s columns (PostgreSQL's lists the same)."""
    return Delivery(
        id=int(row[0]),
        event=Event.from_json(decode_body(row[1])),
        notifier=row[2],
        attempts=int(row[3]),
        created_at=from_ts(row[4]),
        next_attempt_at=from_ts(row[5]),
        last_error=row[6],
    )


def cut_error(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"


class OutboxMixin(StoreBase):
    def pending_deliveries(self, notifier: str | None = None, limit: int = 100) -> list[Delivery]:
        """Pending deliveries in outbox order whether due or not (to keep per-run order)."""
        if notifier is None:
            rows = self._db.query(
                _SELECT + "WHERE o.state = 'pending' ORDER BY o.id LIMIT ?", (max(0, limit),)
            )
        else:
            rows = self._db.query(
                _SELECT + "WHERE o.state = 'pending' AND o.notifier = ? ORDER BY o.id LIMIT ?",
                (notifier, max(0, limit)),
            )
        return [delivery_row(row) for row in rows]

    def mark_delivered(self, delivery_id: int) -> None:
        """The row was sent; it stays as the record (state ``delivered``), its ``attempts``
        counting the successful try too: every surface shows the number of tries made."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'delivered', settled_at = ?, attempts = attempts + 1 "
                "WHERE id = ? AND state = 'pending'",
                (self._now(), delivery_id),
            )

    def mark_silenced(self, delivery_id: int, reason: str) -> None:
        """A silence withholds the row: never sent, recorded as ``silenced`` with ``reason``
        (shown as its ``last_error`` in the history)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'silenced', settled_at = ?, last_error = ? "
                "WHERE id = ? AND state = 'pending'",
                (self._now(), cut_error(reason), delivery_id),
            )

    def mark_retry(
        self, delivery_id: int, *, attempts: int, next_attempt_at: datetime, error: str
    ) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? "
                "WHERE id = ? AND state = 'pending'",
                (attempts, to_ts(next_attempt_at), cut_error(error), delivery_id),
            )

    def mark_dead(self, delivery_id: int, *, error: str, attempts: int | None = None) -> None:
        """Give up on a delivery; the row stays as a dead letter (see :meth:`dead_letters`)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'dead', dead_at = ?1, settled_at = ?1, "
                "last_error = ?2, attempts = coalesce(?3, attempts) "
                "WHERE id = ?4 AND state = 'pending'",
                (self._now(), cut_error(error), attempts, delivery_id),
            )

    def dead_letters(self, *, limit: int = 100) -> list[Delivery]:
        """Dead letters, most recent first."""
        rows = self._db.query(
            _SELECT + "WHERE o.state = 'dead' ORDER BY o.id DESC LIMIT ?", (max(0, limit),)
        )
        return [delivery_row(row) for row in rows]

    def outbox_stats(self, *, now: datetime) -> tuple[int, float]:
        """``(pending deliveries, age in seconds of the oldest one or 0.0)``."""
        rows = self._db.query(
            "SELECT count(*), min(created_at) FROM outbox WHERE state = 'pending'"
        )
        count, oldest = rows[0]
        if not count or oldest is None:
            return 0, 0.0
        return int(count), max(0.0, to_ts(now) - float(oldest))

    def dead_letter_removed_notifiers(self, *, known_notifiers: set[str]) -> list[int]:
        """Dead-letter pending rows of notifiers that are no longer configured (after a reload).

        Returns the ids of the rows given up, with the reason stored as their last error.
        """
        dropped: list[int] = []
        now = self._now()
        with self._db.write() as conn:
            names = [
                name
                for (name,) in conn.execute(
                    "SELECT DISTINCT notifier FROM outbox WHERE state = 'pending'"
                )
                if name not in known_notifiers
            ]
            for name in names:
                ids = [
                    int(row_id)
                    for (row_id,) in conn.execute(
                        "SELECT id FROM outbox WHERE state = 'pending' AND notifier = ? "
                        "ORDER BY id",
                        (name,),
                    )
                ]
                conn.execute(
                    "UPDATE outbox SET state = 'dead', dead_at = ?1, settled_at = ?1, "
                    "last_error = ?2 WHERE state = 'pending' AND notifier = ?3",
                    (now, f"notifier {name!r} is no longer configured", name),
                )
                dropped.extend(ids)
        return sorted(dropped)
