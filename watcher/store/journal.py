"""The event log: appending events with their outbox rows, reading and pruning the history.

Invariants:
- :func:`append_event` is only called inside a write transaction that also carries the state
  change the event describes: the event, its deliveries and the new state commit together.
- An event id is stored at most once (``UNIQUE``); appending a known id is a no-op.
- ``body`` is ``Event.to_json()`` stored through :mod:`watcher.store.codec`: what is read back
  is byte-for-byte what notifiers get.
- :meth:`JournalMixin.prune_events` never removes an event with a delivery still owed
  (``pending``) or dead (it may be re-queued); settled rows go with their event.
- Retention never removes a delivery still owed, nor its event, nor its run: a ``pending``
  row may be held by a mute window, a digest window, a failure's lookup or a retry for any
  time (a notifier muted longer than ``retention_days`` still gets everything when its
  window ends). So :meth:`JournalMixin.prune_finished_runs` removes a finished run with all
  its events only once none of them owes a delivery (:data:`OWES_NOTHING`); their settled
  rows (delivered, silenced, dead) go with them by ``ON DELETE CASCADE``. A run that is not
  finished, or still owes one, keeps everything; it goes at the first pass after its last
  row settles. Run-less events likewise (:meth:`JournalMixin.prune_orphan_events`). Each
  call is one short, bounded transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import takewhile

from watcher.events import Event
from watcher.store.codec import decode_body, encode_body
from watcher.store.db import StoreBase, to_ts

_NO_LIMIT = 2**63 - 1  # above any seq: "no upper bound" without composing SQL

# Retention's rule, one SQL condition for both backends: the run (in a query over ``runs``)
# has no delivery still owed. ``state = 'pending'`` is spelled literally, as the partial
# indexes are; the lookup reads ``events_by_run`` and the outbox's index on ``event_seq``.
OWES_NOTHING = (
    "NOT EXISTS (SELECT 1 FROM events e JOIN outbox o ON o.event_seq = e.seq "
    "WHERE e.run_uuid = runs.run_uuid AND o.state = 'pending')"
)
# The same for an event (in a query over ``events``).
EVENT_OWES_NOTHING = (
    "NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_seq = events.seq AND o.state = 'pending')"
)
_FINISHED_OWING_NOTHING = (
    "SELECT run_uuid FROM runs WHERE terminal = 1 AND status_since < ? "  # noqa: S608 - literals
    f"AND {OWES_NOTHING} LIMIT ?"
)
_STOPPED_OWING_NOTHING = (
    "SELECT run_uuid FROM runs WHERE stopped = 1 AND terminal = 0 "  # noqa: S608 - literals
    f"AND stopped_at < ? AND {OWES_NOTHING} LIMIT ?"
)
_STILL_PRUNABLE = (  # the chosen runs that are still finished and still owe nothing
    "SELECT run_uuid FROM runs WHERE run_uuid IN (SELECT value FROM json_each(?)) "  # noqa: S608 - literals
    "AND ((terminal = 1 AND status_since < ?) OR (stopped = 1 AND terminal = 0 "
    f"AND stopped_at < ?)) AND {OWES_NOTHING}"
)


@dataclass(frozen=True, slots=True)
class PruneStep:
    """What one bounded retention step deleted; ``more``: the step was full, call again."""

    runs: int
    events: int
    more: bool


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
    conn: sqlite3.Connection,
    event: Event,
    notifiers: list[str],
    now: float,
    held_until: float | None = None,
) -> int | None:
    """Store ``event`` and one pending delivery per notifier; ``None`` if the id is known.

    ``held_until``: the event is held, its deliveries wait (see :mod:`watcher.store.holds`).
    """
    cursor = conn.execute(
        "INSERT INTO events (id, type, run_uuid, recorded_at, body, held_until) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (event.id, event.type, event.run_uuid, now, encode_body(event.to_json()), held_until),
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
        return [(int(seq), Event.from_json(decode_body(body))) for seq, body in rows]

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
        """Delete events recorded before ``before`` with no pending or dead delivery (their
        delivered or silenced rows go with them); returns how many."""
        with self._db.write() as conn:
            cursor = conn.execute(
                "DELETE FROM events WHERE recorded_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.event_seq = events.seq "
                "AND outbox.state IN ('pending', 'dead'))",
                (to_ts(before),),
            )
            return cursor.rowcount

    def prune_finished_runs(self, *, finished_before: datetime, limit: int) -> PruneStep:
        """Delete up to ``limit`` runs finished before ``finished_before``, with their events.

        Finished: terminal since ``status_since``, or stopped as not found since
        ``stopped_at``; and owing no delivery (a pending row keeps its whole run). Their
        settled deliveries and dead letters go with the events (cascade).

        The runs are chosen by a read, outside the write lock: passing over runs that still
        owe (a notifier muted for weeks keeps every run it was sent) costs time in
        proportion to them, and the daemon's writes must not wait for it. Under the lock the
        choice is checked again, cheaply, before anything is deleted.
        """
        cutoff = to_ts(finished_before)
        chosen = [uuid for (uuid,) in self._db.query(_FINISHED_OWING_NOTHING, (cutoff, limit))]
        chosen += [
            uuid
            for (uuid,) in self._db.query(
                _STOPPED_OWING_NOTHING, (cutoff, max(0, limit - len(chosen)))
            )
        ]
        if not chosen:
            return PruneStep(runs=0, events=0, more=False)
        with self._db.write() as conn:
            uuids = [
                uuid
                for (uuid,) in conn.execute(_STILL_PRUNABLE, (json.dumps(chosen), cutoff, cutoff))
            ]
            events = conn.executemany(
                "DELETE FROM events WHERE run_uuid = ?", [(uuid,) for uuid in uuids]
            ).rowcount
            conn.execute(
                "DELETE FROM runs WHERE run_uuid IN (SELECT value FROM json_each(?))",
                (json.dumps(uuids),),
            )
        return PruneStep(runs=len(uuids), events=events, more=len(chosen) >= limit)

    def prune_orphan_events(
        self, *, recorded_before: datetime, after_seq: int, limit: int
    ) -> tuple[int, int | None]:
        """Delete old events that belong to no registry run (digests, roll-ups, leftovers)
        and owe no delivery.

        Scans at most ``limit`` events after ``after_seq`` in log order and stops at the first
        one recorded at or after ``recorded_before``. Returns ``(deleted, next after_seq)``,
        ``None`` when the scan reached recent events or the end of the log.
        """
        cutoff = to_ts(recorded_before)
        with self._db.write() as conn:
            rows = conn.execute(
                "SELECT seq, recorded_at FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
            # Only the old prefix: the log is in recording order, so a recent event ends it.
            old = [int(seq) for seq, _ in takewhile(lambda row: row[1] < cutoff, rows)]
            deleted = 0
            if old:
                deleted = conn.execute(
                    "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?)) "  # noqa: S608 - literals
                    "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_uuid = events.run_uuid) "
                    f"AND {EVENT_OWES_NOTHING}",
                    (json.dumps(old),),
                ).rowcount
        if len(old) < len(rows) or len(rows) < limit:
            return deleted, None
        return deleted, old[-1]

    def release_free_pages(self, max_pages: int) -> int:
        """Give up to ``max_pages`` free pages back to the file system; returns how many.

        Only for files created with ``auto_vacuum = INCREMENTAL`` (0 otherwise): other files
        keep their free pages, which SQLite reuses before it grows the file.
        """
        with self._db.write() as conn:
            if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                return 0
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            if free == 0:
                return 0
            # A PRAGMA argument cannot be bound; it is an int we computed.
            conn.execute(f"PRAGMA incremental_vacuum({int(min(free, max_pages))})").fetchall()
            return free - int(conn.execute("PRAGMA freelist_count").fetchone()[0])
