"""What a digest or a run-group roll-up says: where the group stands, what failed and why,
and every other run by its short id.

:func:`grouped_message` renders the two grouped event types as a
:class:`~watcher.notifiers.render.Message` (``render.message_for`` hands them over):

* ``digest``: several events of one notifier folded into one message by
  :mod:`watcher.delivery.digest`; ``data.events`` holds them, ``data.progress`` (optional) the
  whole group's state from the registry;
* ``run_group.completed``: the final roll-up of a run group (:mod:`watcher.rollup`);
  ``data.runs`` lists its runs, ``data.progress`` the counts.

The title carries the counts (``📦 run group rg-x: 37/40 finished, 35 ✅ 2 ❌, 3 running``);
the facts list the failed runs with their failure (task, first error line), then the other
runs by short id, one fact per kind of outcome. ``Message.compact_facts`` holds smaller
versions of those facts, which :func:`~watcher.notifiers.fitting.fit` tries in turn before it
cuts anything else.

How each status counts (failed, succeeded, other, running) is asked of the
:class:`~watcher.statuses.Statuses` passed in, the same vocabulary the single-event messages
and enrichment use.

Invariants: at every level every run is counted (the title and each fact's label carry exact
counts), and a list is only ever shortened with an explicit ``+K more``, never silently. At
most :data:`MAX_FACTS` facts, so no destination's field limit (Slack: 10) drops one. Pure:
no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watcher.events import DIGEST, NOT_FOUND, STATUS_CHANGED, STUCK, Event
from watcher.notifiers.render import Message, clip, failure_of, first_line, format_duration
from watcher.statuses import Category, Severity, Statuses

Facts = tuple[tuple[str, str], ...]

MAX_FACTS = 10
SHORT_ID = 8

# (category, label, emoji) in the order they are listed; failures come first, in detail.
_KINDS: tuple[tuple[Category, str, str], ...] = (
    ("attention", "Needs attention", "⏰"),
    ("other", "Other finished", "⚠️"),
    ("succeeded", "Succeeded", "✅"),
    ("running", "In progress", "🔄"),
)


@dataclass(frozen=True, slots=True)
class RunLine:
    """One run as a grouped message shows it: its latest state and, if it failed, why."""

    run_uuid: str
    state: str  # "EXECUTOR_ERROR", "stuck in RUNNING for 2h 00m", "not found"
    category: Category
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Level:
    detailed: int  # failed runs shown one per fact, with their reason
    reason_chars: int
    list_chars: int  # 0: counts only


_LEVELS = (_Level(4, 200, 1000), _Level(4, 80, 500), _Level(0, 0, 250), _Level(0, 0, 0))


def _reason(data: Mapping[str, Any]) -> str:
    failure = failure_of(data)
    if failure is None:
        return ""
    message = first_line(failure.message)
    if failure.task and message:
        return f"{failure.task}: {message}"
    return failure.task or message


def line_for(event: Event, statuses: Statuses) -> RunLine:
    """The line for one event of a digest."""
    status = event.status
    if event.type == STATUS_CHANGED:
        category = statuses.category(status, terminal=event.terminal)
        reason = _reason(event.data) if category == "failed" else ""
        return RunLine(event.run_uuid, status or "UNKNOWN", category, reason)
    if event.type == STUCK:
        stuck = event.data.get("stuck_seconds")
        state = f"stuck in {status or 'UNKNOWN'}"
        if isinstance(stuck, int | float):
            state += f" for {format_duration(float(stuck))}"
        return RunLine(event.run_uuid, state, "attention")
    if event.type == NOT_FOUND:
        return RunLine(event.run_uuid, "not found", "attention")
    return RunLine(event.run_uuid, event.type, "other")


def latest_per_run(events: Iterable[Event], statuses: Statuses) -> list[RunLine]:
    """One line per run, from its latest event, in the order the runs first appear."""
    lines: dict[str, RunLine] = {}
    for event in events:
        # Updating a key keeps its first position: runs stay in order of appearance.
        lines[event.run_uuid or f"event:{event.id}"] = line_for(event, statuses)
    return list(lines.values())


def lines_from_runs(runs: Iterable[Mapping[str, Any]], statuses: Statuses) -> list[RunLine]:
    """Lines from a roll-up's ``data.runs`` entries."""
    lines = []
    for run in runs:
        status = run.get("status")
        category = statuses.category(
            None if status is None else str(status),
            terminal=bool(run.get("terminal")),
            stopped=bool(run.get("stopped")),
        )
        state = "not found" if run.get("stopped") else str(status or "UNKNOWN")
        reason = _reason(run) if category == "failed" else ""
        lines.append(RunLine(str(run.get("run_uuid", "")), state, category, reason))
    return lines


def tally(lines: Iterable[RunLine]) -> dict[Category, int]:
    """How many lines fall in each category (every category present, zeros included)."""
    counts: dict[Category, int] = {
        "failed": 0,
        "attention": 0,
        "other": 0,
        "succeeded": 0,
        "running": 0,
    }
    for line in lines:
        counts[line.category] += 1
    return counts


def counts_text(succeeded: int, failed: int, other: int, running: int) -> str:
    """``35 ✅ 2 ❌ 1 ⚠️, 3 running``: zero counts of ⚠️ and running are left out."""
    text = f"{succeeded} ✅ {failed} ❌"
    if other:
        text += f" {other} ⚠️"
    if running:
        text += f", {running} running"
    return text


