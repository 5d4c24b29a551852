"""Output for people: what ``run`` prints on a terminal, and the demo's event lines.

Why: on a terminal the JSON log put a run's new status at column 240 of a 283-character line,
and a webhook down for an hour printed a line per retry. So on a terminal (``[logging]
format = "auto"`` with standard error a TTY, or ``"console"``) the daemon prints:

- one line per recorded event, status first, in the demo's format (:func:`event_line`):
  ``10:00:01  run 1e2e5bc8          RUNNING → SUCCESS         ✅``;
- one summary line per delivery problem (:class:`ConsoleRenderer`): ``delivery to ops
  failing: HTTP 503 (3 pending, retrying)`` when it starts or its cause changes, again at most
  every :data:`REPEAT_SECONDS` while it lasts, a line when deliveries start being
  dead-lettered, and ``delivery to ops recovered`` when one gets through again (and one
  line the first time a silence holds back a notifier's deliveries, not one per event);
  the ``log`` notifier's lines show its message's title;
- every other log line short: time, level, event name, then ``key=value`` pairs, each value
  and the whole line clipped (:data:`LINE_CHARS`).

JSON logs (``format = "json"``, or ``auto`` off a terminal) do not come here and are unchanged.
The renderer is a structlog processor and keeps its state in the instance (one per
:func:`watcher.service.logs.configure` call); it runs on the event loop's thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from watcher.display import printable
from watcher.events import NOT_FOUND, STATUS_CHANGED, STUCK, Event

ICONS = {"SUCCESS": "✅", "EXECUTOR_ERROR": "❌", "CANCELED": "🚫", NOT_FOUND: "❓", STUCK: "⏳"}
STATUS_WIDTH = 15
REPEAT_SECONDS = 60.0
LINE_CHARS = 160
VALUE_CHARS = 80
REASON_CHARS = 90
# Keys every line has, or that say nothing to a person reading a terminal.
_SKIPPED = {"event", "level", "timestamp", "logger", "exception", "stack"}


def event_line(event: Event, when: str) -> str:
    """One event, status first: ``WHEN  run 1e2e5bc8          RUNNING → SUCCESS         ✅``.

    ``when`` is what leads the line (the demo: seconds since it started; ``run``: the time).
    Statuses and UUIDs come from the API, so control characters are escaped."""
    short = printable(event.run_uuid[:8])
    if event.type == STATUS_CHANGED:
        before = printable(event.previous_status or "·")
        status = printable(event.status or "")
        icon = ICONS.get(event.status or "", "")
        line = f"{when}  run {short}  {before:>{STATUS_WIDTH}} → {status:<{STATUS_WIDTH}} {icon}"
    elif event.type == STUCK:
        line = f"{when}  run {short}  stuck in {printable(event.status or '?')} {ICONS[STUCK]}"
    else:
        line = f"{when}  run {short}  {printable(event.type)} {ICONS.get(event.type, '')}"
    return line.rstrip()


def clock_time(moment: datetime | None = None) -> str:
    """``HH:MM:SS`` in UTC, like the log's timestamps."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%H:%M:%S")


class EventPrinter:
    """The daemon's ``on_event`` hook on a terminal: :func:`event_line` on ``stream``."""

    def __init__(self, stream: TextIO, *, now: Callable[[], datetime] | None = None) -> None:
        self._stream = stream
        self._now = now or (lambda: datetime.now(UTC))

    def __call__(self, event: Event) -> None:
        self._stream.write(event_line(event, clock_time(self._now())) + "\n")
        self._stream.flush()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Problem:
    """One notifier's deliveries failing: since when, why, which deliveries are waiting."""

    reason: str
    shown_at: float
    pending: set[str] = field(default_factory=set)
    dead: int = 0  # dead-lettered since the last line that counted them
    dead_shown: bool = False


