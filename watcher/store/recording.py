"""Recording what polling found: new status, event and outbox rows in one transaction.

This is the store's half of the outbox pattern: the run's new status, the event describing
the change and one pending delivery per routed notifier commit together or not at all.

Invariants:
- Compare-and-set: an observation is applied only if the stored status still equals the
  status the caller compared against (``event.previous_status``, or the observed status when
  there is no event). Otherwise nothing is written and the call returns ``False``, so two
  racing writers, or a retry after a crash, can never report one transition twice.
- After a commit the transition is on disk (WAL, ``synchronous=NORMAL``): a SIGKILL right
  after the call returns loses nothing.
- Untracked or unknown runs are never written to.
- ``run.stuck`` is recorded once per run and status: ``stuck_status`` remembers it and the
  next transition clears it.
- What retention needs is kept here: ``status_since`` of a terminal status and ``stopped_at``
  of a run stopped as not found say since when the run is finished. A run's RunMetadata is
  kept while it is active (the batch poller orders answers by it) and dropped once it is
  terminal: its events carry it, and a finished run is not polled again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from watcher.events import STUCK, Event, RunState
from watcher.store.db import StoreBase, dump_json, to_ts
from watcher.store.journal import append_event, notifier_names


class RecordingMixin(StoreBase):
    def record_observation(
        self,
        state: RunState,
        event: Event | None,
        *,
        notifiers: Sequence[str],
        held_until: datetime | None = None,
    ) -> bool:
        """Apply a successful poll of ``state.run_uuid``; see the module invariants.

        With an event (from ``detect``) the run moves to ``state.status``, ``status_since``
        becomes ``state.observed_at``, and the event plus one delivery per notifier name are
        stored. Without one, only the metadata and ``last_polled_at`` are refreshed. Returns
        ``False`` (nothing written) if the run is not tracked or its status moved meanwhile.
        ``held_until``: the event's deliveries are held until released
        (:mod:`watcher.store.holds`); the status and the event are recorded all the same.
        """
        names = notifier_names(notifiers)
        if event is not None and (event.run_uuid != state.run_uuid or event.status != state.status):
            raise ValueError("the event does not describe this observation")
        observed = to_ts(state.observed_at)
        metadata = dump_json(state.metadata)
        expected = event.previous_status if event is not None else state.status
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT status FROM runs WHERE run_uuid = ? AND tracked = 1", (state.run_uuid,)
            ).fetchone()
            if row is None or row[0] != expected:
                return False
            if event is None:
                conn.execute(
                    "UPDATE runs SET metadata = ?, last_polled_at = ?, consecutive_errors = 0, "
                    "next_poll_after = NULL WHERE run_uuid = ?",
                    (metadata, observed, state.run_uuid),
                )
                return True
            conn.execute(
                "UPDATE runs SET status = ?, terminal = ?, metadata = ?, status_since = ?, "
                "last_polled_at = ?, consecutive_errors = 0, next_poll_after = NULL, "
                "stuck_status = NULL WHERE run_uuid = ?",
                (
                    state.status,
                    int(event.terminal),
                    None if event.terminal else metadata,
                    observed,
                    observed,
                    state.run_uuid,
                ),
            )
            held = None if held_until is None else to_ts(held_until)
            if append_event(conn, event, names, self._now(), held) is None:
                # Same id twice means the caller re-used an event: refuse rather than commit
                # a status change whose event would be missing from the log.
                raise ValueError(f"event {event.id} is already recorded")
        return True

    def record_not_found(self, run_uuid: str, event: Event, *, notifiers: Sequence[str]) -> bool:
        """Stop polling a run the API does not know, and record ``event`` (``run.not_found``).

        Returns ``False`` (nothing written) if the run is not tracked or already stopped.
        """
        names = notifier_names(notifiers)
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET stopped = 1, stopped_at = ?, consecutive_errors = 0, "
                "next_poll_after = NULL WHERE run_uuid = ? AND tracked = 1 AND stopped = 0",
                (self._now(), run_uuid),
            )
            if cursor.rowcount != 1:
                return False
            if append_event(conn, event, names, self._now()) is None:
                raise ValueError(f"event {event.id} is already recorded")
        return True

    def record_event(self, event: Event, *, notifiers: Sequence[str]) -> bool:
        """Record an event that changes no status (``run.stuck``, or a type added later).

        ``run.stuck`` is written only if the run is tracked, still in ``event.status`` and not
        yet reported stuck in it. Any event whose id is already stored is ignored. Returns
        whether something was written.
        """
        names = notifier_names(notifiers)
        with self._db.write() as conn:
            if event.type == STUCK:
                cursor = conn.execute(
                    "UPDATE runs SET stuck_status = status WHERE run_uuid = ? AND tracked = 1 "
                    "AND status = ? AND stuck_status IS NOT status",
                    (event.run_uuid, event.status),
                )
                if cursor.rowcount != 1:
                    return False
            if append_event(conn, event, names, self._now()) is None:
                if event.type == STUCK:
                    raise ValueError(f"event {event.id} is already recorded")
                return False
        return True
