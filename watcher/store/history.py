"""A run's delivery history, the dead letters and their redelivery.

Why: since the outbox keeps every row once settled (see :mod:`watcher.store.outbox`), the
state file can answer "what happened to run X?" (each event with what became of each of its
deliveries) and "the webhook was down all night, send it again" (dead rows back to pending).

Invariants:
- A history is read in one read transaction (events and their rows agree); events oldest
  first, each event's deliveries in outbox order.
- Redelivery touches only ``dead`` rows and puts them back as they were recorded: same row
  id, same event (so the same event id: receivers deduplicate), ``attempts`` 0, no error, and
  ``created_at`` (the start of the ``max_age`` clock and of the pending-age gauge) set to
  now. A dispatcher of any process finds them at its next scan of the outbox.
- Every redelivered row counts once in the ``counters`` table under ``redelivered:NOTIFIER``,
  in the same transaction, so ``/metrics`` reports redeliveries made by the CLI as well.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from watcher.events import Event
from watcher.store.codec import decode_body
from watcher.store.db import StoreBase, from_ts
from watcher.store.models import Row

DeliveryState = Literal["pending", "dead", "delivered", "silenced"]

REDELIVERED_PREFIX = "redelivered:"


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """What became of one event's delivery to one notifier.

    ``attempts`` is the number of tries made: a delivered row counts its successful one, a
    silenced row was never tried, dead and pending rows count their failed tries.
    """

    id: int
    notifier: str
    state: DeliveryState
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One event of a run, with its deliveries."""

    seq: int
    event: Event
    deliveries: tuple[DeliveryRecord, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered delivery, as ``dead-letters`` lists it."""

    id: int
    notifier: str
    event_id: str
    run_uuid: str
    type: str
    dead_at: datetime
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Redelivery:
    """Which dead letters to put back: every one, one notifier's, or these ids.

    ``configured``: when given, only rows of these notifiers go back (a row for a notifier
    the daemon no longer has could never be sent; it stays dead).
    """

    all: bool = False
    notifier: str | None = None
    ids: tuple[int, ...] = ()
    configured: frozenset[str] | None = None

    def __post_init__(self) -> None:
        chosen = int(self.all) + int(self.notifier is not None) + int(bool(self.ids))
        if chosen != 1:
            raise ValueError("choose exactly one of: all, a notifier, delivery ids")


_DEAD_LETTERS = (
    "SELECT o.id, o.notifier, e.id, e.run_uuid, e.type, o.dead_at, o.attempts, "
    "o.last_error FROM outbox o JOIN events e ON e.seq = o.event_seq "
    "WHERE o.state = 'dead' AND o.id < {below}{of_notifier} ORDER BY o.id DESC LIMIT {limit}"
)


def dead_letters_query(*, notifier: bool, placeholder: str) -> str:
    """``list_dead_letters``'s SELECT for either backend, most recent first: parameters are
    the id to page below, the notifier (when ``notifier``) and the limit, written as
    ``placeholder`` formats them (``"?"`` for SQLite, ``"${n}"`` for PostgreSQL)."""
    marks = [placeholder.format(n=n) for n in range(1, 4)]
    return _DEAD_LETTERS.format(
        below=marks[0],
        of_notifier=" AND o.notifier = " + marks[1] if notifier else "",
        limit=marks[2] if notifier else marks[1],
    )


# A run's dead letters in one statement (both backends; ``{p}``: the backend's placeholder
# for the run). The inner read goes from the run's events (``events_by_run``) to their rows,
# so it costs what the run has, never every dead letter; the outer join to the run's own row
# tells a run without dead letters (one row of NULLs) from an unknown run (no row).
RUN_DEAD_LETTERS = (
    "SELECT d.* FROM runs r LEFT JOIN ("
    "SELECT o.id, o.notifier, e.id AS event_id, e.run_uuid, e.type, o.dead_at, o.attempts, "
    "o.last_error FROM events e JOIN outbox o ON o.event_seq = e.seq "
    "WHERE e.run_uuid = {p} AND o.state = 'dead'"
    ") d ON true WHERE r.run_uuid = {p} ORDER BY d.id DESC"
)


# A run's history in two reads of one snapshot (both backends; ``{p}``: the backend's
# placeholder for the run): its events oldest first, then every delivery row of those events
# in outbox order. The caller first checks that the run exists (an unknown run has no history,
# a known one may have no events yet). A run's history is a handful of events; the bound
# only keeps a pathological one finite.
RUN_HISTORY_EVENTS = "SELECT seq, body FROM events WHERE run_uuid = {p} ORDER BY seq LIMIT 10000"
RUN_HISTORY_DELIVERIES = (
    "SELECT o.event_seq, o.id, o.notifier, o.state, o.attempts, o.last_error "
    "FROM events e JOIN outbox o ON o.event_seq = e.seq "
    "WHERE e.run_uuid = {p} ORDER BY o.id"
)


def history_entries(events: Sequence[Row], deliveries: Sequence[Row]) -> list[HistoryEntry]:
    """A run's history from the rows of :data:`RUN_HISTORY_EVENTS` and
    :data:`RUN_HISTORY_DELIVERIES`: each event with its deliveries, kept in the order read.
    One decoder for both backends, so a history reads the same whichever holds the state."""
    by_event: dict[int, list[DeliveryRecord]] = {}
    for row in deliveries:
        by_event.setdefault(int(row[0]), []).append(
            DeliveryRecord(int(row[1]), row[2], row[3], int(row[4]), row[5])
        )
    return [
        HistoryEntry(
            seq=int(row[0]),
            event=Event.from_json(decode_body(row[1])),
            deliveries=tuple(by_event.get(int(row[0]), ())),
        )
        for row in events
    ]


def run_dead_letters(rows: Sequence[Row]) -> list[DeadLetter] | None:
    """The dead letters from the rows of :data:`RUN_DEAD_LETTERS` (``None``: no such run)."""
    if not rows:
        return None
    return [dead_letter_row(row) for row in rows if row[0] is not None]


def dead_letter_row(row: Row) -> DeadLetter:
    """A dead letter from ``outbox.id, notifier, event id, run_uuid, type, dead_at, attempts,
    last_error`` (both backends' ``list_dead_letters`` select these)."""
    return DeadLetter(
        id=int(row[0]),
        notifier=row[1],
        event_id=row[2],
        run_uuid=row[3],
        type=row[4],
        dead_at=from_ts(row[5] if row[5] is not None else 0.0),
        attempts=int(row[6]),
        last_error=row[7],
    )


_RUN_HISTORY_EVENTS = RUN_HISTORY_EVENTS.format(p="?")
_RUN_HISTORY_DELIVERIES = RUN_HISTORY_DELIVERIES.format(p="?")


class HistoryMixin(StoreBase):
    def run_history(self, run_uuid: str) -> list[HistoryEntry] | None:
        """The run's events oldest first, each with its deliveries; ``None`` for a run the
        registry does not have."""
        with self._db.read() as conn:
            if (
                conn.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_uuid,)).fetchone()
                is None
            ):
                return None
            events = conn.execute(_RUN_HISTORY_EVENTS, (run_uuid,)).fetchall()
            rows = conn.execute(_RUN_HISTORY_DELIVERIES, (run_uuid,)).fetchall()
        return history_entries(events, rows)

    def list_dead_letters(
        self, *, notifier: str | None = None, limit: int = 1000, before_id: int | None = None
    ) -> list[DeadLetter]:
        """Dead letters, most recent first (optionally one notifier's); pass the last ``id``
        as ``before_id`` for the next page."""
        sql = dead_letters_query(notifier=notifier is not None, placeholder="?")
        below = 2**63 - 1 if before_id is None else before_id
        params = [below] if notifier is None else [below, notifier]
        rows = self._db.query(sql, [*params, max(0, limit)])
        return [dead_letter_row(row) for row in rows]

    def run_dead_letters(self, run_uuid: str) -> list[DeadLetter] | None:
        """The run's dead letters, most recent first; ``None`` for a run the registry does not
        have. Reads the run's events (``events_by_run``) and their rows, not its history's
        bodies nor anyone else's dead letters: what redelivering one run needs."""
        rows = self._db.query(RUN_DEAD_LETTERS.format(p="?1"), (run_uuid,))
        return run_dead_letters(rows)

    def redeliver(self, which: Redelivery) -> list[int]:
        """Put the chosen dead letters back in the outbox; returns their ids (unknown ids and
        rows that are not dead are left alone)."""
        now = self._now()
        with self._db.write() as conn:
            ids = _dead_ids(conn, which)
            if not ids:
                return []
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, last_error = NULL, "
                "dead_at = NULL, settled_at = NULL, created_at = ?1, next_attempt_at = ?1 "
                "WHERE state = 'dead' AND id IN (SELECT value FROM json_each(?2))",
                (now, json.dumps(ids)),
            )
            conn.execute(
                "INSERT INTO counters (name, value) "
                "SELECT ?1 || notifier, count(*) FROM outbox "
                "WHERE id IN (SELECT value FROM json_each(?2)) GROUP BY notifier "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (REDELIVERED_PREFIX, json.dumps(ids)),
            )
        return ids


def _dead_ids(conn: sqlite3.Connection, which: Redelivery) -> list[int]:
    if which.all:
        found = conn.execute("SELECT id, notifier FROM outbox WHERE state = 'dead' ORDER BY id")
    elif which.notifier is not None:
        found = conn.execute(
            "SELECT id, notifier FROM outbox WHERE state = 'dead' AND notifier = ? ORDER BY id",
            (which.notifier,),
        )
    else:
        found = conn.execute(
            "SELECT id, notifier FROM outbox WHERE state = 'dead' "
            "AND id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(sorted(set(which.ids))),),
        )
    configured = which.configured
    return [int(row_id) for row_id, name in found if configured is None or name in configured]


def redelivery_ids(values: Sequence[object]) -> tuple[int, ...]:
    """Delivery ids from user input; ``ValueError`` for anything but positive integers."""
    ids: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"not a delivery id: {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"not a delivery id: {value!r}") from None
        if number <= 0:
            raise ValueError(f"not a delivery id: {value!r}")
        ids.append(number)
    return tuple(ids)
