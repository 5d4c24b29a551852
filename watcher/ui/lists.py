"""What the dead letters and silences pages show, and the silence form's fields (issue 16).

Why apart from :mod:`watcher.ui.views`: these pages drive issue 14's operations (redelivery,
silences), so their views are read through the async store interface
(:class:`~watcher.store.api.AsyncStore`) by :mod:`watcher.ui.actions`; this module holds only
pure shaping and parsing, no I/O.

The silence form is a match builder: one field per matcher key of
:mod:`watcher.delivery.silencing` (``run_uuid``, ``project_id``, ``status``, ``type``) and a
few ``label.NAME`` rows, a duration or an end time, the notifiers (none ticked: all) and a
comment. Its rules are the CLI's and the admin API's (:func:`check_matchers`,
:func:`parse_duration`, :func:`parse_time`), so a silence made here is the one ``silence add``
would make. The same fields, as query parameters, prefill the form (the run page's "silence
this run" and "silence its run group" links).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from multidict import MultiMapping

from watcher.delivery.silencing import (
    KEYS,
    LABEL_PREFIX,
    Silence,
    SilenceError,
    check_comment,
    check_matchers,
    parse_duration,
    parse_time,
)
from watcher.store.history import DeadLetter

DEAD_PER_PAGE = 50
LABEL_ROWS = 3
_MAX_FIELD = 1000


# A form or a query string (aiohttp hands both as multidicts).
Fields = MultiMapping[Any]


def _text(fields: Fields, name: str) -> str:
    value = fields.get(name, "")
    return value.strip()[:_MAX_FIELD] if isinstance(value, str) else ""


def _texts(fields: Fields, name: str) -> list[str]:
    return [v.strip()[:_MAX_FIELD] for v in fields.getall(name, []) if isinstance(v, str)]


@dataclass(frozen=True, slots=True)
class SilenceForm:
    """The silence form's values, as given (shown again when one is wrong)."""

    keys: dict[str, str] = field(default_factory=dict)  # run_uuid, project_id, status, type
    labels: list[tuple[str, str]] = field(default_factory=list)  # LABEL_ROWS rows
    duration: str = "2h"
    until: str = ""
    notifiers: tuple[str, ...] = ()
    comment: str = ""

    @classmethod
    def from_fields(cls, fields: Fields, *, defaults: bool = False) -> SilenceForm:
        """From a POSTed form, or (``defaults``) from a query string that prefills it."""
        names, values = _texts(fields, "label_name"), _texts(fields, "label_value")
        labels = [(n, v) for n, v in zip(names, values, strict=False) if n or v]
        for key, value in fields.items():  # label.NAME=VALUE, as the CLI writes it
            if key.startswith(LABEL_PREFIX) and isinstance(value, str):
                labels.append((key[len(LABEL_PREFIX) :], value.strip()[:_MAX_FIELD]))
        labels = labels[:LABEL_ROWS] + [("", "")] * (LABEL_ROWS - len(labels))
        duration = _text(fields, "duration")
        return cls(
            keys={key: _text(fields, key) for key in KEYS},
            labels=labels,
            duration=duration or ("2h" if defaults else ""),
            until=_text(fields, "until"),
            notifiers=tuple(dict.fromkeys(_texts(fields, "notifier"))),
            comment=_text(fields, "comment"),
        )

    def matchers(self) -> dict[str, str]:
        """The matchers given, checked; :class:`SilenceError` naming the bad one."""
        pairs = [(key, value) for key, value in self.keys.items() if value]
        for name, value in self.labels:
            if value and not name:
                raise SilenceError(f"a label row with the value {value!r} needs a label name")
            if name:
                pairs.append((LABEL_PREFIX + name, value))
        return check_matchers(pairs)

    def ends_at(self, now: datetime) -> datetime:
        """When the silence ends: ``duration`` from now, or ``until`` (UTC unless it says)."""
        if bool(self.duration) == bool(self.until):
            raise SilenceError("give either a duration (2h) or an end time, not both")
        if self.duration:
            return now + parse_duration(self.duration)
        text = self.until
        if "T" in text and not _has_offset(text):
            text += "Z"  # the form's field says UTC
        moment = parse_time(text)
        if moment <= now:
            raise SilenceError("the end time must be in the future")
        return moment

    def checked_notifiers(self, known: Collection[str] | None) -> list[str]:
        if known is not None:
            unknown = [name for name in self.notifiers if name not in known]
            if unknown:
                raise SilenceError(f"{len(unknown)} notifier(s) the daemon does not have")
        return list(self.notifiers)

    def checked_comment(self) -> str:
        return check_comment(self.comment)


def _has_offset(text: str) -> bool:
    clock = text.partition("T")[2]
    return clock[-1:] in ("Z", "z") or "+" in clock or "-" in clock


@dataclass(frozen=True, slots=True)
class SilenceRow:
    silence: Silence
    state: str  # active, pending, expired
    matchers: list[str]  # KEY=VALUE


@dataclass(frozen=True, slots=True)
class SilencesView:
    current: list[SilenceRow]  # active or still to start
    ended: list[SilenceRow]  # ended less than 7 days ago
    notifiers: list[str]


def silences_view(found: Sequence[Silence], now: datetime, notifiers: list[str]) -> SilencesView:
    rows = [
        SilenceRow(s, s.state(now), [f"{k}={v}" for k, v in sorted(s.matchers.items())])
        for s in found
    ]
    return SilencesView(
        current=[r for r in rows if r.state != "expired"],
        ended=sorted(
            (r for r in rows if r.state == "expired"), key=lambda r: r.silence.ends_at, reverse=True
        ),
        notifiers=notifiers,
    )


@dataclass(frozen=True, slots=True)
class DeadLettersView:
    letters: list[DeadLetter]
    total: int
    next_before: int | None  # the next page's ``before``, when there is one


def dead_letters_view(found: Sequence[DeadLetter], total: int) -> DeadLettersView:
    """``found``: up to :data:`DEAD_PER_PAGE` + 1 rows (the extra one says "more")."""
    shown = list(found[:DEAD_PER_PAGE])
    more = len(found) > DEAD_PER_PAGE
    return DeadLettersView(shown, total, shown[-1].id if more and shown else None)


def delivery_ids(fields: Fields, *, limit: int) -> list[int]:
    """The ticked dead letters' ids; :class:`ValueError` for anything but ids."""
    ids: list[int] = []
    for value in _texts(fields, "id"):
        if not value.isdigit() or len(value) > 18 or int(value) <= 0:
            raise ValueError("a dead letter id is a positive integer")
        ids.append(int(value))
    if len(ids) > limit:
        raise ValueError(f"at most {limit} dead letters at a time")
    return sorted(set(ids))
