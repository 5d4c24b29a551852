"""Silences: deliveries an operator asked not to send, for a while ("we are rerunning this group,
stop the noise"), as Alertmanager's silences do for alerts.

A :class:`Silence` has matchers (``KEY=VALUE``, all must hold), the notifiers it applies to
(all when none are named) and a time span ``[starts_at, ends_at)``. Events are still recorded
as usual; the dispatcher settles a delivery whose event a silence matches as ``silenced``
instead of sending it (see :mod:`watcher.delivery.dispatcher`). This module is pure: no I/O,
no clock of its own (callers pass ``now``).

Keys (:data:`KEYS`) are matched against the event as delivered: ``type``, and from ``data``
``run_uuid``, ``project_id``, ``status`` and ``labels`` (``label.NAME``). Values are compared
exactly, except ``run_uuid``, which is stored lower-case like the registry's. An event without
the field (a digest has no ``run_uuid``) does not match a matcher on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from watcher.events import Event, isoformat_z

KEYS = ("run_uuid", "project_id", "status", "type")
LABEL_PREFIX = "label."
MAX_MATCHERS = 16
MAX_VALUE_CHARS = 256
MAX_COMMENT_CHARS = 1000
MAX_DURATION = timedelta(days=3650)
# How long an ended silence stays listed "for the record" before it is deleted.
KEEP_ENDED = timedelta(days=7)

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

SilenceState = Literal["active", "pending", "expired"]


class SilenceError(ValueError):
    """A silence that cannot be made as asked; the message says why (no secret in it)."""


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a matcher key, or ``None`` when it is one."""
    if key in KEYS:
        return None
    if key.startswith(LABEL_PREFIX) and key[len(LABEL_PREFIX) :].strip():
        return None
    return f"unknown key {key!r}: use {', '.join(KEYS)} or label.NAME"


def parse_matcher(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as ``(key, value)``; raises :class:`SilenceError`."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise SilenceError(f"{text!r}: expected KEY=VALUE")
    return key, value


def check_matchers(matchers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Matchers as a mapping, normalised; raises :class:`SilenceError` naming the bad one."""
    found: dict[str, str] = {}
    for key, value in matchers:
        problem = key_problem(key)
        if problem is not None:
            raise SilenceError(problem)
        if key in found:
            raise SilenceError(f"key {key!r} given twice (all matchers must hold)")
        if not value or len(value) > MAX_VALUE_CHARS or not value.isprintable():
            raise SilenceError(
                f"{key}: the value must be 1 to {MAX_VALUE_CHARS} printable characters"
            )
        found[key] = value.lower() if key == "run_uuid" else value
    if not found:
        raise SilenceError("at least one matcher is needed")
    if len(found) > MAX_MATCHERS:
        raise SilenceError(f"at most {MAX_MATCHERS} matchers")
    return found


def parse_duration(text: str) -> timedelta:
    """``30s``, ``90m``, ``2h``, ``1d`` as a positive :class:`timedelta` (at most 3650 days)."""
    found = _DURATION.fullmatch(text.strip())
    shown = repr(text if len(text) <= 32 else text[:31] + "…")
    if found is None:
        raise SilenceError(f"duration {shown}: expected a number and a unit s, m, h or d (90m)")
    digits = found.group(1).lstrip("0") or "0"
    limit = MAX_DURATION.total_seconds()
    if len(digits) > 12 or int(digits) * _UNITS[found.group(2)] > limit:
        raise SilenceError(f"duration {shown}: too long, at most {MAX_DURATION.days}d")
    span = timedelta(seconds=int(digits) * _UNITS[found.group(2)])
    if span <= timedelta(0):
        raise SilenceError(f"duration {shown}: must be more than 0")
    return span


def parse_time(text: str) -> datetime:
    """An ISO 8601 date and time with ``Z`` or a UTC offset, e.g. ``2026-11-27T18:00:00Z``,
    ``2026-11-27T18:00+08:00`` or ``2026-11-27 18:00:00.5Z``; a time without an offset is
    refused (whose local time would it be?)."""
    cleaned = text.strip()
    if cleaned[-1:] in ("Z", "z"):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise SilenceError(
            f"time {text!r}: expected ISO 8601 such as 2026-11-27T18:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise SilenceError(f"time {text!r}: add Z or a UTC offset (+08:00)")
    return moment


def check_comment(comment: str) -> str:
    if len(comment) > MAX_COMMENT_CHARS:
        raise SilenceError(f"comment: at most {MAX_COMMENT_CHARS} characters")
    return comment


def event_value(event: Event, key: str) -> str | None:
    """The event's value for a matcher ``key`` (``None``: the event has no such field)."""
    if key == "type":
        return event.type
    if key.startswith(LABEL_PREFIX):
        labels = event.data.get("labels")
        if not isinstance(labels, Mapping):
            return None
        value = labels.get(key[len(LABEL_PREFIX) :])
    else:
        value = event.data.get(key)
    if value is None:
        return None
    text = str(value)
    return text.lower() if key == "run_uuid" else text


@dataclass(frozen=True, slots=True)
class Silence:
    """One silence as stored. ``notifiers`` empty: every notifier."""

    id: int
    matchers: Mapping[str, str]
    notifiers: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime
    comment: str = ""
    created_at: datetime | None = None

    def state(self, now: datetime) -> SilenceState:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def applies_to(self, notifier: str) -> bool:
        return not self.notifiers or notifier in self.notifiers

    def matches(self, event: Event) -> bool:
        return all(event_value(event, key) == value for key, value in self.matchers.items())

    def to_json_dict(self, now: datetime) -> dict[str, Any]:
        """The object ``silence list --json`` and ``/v1/silences`` show."""
        return {
            "id": self.id,
            "matchers": dict(self.matchers),
            "notifiers": list(self.notifiers),
            "starts_at": isoformat_z(self.starts_at),
            "ends_at": isoformat_z(self.ends_at),
            "comment": self.comment,
            "created_at": None if self.created_at is None else isoformat_z(self.created_at),
            "state": self.state(now),
        }


@dataclass(frozen=True, slots=True)
class Silences:
    """The silences a dispatcher applies: the stored ones not ended, as one snapshot."""

    items: Sequence[Silence] = field(default_factory=tuple)

    def silencing(self, event: Event, notifier: str, now: datetime) -> Silence | None:
        """The first silence active at ``now`` that withholds ``event`` from ``notifier``."""
        for silence in self.items:
            if (
                silence.starts_at <= now < silence.ends_at
                and silence.applies_to(notifier)
                and silence.matches(event)
            ):
                return silence
        return None
