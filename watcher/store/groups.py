"""Run groups in the registry: the tracked runs that share a ``run_group`` label.

A run's group is the value of its ``run_group`` label (:data:`~watcher.events.RUN_GROUP_LABEL`),
set when it is tracked (``track --label run_group=...``, ``POST /v1/runs``, a ``[[watch]]``
entry's labels). Digests read a group's progress here and the roll-up tracker asks whether
every run of a group has finished.

Invariants: read-only; only tracked runs are members; a run whose status is not yet known
counts as not finished. :meth:`GroupsMixin.group_members` reads the ``runs_by_group``
expression index (the roll-up tracker asks on the event loop each time a run of a group
finishes: a registry scan there cost ~0.4 s at 300,000 runs), so its ``json_extract`` is
spelled literally, exactly as the index's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from watcher.events import NOT_FOUND, RUN_GROUP_LABEL, STATUS_CHANGED
from watcher.store.db import StoreBase, load_labels, to_ts
from watcher.store.models import Row

_PATH = f'$."{RUN_GROUP_LABEL}"'
_GROUP_MEMBERS = (
    "SELECT run_uuid, project_id, status, terminal, stopped, labels FROM runs "
    "WHERE tracked = 1 AND json_extract(labels, '$.\"run_group\"') = ? "
    "ORDER BY tracked_at, rowid"
)
assert RUN_GROUP_LABEL == "run_group"  # spelled literally above and in the index


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One tracked run of a group; ``stopped``: the API no longer knows it."""

    run_uuid: str
    project_id: str
    status: str | None
    terminal: bool
    stopped: bool
    labels: dict[str, str]

    @property
    def finished(self) -> bool:
        return self.terminal or self.stopped


def group_member(row: Row) -> GroupMember:
    """A member from ``run_uuid, project_id, status, terminal, stopped, labels``."""
    return GroupMember(
        run_uuid=row[0],
        project_id=row[1],
        status=row[2],
        terminal=bool(row[3]),
        stopped=bool(row[4]),
        labels=load_labels(row[5]),
    )


class GroupsMixin(StoreBase):
    def group_members(self, run_group: str) -> list[GroupMember]:
        """The tracked runs labelled ``run_group``, in the order they were tracked."""
        rows = self._db.query(_GROUP_MEMBERS, (run_group,))
        return [group_member(row) for row in rows]

    def has_event(self, event_id: str) -> bool:
        """Whether an event with this id was ever recorded (and not pruned)."""
        return bool(self._db.query("SELECT 1 FROM events WHERE id = ?", (event_id,)))

    def groups_finished_since(self, since: datetime) -> list[str]:
        """Groups with a run that reached a terminal status at or after ``since``.

        Only runs whose status change was recorded as an event count, so runs tracked with
        a terminal status as a silent baseline (discovery's first pass) do not.
        """
        rows = self._db.query(
            "SELECT DISTINCT json_extract(r.labels, ?) FROM runs r "
            "WHERE r.tracked = 1 AND r.terminal = 1 AND r.status_since >= ? "
            "AND json_extract(r.labels, ?) IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM events e WHERE e.run_uuid = r.run_uuid "
            "AND e.type IN (?, ?))",
            (_PATH, to_ts(since), _PATH, STATUS_CHANGED, NOT_FOUND),
        )
        return sorted(str(row[0]) for row in rows if row[0] not in (None, ""))
