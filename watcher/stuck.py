"""Stuck-run alerts: one ``run.stuck`` when a run keeps one non-terminal status too long.

:class:`StuckChecker` wakes every ``interval`` seconds (a quarter of the smallest limit,
between 1 s and 30 s), asks the store for tracked, active runs whose status is older than
the smallest limit and not yet reported stuck in it, applies each run's own limit, and
records a ``run.stuck`` (built by :func:`~watcher.transitions.stuck_event`) through the
:class:`~watcher.sink.EventSink`, routed, written and announced like every other event.

Invariants:

- Once per run and status: ``Store.record_event`` writes a ``run.stuck`` only while the run
  is still in that status and not yet marked stuck in it, and marks it in the same
  transaction; the next transition (``Store.record_observation``) clears the mark, so the
  run can be stuck again in its next status. Restarts and several watchers sharing one state
  file therefore never repeat the alert.
- A run's limit is the smallest ``per_label`` value whose ``KEY=VALUE`` matches one of its
  labels; else ``per_status[status]``; else ``after_seconds``. 0 means "never stuck" at
  that level (``per_status = {QUEUED = 0}`` silences queue waits). With no positive limit
  anywhere the checker is off and :meth:`StuckChecker.run` returns at once.
- Stuck means *seen* stuck: a run counts only when a poll found it still in the status at
  least the limit after the watcher first saw it there (``last_polled_at - status_since``,
  as :meth:`Store.stuck_candidates` reads them), never "now - status_since". With a poll
  cycle longer than the limit, a status that lasted less than the limit was seen once and
  had moved on by the next poll, so it is never reported; a hung run is reported by the
  first poll that finds it still there. ``status_since`` is at or after the real entry and
  ``last_polled_at`` at or before the real exit, so the time counted never exceeds the time
  the run really spent in the status (a run tracked late is measured from its first poll).
  The event is stamped with that poll's time; ``stuck_seconds`` is what was seen.
- A pass that fails on the state file is logged (``stuck_check_failed``) and retried at the
  next interval; it never stops the daemon.
- Each pass records at most ``max_per_pass`` events before yielding to the event loop, so
  switching the feature on over a large registry cannot stall polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from watcher.events import Event
from watcher.sink import EventSink
from watcher.store import StateError, TrackedRun
from watcher.tasks import wait_set
from watcher.transitions import stuck_event

MIN_INTERVAL_SECONDS = 1.0
MAX_INTERVAL_SECONDS = 30.0
DEFAULT_MAX_PER_PASS = 500


@dataclass(frozen=True, slots=True)
class StuckLimits:
    """How long a run may keep one status, in seconds (0 = no limit). Pure.

    Built from ``[stuck]`` by :func:`watcher.options.stuck_limits`.
    """

    after_seconds: float = 0.0
    per_status: Mapping[str, float] = field(default_factory=dict)
    per_label: Mapping[tuple[str, str], float] = field(default_factory=dict)

    @property
    def smallest(self) -> float:
        """The smallest positive limit; 0.0 when every limit is off."""
        limits = [self.after_seconds, *self.per_status.values(), *self.per_label.values()]
        positive = [t for t in limits if t > 0]
        return min(positive) if positive else 0.0

    @property
    def enabled(self) -> bool:
        return self.smallest > 0

    def limit_for(self, status: str, labels: Mapping[str, str]) -> float:
        """The limit for a run in ``status`` with ``labels``; see the module docstring."""
        matching = [t for (k, v), t in self.per_label.items() if labels.get(k) == v]
        if matching:
            return min(matching)
        return self.per_status.get(status, self.after_seconds)

    def interval(self) -> float:
        """Seconds between two passes: a quarter of the smallest limit, within 1..30 s."""
        return min(MAX_INTERVAL_SECONDS, max(MIN_INTERVAL_SECONDS, self.smallest / 4))


class StuckStore(Protocol):
    """What the checker reads (it writes through the sink)."""

    async def stuck_candidates(self, *, after_seconds: float) -> list[TrackedRun]: ...


class StuckChecker:
    """Records ``run.stuck`` events; see the module docstring."""

    def __init__(
        self,
        *,
        store: StuckStore,
        sink: EventSink,
        limits: StuckLimits,
        interval: float | None = None,
        max_per_pass: int = DEFAULT_MAX_PER_PASS,
    ) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("interval must be positive")
        if max_per_pass < 1:
            raise ValueError("max_per_pass must be >= 1")
        self._store = store
        self._sink = sink
        self._limits = limits
        self._interval = interval if interval is not None else limits.interval()
        self._max_per_pass = max_per_pass
        self._log = structlog.get_logger("watcher.stuck")

    @property
    def enabled(self) -> bool:
        return self._limits.enabled

    @property
    def interval(self) -> float:
        return self._interval

    async def check(self) -> list[Event]:
        """One pass: record and return the new ``run.stuck`` events (at most max_per_pass)."""
        if not self._limits.enabled:
            return []
        candidates = await self._store.stuck_candidates(after_seconds=self._limits.smallest)
        recorded: list[Event] = []
        for run in candidates:
            if len(recorded) >= self._max_per_pass:
                break
            event = self._stuck(run)
            if event is not None and await self._sink.emit(event):
                recorded.append(event)
                self._log.warning(
                    "run_stuck",
                    run_uuid=run.run_uuid,
                    status=run.status,
                    stuck_seconds=event.data.get("stuck_seconds"),
                )
        return recorded

    def _stuck(self, run: TrackedRun) -> Event | None:
        entered, seen = run.status_since, run.last_polled_at
        if run.status is None or entered is None or seen is None:
            return None
        limit = self._limits.limit_for(run.status, run.labels)
        if limit <= 0 or (seen - entered).total_seconds() < limit:
            return None
        # Stamped with the poll that saw it stuck: the observation, as for every event.
        return stuck_event(run, since=entered, now=seen)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``interval`` seconds until ``stop`` is set; returns at once when off."""
        if not self._limits.enabled:
            return
        self._log.info("stuck_checker_started", interval_seconds=self._interval)
        while not stop.is_set():
            try:
                recorded = await self.check()
            except StateError as exc:  # e.g. a long write lock elsewhere: try next time
                self._log.error("stuck_check_failed", error=str(exc))
                recorded = []
            if len(recorded) >= self._max_per_pass:
                await asyncio.sleep(0)  # more to do: let polling run, then carry on
                continue
            await wait_set(stop, self._interval)
