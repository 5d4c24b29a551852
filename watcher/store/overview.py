"""Reads for the status page (:mod:`watcher.ui`): run groups in progress, recent failures,
the newest events after a cursor, and the outbox per notifier.

Why a module of its own: these questions are asked only by the page, and each is bounded so
that a page stays cheap at 300,000 tracked runs: groups are found through the ``runs_active``
partial index and counted through ``runs_by_group``; failures read the
``runs_tracked_by_status`` index of each failing status; the outbox counts read its
``pending`` and ``dead`` partial indexes (delivered rows, kept for history, are never read).

Invariants: read-only; only tracked runs are shown; every value is bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from watcher.events import Event
from watcher.store.codec import decode_body
from watcher.store.db import StoreBase
from watcher.store.models import TrackedRun
from watcher.store.registry import _SELECT_TRACKED, _tracked_run

# Groups with at least one active run, from the partial index of active runs; the members
# of each are then counted through the group index (the expression spelled as in groups.py).
_ACTIVE_GROUPS = (
    "SELECT DISTINCT json_extract(labels, '$.\"run_group\"') FROM runs "
    "WHERE tracked = 1 AND terminal = 0 AND stopped = 0 "
    "AND json_extract(labels, '$.\"run_group\"') IS NOT NULL LIMIT ?"
)
_GROUP_COUNTS = (
    "SELECT status, terminal, stopped, count(*) FROM runs "
    "WHERE tracked = 1 AND json_extract(labels, '$.\"run_group\"') = ? "
    "GROUP BY status, terminal, stopped"
)


@dataclass(frozen=True, slots=True)
class GroupCount:
    """How many runs of a group have one (status, terminal, stopped) combination."""

    status: str | None
    terminal: bool
    stopped: bool
    runs: int


@dataclass(frozen=True, slots=True)
class NotifierOutbox:
    """One notifier's outbox: rows waiting, of which retried at least once, dead letters,
    and the error of its newest failed row (pending or dead)."""

    notifier: str
    pending: int
    retrying: int
    dead: int
    last_error: str | None


class OverviewMixin(StoreBase):
    def active_groups(self, *, limit: int = 20) -> dict[str, list[GroupCount]]:
        """Run groups with a run still active, each with its runs counted by status."""
        names = [row[0] for row in self._db.query(_ACTIVE_GROUPS, (max(0, limit),))]
        found: dict[str, list[GroupCount]] = {}
        for name in sorted(str(n) for n in names):
            found[name] = [
                GroupCount(row[0], bool(row[1]), bool(row[2]), int(row[3]))
                for row in self._db.query(_GROUP_COUNTS, (name,))
            ]
        return found

    def latest_in_statuses(self, statuses: Iterable[str], *, limit: int) -> list[TrackedRun]:
        """The tracked runs in any of ``statuses`` that reached it last, newest first."""
        wanted = sorted(set(statuses))
        if not wanted:
            return []
        runs: list[TrackedRun] = []
        for status in wanted:  # one index range per status, each cut at ``limit``
            rows = self._db.query(
                _SELECT_TRACKED + "AND status = ? ORDER BY status_since DESC LIMIT ?",
                (status, max(0, limit)),
            )
            runs.extend(_tracked_run(row) for row in rows)
        runs.sort(key=lambda run: run.status_since or run.tracked_at, reverse=True)
        return runs[:limit]

    def last_event_of(self, run_uuid: str) -> Event | None:
        """The run's newest event (its failure details, its metadata)."""
        rows = self._db.query(
            "SELECT body FROM events WHERE run_uuid = ? ORDER BY seq DESC LIMIT 1", (run_uuid,)
        )
        return Event.from_json(decode_body(rows[0][0])) if rows else None

    def events_after(self, seq: int, *, limit: int) -> list[tuple[int, Event]]:
        """``(seq, event)`` recorded after ``seq``, oldest first (a live feed's next step)."""
        rows = self._db.query(
            "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, max(0, limit)),
        )
        return [(int(s), Event.from_json(decode_body(body))) for s, body in rows]

    def last_event_seq(self) -> int:
        """The newest event's ``seq`` (0 for an empty log): where a live feed starts."""
        rows = self._db.query("SELECT max(seq) FROM events")
        return int(rows[0][0] or 0)

    def dead_letter_count(self) -> int:
        return int(self._db.query("SELECT count(*) FROM outbox WHERE state = 'dead'")[0][0])

    def notifier_outboxes(self) -> list[NotifierOutbox]:
        """Per notifier with rows waiting or dead; notifiers with neither are not listed."""
        pending = {
            name: (int(count), int(retrying or 0), newest)
            for name, count, retrying, newest in self._db.query(
                "SELECT notifier, count(*), sum(attempts > 0), "
                "max(CASE WHEN last_error IS NOT NULL THEN id END) "
                "FROM outbox WHERE state = 'pending' GROUP BY notifier"
            )
        }
        dead = {
            name: (int(count), newest)
            for name, count, newest in self._db.query(
                "SELECT notifier, count(*), max(id) FROM outbox WHERE state = 'dead' "
                "GROUP BY notifier"
            )
        }
        result = []
        for name in sorted(set(pending) | set(dead)):
            count, retrying, newest_pending = pending.get(name, (0, 0, None))
            dead_count, newest_dead = dead.get(name, (0, None))
            newest = max((i for i in (newest_pending, newest_dead) if i is not None), default=None)
            error = None
            if newest is not None:
                rows = self._db.query("SELECT last_error FROM outbox WHERE id = ?", (newest,))
                error = rows[0][0] if rows else None
            result.append(NotifierOutbox(name, count, retrying, dead_count, error))
        return result
