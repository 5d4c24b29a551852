"""The event sink: where every producer's event is routed, written and announced.

Every producer (the :class:`~watcher.recorder.Recorder` for status changes and not-found runs,
the :class:`~watcher.stuck.StuckChecker`, the :class:`~watcher.rollup.RollupTracker`) hands its
events to one :class:`EventSink`, injected once by the composition root. The sink does the
three steps that must not drift between producers:

1. **route**: the notifiers the routes select; a producer that narrows them (the roll-up
   tracker keeps those with ``rollup = true``) asks :meth:`EventSink.route` with ``only``
   and passes the result to :meth:`EventSink.emit`;
2. **write**: the event and one outbox row per notifier in one transaction, with the write
   the event needs: a status change is the compare-and-set ``Store.record_observation`` of
   the observed state, a ``run.not_found`` stops the run (``Store.record_not_found``), any
   other event is ``Store.record_event`` (once per id; ``run.stuck`` once per status);
3. **announce**, only when something was written: the ``omics_watcher_events`` counter (and
   ``omics_watcher_transitions`` for a status change), each ``on_event`` hook in order, then
   ``on_recorded`` (wakes the dispatcher).

So an event is counted and announced exactly when it is in the store. Producers keep their
own rules (detect, limits, completeness) and their own log lines. The store is an
:class:`~watcher.store.api.AsyncStore` (SQLite or PostgreSQL); a fenced write of a daemon
that lost its lease raises :class:`~watcher.store.pg.lease.LeaseLost`, which the sink lets
through to its producer's caller (it is not a ``StateError``).

A status change may be written **held** (``emit(..., held_until=...)``): status, event and
outbox rows are recorded and announced as above (the registry shows the status at once), but
the rows wait (:mod:`watcher.store.holds`) until :meth:`EventSink.release` stores the event's
final body (its failure details; same id) and releases them in one transaction, then wakes
the dispatcher. The hooks see the event once, as first written; receivers only ever get the
released body. :meth:`EventSink.release_orphans` releases, as they are, events a previous
process held when it died.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime

from watcher.events import NOT_FOUND, STATUS_CHANGED, Event, RunState
from watcher.service.metrics import Metrics
from watcher.store.api import AsyncStore

EventHook = Callable[[Event], None]


def _nothing() -> None:
    return None


class EventSink:
    """Routes, writes and announces events; see the module docstring."""

    def __init__(
        self,
        *,
        store: AsyncStore,
        route: Callable[[Event], Sequence[str]],
        metrics: Metrics | None = None,
        on_recorded: Callable[[], None] = _nothing,
        on_event: Sequence[EventHook] = (),
    ) -> None:
        """``route`` is read at each event, so a reload that swaps the routes applies at once."""
        self._store = store
        self._route = route
        self._metrics = metrics
        self._on_recorded = on_recorded
        self._hooks: list[EventHook] = list(on_event)

    def subscribe(self, hook: EventHook) -> None:
        """Call ``hook`` with every event written from now on (after the hooks given before)."""
        self._hooks.append(hook)

    def route(self, event: Event, *, only: Collection[str] | None = None) -> list[str]:
        """The notifiers the routes select for ``event``, kept to ``only`` when given."""
        notifiers = list(self._route(event))
        return notifiers if only is None else [name for name in notifiers if name in only]

    async def emit(
        self,
        event: Event,
        *,
        observed: RunState | None = None,
        notifiers: Sequence[str] | None = None,
        held_until: datetime | None = None,
    ) -> bool:
        """Route, write and announce ``event``; whether it was written.

        ``observed``: the new state a ``run.status_changed`` records (compare-and-set on
        ``event.previous_status``); required for that type. ``notifiers``: already routed
        (:meth:`route`); by default the routes decide. ``held_until`` (status changes only):
        the deliveries wait for :meth:`release` (the time says by when it is due).
        """
        chosen = self.route(event) if notifiers is None else notifiers
        if not await self._write(event, observed, chosen, held_until):
            return False
        self._announce(event)
        return True

    async def release(self, event: Event) -> bool:
        """Store ``event`` (a held event with its details; same id) and let its rows go;
        whether it was held (``False``: released already, nothing changed)."""
        if not await self._store.release_event(event.id, event):
            return False
        self._on_recorded()
        return True

    async def release_orphans(self) -> int:
        """Release, as they are, every event a dead process held; returns how many."""
        released = await self._store.release_held()
        if released:
            self._on_recorded()
        return released

    async def _write(
        self,
        event: Event,
        observed: RunState | None,
        notifiers: Sequence[str],
        held_until: datetime | None,
    ) -> bool:
        if event.type == STATUS_CHANGED:
            if observed is None:
                raise ValueError("a status change needs the observed state")
            return await self._store.record_observation(
                observed, event, notifiers=notifiers, held_until=held_until
            )
        if held_until is not None:
            raise ValueError("only a status change can be held")
        if event.type == NOT_FOUND:
            return await self._store.record_not_found(event.run_uuid, event, notifiers=notifiers)
        return await self._store.record_event(event, notifiers=notifiers)

    def _announce(self, event: Event) -> None:
        if self._metrics is not None:
            self._metrics.events.labels(type=event.type).inc()
            if event.type == STATUS_CHANGED:
                self._metrics.transitions.inc()
        for hook in self._hooks:
            hook(event)
        self._on_recorded()
