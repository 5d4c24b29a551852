"""A run's history and the dead letters as JSON and as text: one rendering for the CLI
(``history``, ``dead-letters``) and the admin API (``GET /v1/runs/{uuid}/events``,
``GET /v1/dead-letters``), so both say the same thing in the same keys (interface.md).

JSON keeps values as stored (an event object exactly as delivered, plus its ``deliveries``);
text lines go through :func:`watcher.display.printable`, since labels, statuses and error
texts are other people's text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from watcher.display import printable
from watcher.events import isoformat_z
from watcher.store.history import DeadLetter, DeliveryRecord, HistoryEntry

DEAD_LETTER_HEADER = ("DELIVERY_ID", "NOTIFIER", "DEAD_AT", "ATTEMPTS", "RUN_UUID", "TYPE", "ERROR")


def history_json(entries: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
    """Each event as delivered, with ``deliveries: [{notifier, state, attempts, last_error}]``."""
    return [
        {
            **entry.event.to_dict(),
            "deliveries": [
                {
                    "notifier": d.notifier,
                    "state": d.state,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                }
                for d in entry.deliveries
            ],
        }
        for entry in entries
    ]


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "delivery_id": letter.id,
        "notifier": letter.notifier,
        "event_id": letter.event_id,
        "run_uuid": letter.run_uuid,
        "type": letter.type,
        "dead_at": isoformat_z(letter.dead_at),
        "attempts": letter.attempts,
        "last_error": letter.last_error,
    }


def _delivery_text(d: DeliveryRecord) -> str:
    tries = f"{d.attempts} attempt{'s' if d.attempts != 1 else ''}"
    if d.state == "delivered":  # attempts counts the successful try
        return f"{d.notifier} delivered" + (f" after {tries}" if d.attempts > 1 else "")
    if d.state == "silenced":
        return f"{d.notifier} silenced" + (f" ({d.last_error})" if d.last_error else "")
    if d.state == "dead":
        return f"{d.notifier} dead #{d.id} after {tries}: {d.last_error or 'no error recorded'}"
    if d.attempts:
        return f"{d.notifier} pending ({tries}, last: {d.last_error or '-'})"
    return f"{d.notifier} pending"


def history_line(entry: HistoryEntry) -> str:
    """``TIME  STATUS  TYPE  EVENT_ID  notifier state; ...`` with controls escaped."""
    event = entry.event
    status = event.status or "-"
    if event.previous_status:
        status = f"{event.previous_status} -> {status}"
    deliveries = "; ".join(_delivery_text(d) for d in entry.deliveries) or "no deliveries"
    cells = (isoformat_z(event.timestamp), status, event.type, event.id, deliveries)
    return printable("  ".join(cells))


def dead_letter_cells(letter: DeadLetter) -> tuple[str, ...]:
    cells = (
        str(letter.id),
        letter.notifier,
        isoformat_z(letter.dead_at),
        str(letter.attempts),
        letter.run_uuid or "-",
        letter.type,
        letter.last_error or "-",
    )
    return tuple(printable(cell) for cell in cells)
