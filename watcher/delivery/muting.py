"""Mute windows: when a notifier must not send, and when it may again.

A notifier that lists ``mute_intervals`` holds every delivery that comes due while one of them
is open; the dispatcher sends what it held once the window ends (see
:mod:`watcher.delivery.dispatcher`). This module only answers questions about time, and does
so purely (no clock, no I/O):

* :func:`windows`: the spans a set of intervals mutes between two instants, as merged UTC
  spans. Overlapping or touching windows (Friday 22:00-24:00, then Saturday all day) are one
  span, so a hold ends only when the last of them does.
* :func:`mute_state`: whether an instant is muted, until when, and until when that answer
  holds (the dispatcher asks again only after that, not at every send).
* :func:`unmuted_seconds`: how much of a span was *not* muted. A held delivery's ``max_age``
  clock counts only that time, so no delivery is dead-lettered for having waited in a window.

The rules, as the configuration states them: an interval mutes on its ``weekdays`` (every day
when none are given), during each of its ``times`` (the whole day when none are given), read
on the wall clock of its ``timezone``. A range whose end is not after its start wraps past
midnight and belongs to the day it starts on: ``fri 22:00-08:00`` mutes from Friday 22:00 to
Saturday 08:00. Times follow daylight saving time: ``22:00-08:00`` lasts 9 or 11 hours on the
nights the clocks move; a time the clocks skip is read with the offset in force before the
change (02:30 on a spring-forward night is 03:30 summer time), a time they repeat as its first
occurrence (PEP 495's ``fold=0``). Windows are half-open: muted from the start, sending again
at the end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
DAY_MINUTES = 24 * 60
# How far ahead one answer looks: past a week, so every weekly pattern is seen whole. A notifier
# muted beyond it (every day, all day) is asked again then, and is still muted.
HORIZON = timedelta(days=8)
_CLOCK = re.compile(r"([0-9]{2}):([0-9]{2})")


def parse_clock(text: str, *, end: bool = False) -> int:
    """``"HH:MM"`` as minutes after midnight; ``"24:00"`` (the end of the day) only for an end."""
    match = _CLOCK.fullmatch(text)
    last = "24:00" if end else "23:59"
    if match is None:
        raise ValueError(f'must be a time of day as "HH:MM" (00:00 to {last})')
    hours, minutes = int(match.group(1)), int(match.group(2))
    total = hours * 60 + minutes
    if minutes > 59 or total > (DAY_MINUTES if end else DAY_MINUTES - 1):
        raise ValueError(f'must be a time of day as "HH:MM" (00:00 to {last})')
    return total


def parse_weekday(text: str) -> int:
    """``"mon"`` .. ``"sun"`` (any case) as ``date.weekday()`` numbers it."""
    name = text.strip().lower()
    if name not in WEEKDAYS:
        raise ValueError(f"unknown weekday {text!r}; expected one of {', '.join(WEEKDAYS)}")
    return WEEKDAYS.index(name)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Local minutes after midnight: ``start`` 0..1439, ``end`` 1..1440 (1440: 24:00).

    An ``end`` not after ``start`` wraps past midnight into the next day.
    """

    start: int
    end: int

    @property
    def length(self) -> int:
        """Nominal minutes (the wall clock's: a DST night makes the real span differ)."""
        wrap = 0 if self.end > self.start else DAY_MINUTES
        return self.end + wrap - self.start


WHOLE_DAY = TimeRange(0, DAY_MINUTES)
EVERY_DAY = frozenset(range(7))


@dataclass(frozen=True, slots=True)
class MuteInterval:
    """One ``[[mute_intervals]]`` table: the days and times (on ``zone``'s clock) it mutes."""

    name: str
    weekdays: frozenset[int] = EVERY_DAY
    times: tuple[TimeRange, ...] = (WHOLE_DAY,)
    zone: tzinfo = UTC


Span = tuple[datetime, datetime]


def _at(day: date, minutes: int, zone: tzinfo) -> datetime:
    """``minutes`` after ``day``'s local midnight on the wall clock, as a UTC instant."""
    wall = datetime.combine(day, time()) + timedelta(minutes=minutes)
    return wall.replace(tzinfo=zone).astimezone(UTC)


def _spans(interval: MuteInterval, since: datetime, until: datetime) -> Iterable[Span]:
    # A window ends at most one day after the day it starts on: begin a day early.
    day = since.astimezone(interval.zone).date() - timedelta(days=1)
    last = until.astimezone(interval.zone).date()
    while day <= last:
        if day.weekday() in interval.weekdays:
            for times in interval.times:
                start = _at(day, times.start, interval.zone)
                end = _at(day, times.start + times.length, interval.zone)
                # Empty when the clocks skip the whole range (02:00-03:00 on a spring night).
                if start < end and end > since and start < until:
                    yield start, end
        day += timedelta(days=1)


def windows(intervals: Iterable[MuteInterval], since: datetime, until: datetime) -> list[Span]:
    """The muted spans (UTC, sorted, merged when they overlap or touch) that meet
    ``[since, until)``; a span may reach outside it."""
    merged: list[Span] = []
    spans = sorted(span for interval in intervals for span in _spans(interval, since, until))
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


@dataclass(frozen=True, slots=True)
class MuteState:
    """The answer for one instant: muted ``until`` then (``None``: not muted), and the
    instants ``[checked, valid_until)`` for which that answer stays true."""

    until: datetime | None
    checked: datetime
    valid_until: datetime

    def holds_at(self, now: datetime) -> bool:
        return self.checked <= now < self.valid_until


def mute_state(
    intervals: Iterable[MuteInterval], now: datetime, *, horizon: timedelta = HORIZON
) -> MuteState:
    """Is ``now`` muted, until when, and how long does the answer hold?

    Muted: until the end of the merged span holding ``now`` (at least ``now + horizon`` when
    it reaches that far). Not muted: the answer holds until the next span starts.
    """
    for start, end in windows(intervals, now, now + horizon):
        if start <= now:  # the first span meeting [now, ...) that began already holds now
            return MuteState(until=end, checked=now, valid_until=end)
        return MuteState(until=None, checked=now, valid_until=start)
    return MuteState(until=None, checked=now, valid_until=now + horizon)


def unmuted_seconds(intervals: Iterable[MuteInterval], since: datetime, until: datetime) -> float:
    """Seconds of ``[since, until)`` outside every mute window (0 when ``until <= since``)."""
    total = (until - since).total_seconds()
    if total <= 0:
        return 0.0
    for start, end in windows(intervals, since, until):
        total -= (min(end, until) - max(start, since)).total_seconds()
    return max(total, 0.0)
