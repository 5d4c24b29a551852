"""Events: the one message shape every notifier receives.

An :class:`Event` is immutable and JSON-ready. Its ``id`` is minted once, when the event is
recorded, and then stored: every retry and every restart re-sends the same id, which receivers
use as the idempotency key. ``data`` stays a plain JSON mapping because event types differ in
their fields and because the event is persisted and replayed as JSON.

Pure module: no I/O, no clock of its own (callers pass ``now``), no randomness unless given.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATUS_CHANGED = "run.status_changed"
NOT_FOUND = "run.not_found"
STUCK = "run.stuck"
# Grouped types, made by the dispatcher (digest) and the roll-up tracker;
# see watcher.delivery.digest.
DIGEST = "digest"
GROUP_COMPLETED = "run_group.completed"
RUN_GROUP_LABEL = "run_group"  # the label that names a run's group (e.g. its RunGroupId)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def isoformat_z(moment: datetime) -> str:
    """``2026-11-27T10:00:00.123Z``: UTC, millisecond precision, as the interface shows."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Inverse of :func:`isoformat_z`; accepts any RFC 3339 form ``fromisoformat`` knows."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def new_event_id(now: datetime, random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A ULID-style id (``evt_`` + 26 Crockford base32 characters) that sorts by time.

    48 bits of milliseconds then 80 random bits, so ids minted later sort later and two
    watchers never collide in practice.
    """
    millis = int(now.timestamp() * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | int.from_bytes(random_bytes(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "evt_" + "".join(reversed(chars))


def stable_event_id(*parts: str) -> str:
    """A deterministic id of the same form for an event derived from others (digest, roll-up).

    The same ``parts`` give the same id on every retry and restart, so receivers deduplicate
    it like any other; unlike :func:`new_event_id` it does not sort by time.
    """
    value = int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:17], "big") >> 6
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "evt_" + "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class RunState:
    """What the watcher knows about one run at one moment.

    ``status`` is the raw status string (``None`` before the first successful poll);
    ``metadata`` is the RunMetadata object exactly as the API returned it.
    """

    run_uuid: str
    project_id: str
    status: str | None
    observed_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """One notification-worthy fact, shaped exactly like the interface's event JSON."""

    type: str
    id: str
    timestamp: datetime
    data: Mapping[str, Any]

    @property
    def run_uuid(self) -> str:
        return str(self.data.get("run_uuid", ""))

    @property
    def project_id(self) -> str:
        return str(self.data.get("project_id", ""))

    @property
    def status(self) -> str | None:
        value = self.data.get("status")
        return None if value is None else str(value)

    @property
    def previous_status(self) -> str | None:
        value = self.data.get("previous_status")
        return None if value is None else str(value)

    @property
    def terminal(self) -> bool:
        return bool(self.data.get("terminal", False))

    @property
    def labels(self) -> Mapping[str, str]:
        labels = self.data.get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "id": self.id,
            "timestamp": isoformat_z(self.timestamp),
            "data": dict(self.data),
        }

    def to_json(self) -> str:
        """Compact JSON; the exact text a webhook body carries (and that gets signed)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Event:
        return cls(
            type=str(raw["type"]),
            id=str(raw["id"]),
            timestamp=parse_iso(str(raw["timestamp"])),
            data=dict(raw["data"]),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        return cls.from_dict(json.loads(text))
