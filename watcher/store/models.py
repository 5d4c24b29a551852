"""The store's value types: what callers hand in and get back. Frozen, no I/O.

Times are aware UTC datetimes, except in :class:`ActiveRun`, which keeps unix-second floats:
the scheduler holds one per active run (100,000 of them) and does arithmetic on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from watcher.events import Event, isoformat_z


class Row(Protocol):
    """A stored row as either backend returns it (a ``sqlite3`` tuple or an ``asyncpg``
    Record), read by column index: each backend's SELECT lists the columns in the same
    order, so one decoder per value type serves both."""

    def __getitem__(self, index: int, /) -> Any: ...


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else isoformat_z(moment)


@dataclass(frozen=True, slots=True)
class TrackRequest:
    """Start watching ``run_uuid``; ``project_id`` "" means the configured default project."""

    run_uuid: str
    project_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DiscoveredRun:
    """A run found by discovery: what DescribeRuns said about it, and the labels to attach."""

    run_uuid: str
    project_id: str
    status: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrackResult:
    """``added``: newly tracked (or re-tracked after untrack); ``existing``: already tracked."""

    added: list[str]
    existing: list[str]


@dataclass(frozen=True, slots=True)
class TrackedRun:
    """A registry entry as ``list`` shows it. ``stopped``: the API said the run does not exist."""

    run_uuid: str
    project_id: str
    status: str | None
    terminal: bool
    labels: dict[str, str]
    tracked_at: datetime
    last_polled_at: datetime | None
    status_since: datetime | None
    stopped: bool
    consecutive_errors: int
    next_poll_after: datetime | None

    def to_json_dict(self) -> dict[str, Any]:
        """The object ``list --json`` and ``GET /v1/runs`` print for this run."""
        return {
            "run_uuid": self.run_uuid,
            "project_id": self.project_id,
            "status": self.status,
            "terminal": self.terminal,
            "labels": dict(self.labels),
            "tracked_at": isoformat_z(self.tracked_at),
            "last_polled_at": _iso(self.last_polled_at),
            "status_since": _iso(self.status_since),
            "stopped": self.stopped,
        }


@dataclass(frozen=True, slots=True)
class ActiveRun:
    """A run the scheduler should poll: tracked, not terminal, not stopped (unix seconds)."""

    run_uuid: str
    project_id: str
    status: str | None
    last_polled_at: float | None
    next_poll_after: float | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row: ``event`` still to be delivered to ``notifier`` (or given up on).

    ``id`` never changes and is never reused; ``event.id`` is the receivers' idempotency key.
    """

    id: int
    event: Event
    notifier: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str | None
