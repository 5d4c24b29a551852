"""What tracking an already tracked run again changed, said out loud.

``track`` (and ``POST /v1/runs``) on a tracked run merges the given labels into the run's own
(given keys overwrite, the others stay) and moves it to a given ``--project-id``; both used
to happen without a word. This module compares the registry entry before and after and
words the difference, one line per run, for the CLI's stderr, the admin API's answer and its
log; nothing here touches the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.store import TrackedRun


def format_labels(labels: Mapping[str, str]) -> str:
    """``{a=1, b=2}`` (sorted by key), ``{}`` when there are none."""
    return "{" + ", ".join(f"{key}={value}" for key, value in sorted(labels.items())) + "}"


def previous_values(before: TrackedRun, after: TrackedRun) -> dict[str, Any]:
    """The fields the call changed, with their values before it (``{}``: nothing changed)."""
    changed: dict[str, Any] = {}
    if dict(before.labels) != dict(after.labels):
        changed["labels"] = dict(before.labels)
    if before.project_id != after.project_id:
        changed["project_id"] = before.project_id
    return changed


def change_lines(before: TrackedRun, after: TrackedRun) -> list[str]:
    """``run X: labels changed {a=1} → {a=2}`` and/or ``run X: project changed A → B``."""
    lines = []
    if dict(before.labels) != dict(after.labels):
        lines.append(
            f"run {after.run_uuid}: labels changed "
            f"{format_labels(before.labels)} → {format_labels(after.labels)}"
        )
    if before.project_id != after.project_id:
        lines.append(
            f"run {after.run_uuid}: project changed "
            f"{before.project_id or '(default)'} → {after.project_id or '(default)'}"
        )
    return lines
