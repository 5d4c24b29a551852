"""Transitions: which observations become events, and how those events look.

:func:`detect` compares the last known state of a run with a fresh observation and returns a
``run.status_changed`` event exactly when the raw status string changed (the first observation
counts as a change from ``None``). The builders :func:`not_found_event` and :func:`stuck_event`
shape the other event types so every event's ``data`` is built in this one module.

Invariants:
- Pure: no I/O, no clock, no randomness except through the injected ``new_id``.
- Statuses are compared as raw strings; a status not in the configured terminal set (including
  one the watcher has never heard of) is not terminal, and is still reported.
- The event's timestamp and ``id`` derive from the observation time, not from "now", so one
  observation always yields the same-shaped event whenever it is processed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from watcher.events import (
    NOT_FOUND,
    STATUS_CHANGED,
    STUCK,
    Event,
    RunState,
    isoformat_z,
    new_event_id,
)

IdFactory = Callable[[datetime], str]


class RunLike(Protocol):
    """What the event builders need from a run: a :class:`RunState`, a stored run, etc."""

    @property
    def run_uuid(self) -> str: ...

    @property
    def project_id(self) -> str: ...

    @property
    def status(self) -> str | None: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


def is_terminal(status: str | None, terminal: frozenset[str]) -> bool:
    """True only for a status in ``terminal``; ``None`` and unknown strings are not terminal."""
    return status is not None and status in terminal


def detect(
    prev: RunState | None,
    cur: RunState,
    *,
    terminal: frozenset[str],
    new_id: IdFactory = new_event_id,
) -> Event | None:
    """The ``run.status_changed`` event for ``prev -> cur``, or ``None`` if nothing changed.

    ``prev`` is ``None`` (or has status ``None``) before the first successful poll; the first
    real status is then reported with ``previous_status: None``. An observation without a
    status (``cur.status is None``) carries no news and never yields an event.
    """
    previous_status = prev.status if prev is not None else None
    if cur.status is None or cur.status == previous_status:
        return None
    # The poller may build ``cur`` from the API answer alone; labels and the project then
    # come from what the registry knew (``prev``), with anything in ``cur`` taking precedence.
    labels = {**(prev.labels if prev is not None else {}), **cur.labels}
    project_id = cur.project_id or (prev.project_id if prev is not None else "")
    return Event(
        type=STATUS_CHANGED,
        id=new_id(cur.observed_at),
        timestamp=cur.observed_at,
        data={
            "run_uuid": cur.run_uuid,
            "project_id": project_id,
            "previous_status": previous_status,
            "status": cur.status,
            "terminal": is_terminal(cur.status, terminal),
            "observed_at": isoformat_z(cur.observed_at),
            "labels": {str(k): str(v) for k, v in labels.items()},
            "metadata": cur.metadata,
            # Filled later by the failure-enrichment step for failing statuses.
            "failure": None,
        },
    )


def _run_event(kind: str, run: RunLike, now: datetime, new_id: IdFactory, **fields: Any) -> Event:
    """An event about ``run`` at ``now``: its identifiers, ``fields``, then its labels."""
    data = {
        "run_uuid": run.run_uuid,
        "project_id": run.project_id,
        **fields,
        "labels": dict(run.labels),
    }
    return Event(type=kind, id=new_id(now), timestamp=now, data=data)


def not_found_event(run: RunLike, *, now: datetime, new_id: IdFactory = new_event_id) -> Event:
    """``run.not_found``: the API says the run does not exist; polling it stops.

    ``last_status`` is the last status seen (``None`` if the run was never found at all).
    """
    return _run_event(
        NOT_FOUND, run, now, new_id, last_status=run.status, observed_at=isoformat_z(now)
    )


def stuck_event(
    run: RunLike, *, since: datetime, now: datetime, new_id: IdFactory = new_event_id
) -> Event:
    """``run.stuck``: ``run`` has kept its current non-terminal status since ``since``.

    ``stuck_seconds`` is the whole number of seconds spent in that status so far.
    """
    if run.status is None:
        raise ValueError("a run without a status cannot be stuck")
    return _run_event(
        STUCK,
        run,
        now,
        new_id,
        status=run.status,
        since=isoformat_z(since),
        stuck_seconds=max(0, int((now - since).total_seconds())),
    )