class ConsoleRenderer:
    """The last structlog processor on a terminal: short lines, delivery problems summarised.

    Returns the line to print, or raises :class:`structlog.DropEvent` for a line folded into
    a summary (a retry of a delivery problem already shown, a routine ``notify_delivered``).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._problems: dict[str, _Problem] = {}
        self._silences_shown: set[tuple[str, object]] = set()

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        name = str(event_dict.get("event", ""))
        notifier = event_dict.get("notifier")
        if isinstance(notifier, str) and name in _DELIVERY:
            text = _DELIVERY[name](self, notifier, event_dict)
            if text is None:
                raise structlog.DropEvent
            return _clip(f"{_when(event_dict)}  {text}", LINE_CHARS)
        return _plain(event_dict)

    # -- delivery events, one notifier at a time ----------------------------------------------

    def _retry(self, notifier: str, fields: MutableMapping[str, Any]) -> str | None:
        reason = _clip(str(fields.get("error", "unknown error")), REASON_CHARS)
        now = self._clock()
        problem = self._problems.get(notifier)
        fresh = problem is None or problem.reason != reason
        if problem is None:
            problem = self._problems[notifier] = _Problem(reason=reason, shown_at=now)
        problem.pending.add(_delivery_key(fields))
        if not fresh and now - problem.shown_at < REPEAT_SECONDS:
            return None
        problem.reason, problem.shown_at = reason, now
        still = "" if fresh else "still "
        return f"delivery to {notifier} {still}failing: {reason} ({self._counts(problem)})"

    def _dead(self, notifier: str, fields: MutableMapping[str, Any]) -> str | None:
        reason = _clip(str(fields.get("error", "unknown error")), REASON_CHARS)
        problem = self._problems.setdefault(
            notifier, _Problem(reason=reason, shown_at=self._clock())
        )
        problem.pending.discard(_delivery_key(fields))
        problem.dead += 1
        if problem.dead_shown and self._clock() - problem.shown_at < REPEAT_SECONDS:
            return None
        problem.dead_shown, problem.shown_at = True, self._clock()
        counted, problem.dead = problem.dead, 0
        return f"delivery to {notifier}: {counted} dead-lettered ({reason}); see dead-letters"

    def _refused(self, notifier: str, fields: MutableMapping[str, Any]) -> str | None:
        reason = _clip(str(fields.get("error", "unknown error")), REASON_CHARS)
        problem = self._problems.get(notifier)
        if problem is not None and problem.reason == reason:
            return None  # its dead-letter line follows
        self._problems[notifier] = _Problem(reason=reason, shown_at=self._clock(), dead_shown=True)
        return f"delivery to {notifier} refused: {reason} (not retried; see dead-letters)"

    def _silenced(self, notifier: str, fields: MutableMapping[str, Any]) -> str | None:
        silence = fields.get("silence_id")
        if (notifier, silence) in self._silences_shown:
            return None
        self._silences_shown.add((notifier, silence))
        return f"delivery to {notifier}: silence {silence} applies (events recorded, not sent)"

    def _logged(self, notifier: str, fields: MutableMapping[str, Any]) -> str | None:
        """The ``log`` notifier's line: its title (the event line said the rest)."""
        return f"{notifier}: {fields.get('title') or fields.get('event_type', '')}"

    def _delivered(self, notifier: str, fields: MutableMapping[str, Any]) -> str | None:
        problem = self._problems.pop(notifier, None)
        if problem is None:
            return None  # the event's own line said it; a routine delivery adds nothing
        extra = f"; {problem.dead} more dead-lettered meanwhile" if problem.dead else ""
        return f"delivery to {notifier} recovered: delivering again{extra}"

    @staticmethod
    def _counts(problem: _Problem) -> str:
        text = f"{len(problem.pending)} pending, retrying"
        if problem.dead:
            text += f"; {problem.dead} dead-lettered"
        return text


_DELIVERY: dict[str, Callable[[ConsoleRenderer, str, MutableMapping[str, Any]], str | None]] = {
    "notify_retry": ConsoleRenderer._retry,
    "notify_dead_lettered": ConsoleRenderer._dead,
    "notify_failed": ConsoleRenderer._refused,
    "notify_delivered": ConsoleRenderer._delivered,
    "notify_silenced": ConsoleRenderer._silenced,
    "notify_event": ConsoleRenderer._logged,
}


def _delivery_key(fields: MutableMapping[str, Any]) -> str:
    for key in ("delivery_id", "event_id", "group"):
        if fields.get(key) is not None:
            return f"{key}:{fields[key]}"
    return "?"


def _when(fields: MutableMapping[str, Any]) -> str:
    stamp = fields.get("timestamp")
    if isinstance(stamp, str):
        try:
            return clock_time(datetime.fromisoformat(stamp.replace("Z", "+00:00")))
        except ValueError:
            pass
    return clock_time()


def _plain(fields: MutableMapping[str, Any]) -> str:
    """``HH:MM:SS  level    event  key=value ...``, clipped; a traceback below it."""
    level = str(fields.get("level", "info"))
    parts = [f"{_when(fields)}  {level:<7} {fields.get('event', '')}"]
    for key, value in fields.items():
        if key in _SKIPPED or value is None:
            continue
        text = value if isinstance(value, str) else repr(value)
        parts.append(f"{key}={_clip(' '.join(text.split()), VALUE_CHARS)}")
    line = _clip(" ".join(parts), LINE_CHARS)
    extra = fields.get("exception")
    if isinstance(extra, str) and extra:
        line += "\n" + extra.rstrip("\n")
    return line
