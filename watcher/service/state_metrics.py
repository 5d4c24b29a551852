"""The metric families read from the state at scrape time: tracked runs by status, outbox
depth and age (``omics_watcher_tracked_runs``, ``omics_watcher_outbox_pending``,
``omics_watcher_oldest_pending_delivery_seconds``) and ``omics_watcher_redeliveries_total``.

Why a module of its own: the state is an async store (a SQLite file or PostgreSQL, shared by
replicas), while prometheus collectors are synchronous. :class:`StateGauges` reads the values
with ``await`` when ``/metrics`` is scraped (:meth:`~watcher.service.metrics.Metrics.scrape`
runs :meth:`StateGauges.refresh` first), keeps them, and the collectors render what was
read; nothing blocks the loop on a database round trip. Every replica, active or standby,
exports the same values: they are the state's, not the process's.

If the state cannot be read in time (PostgreSQL down, a slow server), the scrape still
answers with every in-memory family; the state's families are left out of that scrape
rather than shown stale, and ``metrics_state_read_failed`` is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from watcher.service.metrics import Metrics, StateSnapshot
from watcher.service.redeliveries import RedeliveryCollector
from watcher.store.db import utc_now
from watcher.store.figures import StateFigures

READ_TIMEOUT_SECONDS = 5.0  # below Prometheus's default scrape timeout (10 s)


class StateReads(Protocol):
    """The part of :class:`~watcher.store.api.AsyncStore` the metrics read: one call, one
    statement on either backend (:mod:`watcher.store.figures`), so a scrape costs one
    connection use or round trip and its families agree with each other."""

    async def state_figures(self, *, now: datetime) -> StateFigures: ...


@dataclass(frozen=True, slots=True)
class _Read:
    snapshot: StateSnapshot
    redeliveries: Mapping[str, int]


class StateGauges:
    """Reads the state's values before each scrape; :meth:`install` wires it to ``metrics``."""

    def __init__(
        self,
        store: StateReads,
        *,
        clock: Callable[[], datetime] = utc_now,
        timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._timeout = timeout
        self._last: _Read | None = None
        self._log = structlog.get_logger("watcher.metrics")

    def install(self, metrics: Metrics) -> None:
        metrics.watch_state(self.snapshot)
        metrics.registry.register(RedeliveryCollector(self.redeliveries))
        metrics.before_scrape(self.refresh)

    def snapshot(self) -> StateSnapshot | None:
        """What the last :meth:`refresh` read (``None``: it failed)."""
        return self._last.snapshot if self._last is not None else None

    def redeliveries(self) -> Mapping[str, int]:
        return self._last.redeliveries if self._last is not None else {}

    async def refresh(self) -> None:
        """Read the values (bounded by ``timeout``); on failure leave them out, logged."""
        try:
            async with asyncio.timeout(self._timeout):
                self._last = await self._read()
        except Exception as exc:  # any store failure: /metrics still answers
            self._last = None
            self._log.warning("metrics_state_read_failed", error=type(exc).__name__)

    async def _read(self) -> _Read:
        figures = await self._store.state_figures(now=self._clock())
        counts = figures.runs_by_status
        snapshot = StateSnapshot(
            runs_by_status={(k if k is not None else "unknown"): v for k, v in counts.items()},
            outbox_pending=figures.outbox_pending,
            oldest_pending_seconds=figures.oldest_pending_seconds,
        )
        return _Read(snapshot, figures.redeliveries)
