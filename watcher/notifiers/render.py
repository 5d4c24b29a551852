"""What a notification says, independent of where it goes.

:func:`message_for` turns an :class:`~watcher.events.Event` into a :class:`Message`: a title
such as ``✅ SUCCESS · run 84232c68 · prj-peaceful-pink-bird-631828``, a status line
(``RUNNING → SUCCESS``), facts (run, project, duration, labels, ...) and, for failures, the
failing task, its error and the end of its stderr. Every event type gets a message, including
types this version does not know (rendered generically from ``data``).

:class:`Renderer` applies a notifier's optional user templates on top and falls back to the
default (logging ``notify_template_failed``) when a template fails for one event. Making the
result fit a destination is :mod:`watcher.notifiers.fitting`'s job. Digests and run-group
roll-ups are rendered by :mod:`watcher.notifiers.grouped`, without user templates.

What a status means (✅ ❌ ⚠️ 🔄, whether failure details are shown) comes from the
:class:`~watcher.statuses.Statuses` the notifier was built with.

Pure apart from the logger given to :class:`Renderer`: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jinja2
from structlog.typing import FilteringBoundLogger

from watcher.events import DIGEST, GROUP_COMPLETED, NOT_FOUND, STATUS_CHANGED, STUCK, Event
from watcher.notifiers.templates import TemplateRenderError, compile_template, render_template
from watcher.statuses import DEFAULT_STATUSES, Severity, Statuses

ELLIPSIS = "…"
TITLE_MAX = 250

_EMOJI: dict[Severity, str] = {"success": "✅", "failure": "❌", "warning": "⚠️", "info": "🔄"}
# Many events in one message: rendered by watcher.notifiers.grouped; user templates (written
# for one run's event) are not applied to them.
GROUPED_TYPES = frozenset({DIGEST, GROUP_COMPLETED})


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a run failed: the first failing task, its error, the end of its stderr."""

    task: str = ""
    message: str = ""
    stderr_tail: str = ""

    def __bool__(self) -> bool:
        return bool(self.task or self.message or self.stderr_tail)

    def lines(self, task: str, error: str, escape: Callable[[str], str] = str) -> list[str]:
        """The "failed task" and "error" lines in a destination's markup: ``task`` and
        ``error`` are formats for the (``escape``d) value, ``"**Error:** {}"``; an empty
        field has no line."""
        out = []
        if self.task:
            out.append(task.format(escape(self.task)))
        if self.message:
            out.append(error.format(escape(self.message)))
        return out


@dataclass(frozen=True, slots=True)
class Message:
    """Destination-neutral content of one notification."""

    event_id: str
    timestamp: str
    severity: Severity
    title: str  # emoji, headline, short run id, project
    summary: str  # the status line: "RUNNING → SUCCESS"
    facts: tuple[tuple[str, str], ...] = ()
    failure: Failure | None = None
    note: str = ""
    body: str | None = None  # a user body template's text; replaces summary details
    body_html: str | None = None  # the same template rendered with HTML autoescaping
    # Smaller alternatives to ``facts`` (digests, roll-ups), tried in turn by fitting.fit.
    compact_facts: tuple[tuple[tuple[str, str], ...], ...] = ()


def clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` in at most ``limit`` characters, the cut marked with ``…``."""
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    if keep_end:
        return ELLIPSIS + text[len(text) - limit + 1 :]
    return text[: limit - 1] + ELLIPSIS


def clip_bytes(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, never splitting a character."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    marker = len(ELLIPSIS.encode())
    if limit < marker:
        return ""
    return encoded[: limit - marker].decode("utf-8", "ignore") + ELLIPSIS


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    if not lines:
        return ""
    return lines[0] + (f" {ELLIPSIS}" if len(lines) > 1 else "")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _moment(value: Any) -> datetime | None:
    """A metadata time: RFC 3339, or ``YYYY-MM-DD HH:MM:SS``; naive times are taken as UTC."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def duration_of(data: Mapping[str, Any]) -> str | None:
    """From StartTime (else SubmitTime) to EndTime (else the observation), if both are known."""
    metadata = data.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    start = _moment(metadata.get("StartTime")) or _moment(metadata.get("SubmitTime"))
    end = _moment(metadata.get("EndTime")) or _moment(data.get("observed_at"))
    if start is None or end is None or end < start:
        return None
    return format_duration((end - start).total_seconds())


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def failure_of(data: Mapping[str, Any]) -> Failure | None:
    """``data.failure``, else the metadata's ErrorMessage; ``None`` when there is nothing."""
    raw = data.get("failure")
    failure = Failure()
    if isinstance(raw, Mapping):
        failure = Failure(
            task=_text(raw.get("task")),
            message=_text(raw.get("message")),
            stderr_tail=_text(raw.get("stderr_tail")),
        )
    metadata = data.get("metadata")
    if not failure.message and isinstance(metadata, Mapping):
        error = _text(metadata.get("ErrorMessage")).strip()
        if error:
            failure = dataclasses.replace(failure, message=error)
    return failure or None


def _labels(data: Mapping[str, Any]) -> str:
    labels = data.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        return ""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items(), key=lambda kv: str(kv[0])))


def _title(emoji: str, headline: str, run_uuid: str, project: str) -> str:
    parts = [f"{emoji} {headline}".strip()]
    if run_uuid:
        parts.append(f"run {run_uuid[:8]}")
    if project:
        parts.append(project)
    return clip(" · ".join(parts), TITLE_MAX)


def message_for(event: Event, statuses: Statuses = DEFAULT_STATUSES) -> Message:
    """The default message for any event type; ``statuses`` says what each status means."""
    if event.type in GROUPED_TYPES:
        # Imported here: grouped builds on this module's helpers.
        from watcher.notifiers.grouped import grouped_message

        return grouped_message(event, statuses)
    data = event.data
    run_uuid, project = event.run_uuid, event.project_id
    status = event.status
    facts: list[tuple[str, str]] = [("Run", run_uuid), ("Project", project or "(default)")]
    failure: Failure | None = None
    note = ""
    if event.type == STATUS_CHANGED:
        severity = statuses.severity(status)
        headline = status or "UNKNOWN"
        summary = f"{event.previous_status or 'new'} → {headline}"
        duration = duration_of(data)
        if duration:
            facts.append(("Duration", duration))
        if severity == "failure" or isinstance(data.get("failure"), Mapping):
            # The vocabulary enriches exactly what renders as a failure; a ``failure`` from
            # an event recorded under other rules (an older version) is still shown.
            failure = failure_of(data)
    elif event.type == STUCK:
        severity = "warning"
        headline = f"STUCK in {status or 'UNKNOWN'}"
        stuck = data.get("stuck_seconds")
        since = _text(data.get("since"))
        for_how_long = format_duration(float(stuck)) if isinstance(stuck, int | float) else "?"
        summary = f"{status or 'UNKNOWN'} for {for_how_long}"
        facts.append(("Status", status or "UNKNOWN"))
        facts.append(("Stuck for", for_how_long))
        if since:
            facts.append(("Since", since))
    elif event.type == NOT_FOUND:
        severity = "warning"
        headline = "NOT FOUND"
        summary = "the API no longer knows this run"
        note = "The run is no longer polled."
        if status:
            facts.append(("Last status", status))
    else:
        severity = "info"
        headline = event.type
        summary = f"{event.type}" + (f": {status}" if status else "")
        skip = {"run_uuid", "project_id", "labels", "metadata", "failure"}
        for key, value in data.items():
            if key not in skip and isinstance(value, str | int | float | bool) and value != "":
                facts.append((str(key), str(value)))
    labels = _labels(data)
    if labels:
        facts.append(("Labels", labels))
    observed = _text(data.get("observed_at"))
    if observed:
        facts.append(("Observed", observed))
    emoji = "⏰" if event.type == STUCK else "❓" if event.type == NOT_FOUND else _EMOJI[severity]
    return Message(
        event_id=event.id,
        timestamp=event.to_dict()["timestamp"],
        severity=severity,
        title=_title(emoji, headline, run_uuid, project),
        summary=summary,
        facts=tuple(facts),
        failure=failure,
        note=note,
    )


def plain_text(message: Message) -> str:
    """The message as plain text (email text part, logs, WeCom text messages)."""
    if message.body is not None:
        return message.body
    lines = [message.summary, ""]
    lines += [f"{label}: {value}" for label, value in message.facts]
    if message.failure:
        lines.append("")
        lines += message.failure.lines("Failed task: {}", "Error: {}")
        if message.failure.stderr_tail:
            lines += ["", "stderr (tail):", message.failure.stderr_tail]
    if message.note:
        lines += ["", message.note]
    return "\n".join(lines).strip()


def template_context(event: Event, message: Message) -> dict[str, Any]:
    """Names a user template can use; every one exists for every event type."""
    raw = event.to_dict()
    data = raw["data"]
    failure = message.failure
    return {
        "event": raw,
        "data": data,
        "type": event.type,
        "id": event.id,
        "timestamp": raw["timestamp"],
        "run_uuid": event.run_uuid,
        "run": event.run_uuid[:8],
        "project_id": event.project_id,
        "status": event.status,
        "previous_status": event.previous_status,
        "terminal": event.terminal,
        "labels": dict(event.labels),
        "metadata": data.get("metadata") or {},
        "failure": None if failure is None else dataclasses.asdict(failure),
        "duration": duration_of(data),
        "severity": message.severity,
        "title": message.title,
        "summary": message.summary,
        "default_body": plain_text(message),
    }


class Renderer:
    """A notifier's message maker: the default message plus its optional user templates."""

    def __init__(
        self,
        *,
        notifier: str,
        logger: FilteringBoundLogger,
        title_template: str | None = None,
        body_template: str | None = None,
        html: bool = False,
        statuses: Statuses = DEFAULT_STATUSES,
    ) -> None:
        self._notifier = notifier
        self._statuses = statuses
        self._logger = logger
        self._title = None if title_template is None else compile_template(title_template)
        self._body = None if body_template is None else compile_template(body_template)
        self._body_html = (
            compile_template(body_template, autoescape=True)
            if html and body_template is not None
            else None
        )

    def _apply(
        self, template: jinja2.Template, context: Mapping[str, Any], key: str, event: Event
    ) -> str | None:
        try:
            return render_template(template, context)
        except TemplateRenderError as exc:
            self._logger.warning(
                "notify_template_failed",
                notifier=self._notifier,
                template=key,
                error=str(exc),
                event_id=event.id,
                run_uuid=event.run_uuid,
            )
            return None

    def render(self, event: Event) -> Message:
        message = message_for(event, self._statuses)
        if (self._title is None and self._body is None) or event.type in GROUPED_TYPES:
            return message
        context = template_context(event, message)
        changes: dict[str, Any] = {}
        if self._title is not None:
            title = self._apply(self._title, context, "title_template", event)
            if title:
                changes["title"] = clip(" ".join(title.split()), TITLE_MAX)
        if self._body is not None:
            body = self._apply(self._body, context, "body_template", event)
            if body is not None:
                changes["body"] = body
                if self._body_html is not None:
                    changes["body_html"] = self._apply(
                        self._body_html, context, "body_template", event
                    )
        return dataclasses.replace(message, **changes)
