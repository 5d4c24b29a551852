"""Silences in the state file: added and expired by the CLI or the admin API, read by the daemon.

Why here: a silence must reach the daemon from another process (``omics-watcher silence add``
beside a running daemon), and outlive restarts. The matching itself is in
:mod:`watcher.delivery.silencing`.

Invariants:
- Every write (add, expire, prune) bumps the ``silence_seq`` counter in its transaction, so a
  daemon notices any change by reading one row (:meth:`SilencesMixin.silence_version`) and
  reloads the silences only then.
- Expiring a silence sets its end to now (and its start, if it had not started); the row
  stays, listed as ``expired``. Ended silences are kept for the record for
  :data:`~watcher.delivery.silencing.KEEP_ENDED` (7 days) after they end, then deleted by the
  next write (add or expire); reads never list them past that, written or not.
- Ids come from AUTOINCREMENT: never reused, even after a silence is deleted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime

from watcher.delivery.silencing import KEEP_ENDED, Silence
from watcher.store.db import StoreBase, dump_json, from_ts, to_ts
from watcher.store.models import Row

_SELECT = "SELECT id, matchers, notifiers, starts_at, ends_at, comment, created_at FROM silences "


def silence_row(row: Row) -> Silence:
    """A silence from ``id, matchers, notifiers, starts_at, ends_at, comment, created_at``."""
    return Silence(
        id=int(row[0]),
        matchers={str(k): str(v) for k, v in json.loads(row[1]).items()},
        notifiers=tuple(str(n) for n in json.loads(row[2])),
        starts_at=from_ts(row[3]),
        ends_at=from_ts(row[4]),
        comment=str(row[5]),
        created_at=from_ts(row[6]),
    )


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'silence_seq'")


class SilencesMixin(StoreBase):
    def add_silence(
        self,
        *,
        matchers: Mapping[str, str],
        ends_at: datetime,
        notifiers: Sequence[str] = (),
        starts_at: datetime | None = None,
        comment: str = "",
    ) -> Silence:
        """Store a silence (starting now unless ``starts_at``); returns it with its id.

        The caller checks the matchers (:func:`~watcher.delivery.silencing.check_matchers`)."""
        now = self._now()
        start = now if starts_at is None else to_ts(starts_at)
        with self._db.write() as conn:
            self._prune_silences(conn, now)
            cursor = conn.execute(
                "INSERT INTO silences (matchers, notifiers, starts_at, ends_at, comment, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    dump_json(dict(matchers)),
                    json.dumps(sorted(set(notifiers)), ensure_ascii=False),
                    start,
                    to_ts(ends_at),
                    comment,
                    now,
                    now,
                ),
            )
            _bump(conn)
            row = conn.execute(_SELECT + "WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return silence_row(row)

    def expire_silence(self, silence_id: int) -> Silence | None:
        """End the silence now (an ended one stays as it was); ``None``: no such silence."""
        now = self._now()
        with self._db.write() as conn:
            self._prune_silences(conn, now)
            conn.execute(
                "UPDATE silences SET ends_at = ?, starts_at = min(starts_at, ?), updated_at = ? "
                "WHERE id = ? AND ends_at > ?",
                (now, now, now, silence_id, now),
            )
            _bump(conn)
            row = conn.execute(_SELECT + "WHERE id = ?", (silence_id,)).fetchone()
        return None if row is None else silence_row(row)

    def get_silence(self, silence_id: int) -> Silence | None:
        rows = self._db.query(
            _SELECT + "WHERE id = ? AND ends_at >= ?",
            (silence_id, self._now() - KEEP_ENDED.total_seconds()),
        )
        return silence_row(rows[0]) if rows else None

    def silences(self) -> list[Silence]:
        """Active, pending and recently ended silences (ended less than 7 days ago), by id."""
        rows = self._db.query(
            _SELECT + "WHERE ends_at >= ? ORDER BY id",
            (self._now() - KEEP_ENDED.total_seconds(),),
        )
        return [silence_row(row) for row in rows]

    def current_silences(self) -> list[Silence]:
        """Silences not ended yet (active or still to start): what a dispatcher applies."""
        rows = self._db.query(_SELECT + "WHERE ends_at > ? ORDER BY id", (self._now(),))
        return [silence_row(row) for row in rows]

    def silence_version(self) -> int:
        """A number that changes with every silence written, by any process."""
        rows = self._db.query("SELECT value FROM counters WHERE name = 'silence_seq'")
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def _prune_silences(conn: sqlite3.Connection, now: float) -> None:
        cursor = conn.execute(
            "DELETE FROM silences WHERE ends_at < ?", (now - KEEP_ENDED.total_seconds(),)
        )
        if cursor.rowcount:
            _bump(conn)