def listing(lines: Sequence[RunLine], *, budget: int, with_state: bool) -> str:
    """Short ids within ``budget`` characters, then ``+K more`` for the ones left out.

    With ``with_state`` the ids are grouped by state: ``RUNNING: 1a2b3c4d, 5e6f7a8b; QUEUED:
    9c0d1e2f``. A ``budget`` of 0 gives the count alone.
    """
    if budget <= 0:
        return f"{len(lines)} runs"
    groups: dict[str, list[str]] = {}
    for line in lines:
        groups.setdefault(line.state if with_state else "", []).append(line.run_uuid[:SHORT_ID])
    text, shown, total = "", 0, len(lines)
    for state, ids in groups.items():
        for index, short in enumerate(ids):
            if index:
                piece = ", "
            elif state:
                piece = f"; {state}: " if text else f"{state}: "
            else:
                piece = ", " if text else ""
            candidate = text + piece + short
            left = total - shown - 1
            reserve = len(f" +{left} more") if left else 0
            if len(candidate) + reserve > budget:
                return f"{text} +{total - shown} more".strip()
            text, shown = candidate, shown + 1
    return text


def _facts(lines: Sequence[RunLine], scope: Facts, level: _Level) -> Facts:
    facts = list(scope)
    failed = [line for line in lines if line.category == "failed"]
    detailed = failed[: level.detailed]
    for line in detailed:
        value = line.state
        if line.reason:
            value += f" · {clip(line.reason, level.reason_chars)}"
        facts.append((f"❌ {line.run_uuid[:SHORT_ID]}", value))
    rest = failed[len(detailed) :]
    if rest:
        label = "Also failed" if detailed else "Failed"
        facts.append(
            (f"❌ {label} ({len(rest)})", listing(rest, budget=level.list_chars, with_state=True))
        )
    for category, label, emoji in _KINDS:
        group = [line for line in lines if line.category == category]
        if group:
            text = listing(group, budget=level.list_chars, with_state=category != "succeeded")
            facts.append((f"{emoji} {label} ({len(group)})", text))
    return tuple(facts[:MAX_FACTS])


def _severity(counts: Mapping[Category, int]) -> Severity:
    if counts["failed"]:
        return "failure"
    if counts["attention"] or counts["other"]:
        return "warning"
    if counts["running"]:
        return "info"
    return "success"


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _scope_name(data: Mapping[str, Any]) -> str:
    group_by, group = str(data.get("group_by", "")), str(data.get("group", "") or "")
    if group_by == "run_group" and group:
        return f"run group {group}"
    if group_by == "project":
        return f"project {group or '(default)'}"
    if group_by == "run_group":
        return "runs without a run group"
    return "all runs"


def grouped_message(event: Event, statuses: Statuses) -> Message:
    """The message for a ``digest`` or ``run_group.completed`` event."""
    data = event.data
    progress = data.get("progress") if isinstance(data.get("progress"), Mapping) else None
    project = str(data.get("project_id", "") or "")
    if event.type == DIGEST:
        raw_events = data.get("events") or []
        events = [Event.from_dict(raw) for raw in raw_events if isinstance(raw, Mapping)]
        lines = latest_per_run(events, statuses)
        counts = tally(lines)
        scope = _scope_name(data)
        local = counts_text(
            counts["succeeded"],
            counts["failed"],
            counts["other"] + counts["attention"],
            counts["running"],
        )
        if progress is not None:
            finished = f"{_int(progress.get('finished'))}/{_int(progress.get('total'))} finished"
            title = f"📦 {scope}: {finished}, " + counts_text(
                _int(progress.get("succeeded")),
                _int(progress.get("failed")),
                _int(progress.get("other")),
                _int(progress.get("running")),
            )
            summary = f"This digest: {len(events)} updates for {len(lines)} runs, {local}"
        else:
            title = f"📦 {scope}: {len(lines)} runs, {local}"
            summary = f"This digest: {len(events)} updates for {len(lines)} runs"
        scope_facts: Facts = (("Project", project),) if project else ()
        note = ""
    else:
        runs = data.get("runs") or []
        lines = lines_from_runs((run for run in runs if isinstance(run, Mapping)), statuses)
        counts = tally(lines)
        seen = progress or {
            "total": len(lines),
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "other": counts["other"] + counts["attention"],
        }
        total = _int(seen.get("total"))
        group = str(data.get("run_group", "") or "")
        title = f"🏁 run group {group} finished: {total}/{total}, " + counts_text(
            _int(seen.get("succeeded")), _int(seen.get("failed")), _int(seen.get("other")), 0
        )
        summary = f"all {total} runs of the group have finished"
        scope_facts = (("Project", project),) if project else ()
        omitted = _int(data.get("runs_omitted"))
        note = f"{omitted} more runs are counted above but not listed." if omitted else ""
    levels = [_facts(lines, scope_facts, level) for level in _LEVELS]
    return Message(
        event_id=event.id,
        timestamp=event.to_dict()["timestamp"],
        severity=_severity(counts),
        title=clip(title, 250),
        summary=summary,
        facts=levels[0],
        note=note,
        compact_facts=tuple(levels[1:]),
    )
