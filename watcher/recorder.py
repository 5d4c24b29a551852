"""Recording what polling saw: detect the transition, route it, write it in one transaction.

Every poller (per-run scheduler, batch poller) hands a changed status here, so the rules
live in one place: :func:`~watcher.transitions.detect` decides whether there is an event;
the :class:`~watcher.sink.EventSink` routes it, writes the new status, the event and its
outbox rows atomically, compare-and-set on the previous status (so a crash or a race can
neither lose nor repeat a transition), and announces it (metrics, hooks, the dispatcher).

Failure details never hold the status back. A transition into one of the enricher's
``failing`` statuses is written at once like any other, but *held*: its outbox rows wait
(:mod:`watcher.store.holds`) while a background task asks the enricher (GetRunCalls,
GetRunJobLog, at their budgeted rates, bounded by ``enrich_timeout_seconds``), then stores
the event's final body (``data.failure`` added, same id) and releases the rows in one
transaction (:meth:`~watcher.sink.EventSink.release`). So the registry (``list``, the API,
the pollers) sees a failure as soon as any other status, and receivers get its event
exactly once, with the details found. If the task is cancelled (shutdown) or the enricher
misbehaves, the event is released as it is; if the process dies first, the next start
looks its details up again and sends it (:meth:`Recorder.resume_held`). Every other
transition takes no extra await.

Only the compare-and-set write decides who records, so an observation another process
recorded first costs no enrichment.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from watcher.enrich import DEFAULT_TIMEOUT_SECONDS
from watcher.events import Event, RunState
from watcher.sink import EventSink
from watcher.store import TrackedRun
from watcher.tasks import drain
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


class RecorderStore(Protocol):
    """What the recorder reads (it writes through the sink)."""

    async def labels_of(self, run_uuid: str) -> dict[str, str]: ...

    async def get_run(self, run_uuid: str) -> TrackedRun | None: ...

    async def held_events(self, *, limit: int = 10_000) -> list[Event]: ...


class Recorder:
    """Detects, routes and records status changes and not-found runs."""

    def __init__(
        self,
        *,
        store: RecorderStore,
        sink: EventSink,
        terminal: frozenset[str],
        wall_clock: Callable[[], datetime],
        enricher: Enricher | None = None,
        enrich_timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        """``store`` is read (labels, the current row); every write goes through ``sink``.

        ``enrich_timeout``: the enricher's own bound (``enrich_timeout_seconds``); an event
        is held that long at most (plus a second's margin before it is released as it is).
        """
        self._store = store
        self._sink = sink
        self._enricher = enricher
        self._enrich_timeout = enrich_timeout
        self._enriching: set[asyncio.Task[None]] = set()
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
            labels=await self._store.labels_of(run_uuid),
            metadata=metadata,
        )
        event = detect(previous, current, terminal=self._terminal)
        if event is None:  # pragma: no cover - detect() reports every changed status
            return Recorded(None, await self._store.get_run(run_uuid))
        enricher = self._enricher
        failing = enricher is not None and status in enricher.failing
        held_until = observed_at + timedelta(seconds=self._enrich_timeout) if failing else None
        if not await self._sink.emit(event, observed=current, held_until=held_until):
            self._log.info("observation_superseded", run_uuid=run_uuid, status=status)
            return Recorded(None, await self._store.get_run(run_uuid))
        if enricher is not None and failing:
            self._start_enrichment(enricher, event, project_id, metadata)
        return Recorded(event)

    def _start_enrichment(
        self, enricher: Enricher, event: Event, project_id: str, metadata: Mapping[str, Any]
    ) -> None:
        task = asyncio.create_task(
            self._enrich_then_release(enricher, event, project_id, metadata),
            name=f"enrich:{event.run_uuid}",
        )
        self._enriching.add(task)
        task.add_done_callback(self._enrichment_done)

    @property
    def enriching(self) -> int:
        """Held events whose details are still being looked up."""
        return len(self._enriching)

    async def drain(self, grace: float | None = None) -> None:
        """Wait for the enrichments in flight (``grace`` seconds at most, then cancel the
        rest, which releases their events as they are)."""
        await drain(self._enriching, grace)

    async def resume_held(self) -> int:
        """At start: complete the events a previous process held when it died; returns how
        many. Each gets a fresh lookup (bounded like any) and is then sent; without an
        enricher they are sent as they are.

        Only one daemon uses a state file (:mod:`watcher.store.lock`), so before this one
        records anything every held event is an orphan. Looked up again rather than sent
        bare: its rows were never sent (so completing the body is safe), the details are
        what a failure event is for, and they cost a few budgeted requests once.
        """
        held = await self._store.held_events()
        if not held:
            return 0
        self._log.warning("held_events_resumed", events=len(held))
        if self._enricher is None:
            await self._sink.release_orphans()
            return len(held)
        for event in held:
            project_id = str(event.data.get("project_id") or "")
            metadata = event.data.get("metadata") or {}
            self._start_enrichment(self._enricher, event, project_id, metadata)
        return len(held)

    async def _enrich_then_release(
        self, enricher: Enricher, event: Event, project_id: str, metadata: Mapping[str, Any]
    ) -> None:
        final = event
        try:
            # The enricher keeps its own bound; this one only guards against a bug in it.
            async with asyncio.timeout(self._enrich_timeout + 1.0):
                final = await self._enriched(enricher, event, event.run_uuid, project_id, metadata)
        except TimeoutError:
            self._log.error("failure_enrichment_overran", run_uuid=event.run_uuid)
        finally:  # cancelled too: what was found so far is not kept, the event still goes
            await self._sink.release(final)

    def _enrichment_done(self, task: asyncio.Task[None]) -> None:
        self._enriching.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The rows stay held (the write failed); the next start releases them.
            self._log.error("failure_release_failed", error=repr(task.exception()))

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
            run_uuid, project_id, last_status, now, labels=await self._store.labels_of(run_uuid)
        )
        event = not_found_event(state, now=now)
        await self._sink.emit(event)
        self._log.warning("run_not_found", run_uuid=run_uuid, project_id=project_id)
        return event
