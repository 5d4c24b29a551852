"""Recording what polling saw: detect the transition, route it, write it in one transaction.

Every poller (per-run scheduler, batch poller) hands a changed status here, so the rules
live in one place: :func:`~watcher.transitions.detect` decides whether there is an event;
the :class:`~watcher.sink.EventSink` routes it, writes the new status, the event and its
outbox rows atomically, compare-and-set on the previous status (so a crash or a race can
neither lose nor repeat a transition), and announces it (metrics, hooks, the dispatcher).
Methods are ``async`` because enrichment (failure details) may add API calls before the
event is written; the status itself is never held back by more than that step's bounded
time.

Enrichment runs only for a transition into one of the enricher's ``failing`` statuses; every
other transition takes no extra await. The observation time (and so the event id) is taken
before enrichment, and the compare-and-set write after it still decides who records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog

from watcher.events import Event, RunState
from watcher.sink import EventSink
from watcher.store import Store, TrackedRun
from watcher.transitions import detect, not_found_event


@dataclass(frozen=True, slots=True)
class Recorded:
    """The outcome of :meth:`Recorder.status_changed`.

    ``event`` is the recorded event, or ``None`` when the registry had moved on (another
    process recorded first); then ``stored`` is what the registry holds now (``None`` when
    the run is no longer tracked).
    """

    event: Event | None
    stored: TrackedRun | None = None


class Enricher(Protocol):
    """Adds failure details to an event (:class:`watcher.enrich.FailureEnricher`).

    ``failure`` must not raise: it returns what it found, fields ``""`` when unknown.
    """

    @property
    def failing(self) -> frozenset[str]: ...

    async def failure(
        self, run_uuid: str, project_id: str, metadata: Mapping[str, Any]
    ) -> Mapping[str, str] | None: ...


class Recorder:
    """Detects, routes and records status changes and not-found runs."""

    def __init__(
        self,
        *,
        store: Store,
        sink: EventSink,
        terminal: frozenset[str],
        wall_clock: Callable[[], datetime],
        enricher: Enricher | None = None,
    ) -> None:
        """``store`` is read (labels, the current row); every write goes through ``sink``."""
        self._store = store
        self._sink = sink
        self._enricher = enricher
        self._terminal = terminal
        self._wall = wall_clock
        self._log = structlog.get_logger("watcher.recorder")

    @property
    def terminal(self) -> frozenset[str]:
        return self._terminal

    async def status_changed(
        self,
        run_uuid: str,
        project_id: str,
        previous_status: str | None,
        status: str,
        metadata: Mapping[str, Any],
    ) -> Recorded:
        """Record ``previous_status → status`` for one run (the caller saw them differ)."""
        observed_at = self._wall()
        previous = RunState(run_uuid, project_id, previous_status, observed_at)
        current = RunState(
            run_uuid,
            project_id,
            status,
            observed_at,
            labels=self._store.labels_of(run_uuid),
            metadata=metadata,
        )
        event = detect(previous, current, terminal=self._terminal)
        if event is None:  # pragma: no cover - detect() reports every changed status
            return Recorded(None, self._store.get_run(run_uuid))
        if self._enricher is not None and status in self._enricher.failing:
            event = await self._enriched(self._enricher, event, run_uuid, project_id, metadata)
        if not self._sink.emit(event, observed=current):
            self._log.info("observation_superseded", run_uuid=run_uuid, status=status)
            return Recorded(None, self._store.get_run(run_uuid))
        return Recorded(event)

    async def _enriched(
        self,
        enricher: Enricher,
        event: Event,
        run_uuid: str,
        project_id: str,
        metadata: Mapping[str, Any],
    ) -> Event:
        try:
            failure = await enricher.failure(run_uuid, project_id, metadata)
        except Exception as exc:  # the contract says it won't; the event matters more
            self._log.error("failure_enrichment_crashed", run_uuid=run_uuid, error=repr(exc))
            return event
        if failure is None:
            return event
        return dataclasses.replace(event, data={**event.data, "failure": dict(failure)})

    async def not_found(self, run_uuid: str, project_id: str, last_status: str | None) -> Event:
        """Record ``run.not_found``; the registry stops polling the run.

        Announced only if written (not when the run was untracked or stopped meanwhile).
        """
        now = self._wall()
        state = RunState(
            run_uuid, project_id, last_status, now, labels=self._store.labels_of(run_uuid)
        )
        event = not_found_event(state, now=now)
        self._sink.emit(event)
        self._log.warning("run_not_found", run_uuid=run_uuid, project_id=project_id)
        return event
