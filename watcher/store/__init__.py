"""Persistent state in one SQLite file: tracked runs, the event log and the delivery outbox.

The only package that writes SQL. Used synchronously from the event loop: every call is one
short transaction. The CLI and a running daemon may open the same file at the same time.

Invariants:
- A new status, its event and one outbox row per routed notifier commit in one transaction
  (compare-and-set on the previous status), so a crash neither loses nor repeats a transition.
- WAL journal, ``synchronous=NORMAL``, ``busy_timeout`` (5 s by default), foreign keys on.
- The schema is versioned with ``PRAGMA user_version`` (see :mod:`watcher.store.schema`).
- Times are stored as unix seconds (REAL) and returned as aware UTC datetimes.
- Every failure to open or use the file is a :class:`StateError` naming the file and reason.
- Error texts given to the outbox are stored as given: callers redact secrets first.
"""

from watcher.store.db import StateError
from watcher.store.models import (
    ActiveRun,
    Delivery,
    DiscoveredRun,
    TrackedRun,
    TrackRequest,
    TrackResult,
)
from watcher.store.registry import RunFilter, RunPage
from watcher.store.store import Store

__all__ = [
    "ActiveRun",
    "Delivery",
    "DiscoveredRun",
    "RunFilter",
    "RunPage",
    "StateError",
    "Store",
    "TrackRequest",
    "TrackResult",
    "TrackedRun",
]
