"""Discovery's part of the registry: tracking runs found by ``[[watch]]`` entries.

Invariants:
- :meth:`DiscoveryMixin.track_discovered` inserts only runs the registry has never seen.
  ``runs`` rows are deleted only by retention, once finished (untrack keeps the row with
  ``tracked = 0``), so a run the user untracked is never tracked again by discovery (nor a
  pruned one: discovery skips those), and a run already tracked keeps its
  project and labels. It is idempotent and one transaction, so a restart (or two daemons on
  one file) cannot track a run twice.
- A *baseline* gives a newly tracked run its current status without an event or outbox
  row: used for what a watch entry finds on its first pass, which is history, not news.
  Later observations compare against it like against any recorded status.
- A watch entry's first pass is marked done only after its last page, so a pass cut short
  by a crash or an API error is repeated as a first pass (runs it already tracked are
  simply known by then).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from watcher.store.db import StoreBase, dump_json
from watcher.store.models import DiscoveredRun
from watcher.store.registry import next_change_seq


def distinct_runs(runs: Sequence[DiscoveredRun]) -> dict[str, DiscoveredRun]:
    """The runs by UUID, the first of each kept; an empty UUID is a caller's bug."""
    found: dict[str, DiscoveredRun] = {}
    for run in runs:
        if not run.run_uuid:
            raise ValueError("run_uuid must not be empty")
        found.setdefault(run.run_uuid, run)
    return found


class DiscoveryMixin(StoreBase):
    def track_discovered(
        self, runs: Sequence[DiscoveredRun], *, baseline: bool, terminal: frozenset[str]
    ) -> list[str]:
        """Track the runs the registry has no row for; returns their UUIDs, in order.

        With ``baseline``, each new run starts with the status discovery saw (``terminal``
        decides whether it is still to be polled), as if it had been polled just now but
        without an event. Without it, the status stays unknown and the first poll reports
        the run (``previous_status: null``) like any newly tracked run.
        """
        found = distinct_runs(runs)
        if not found:
            return []
        now = self._now()
        with self._db.write() as conn:
            known = {
                uuid
                for (uuid,) in conn.execute(
                    "SELECT run_uuid FROM runs WHERE run_uuid IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(found)),),
                )
            }
            new = [run for uuid, run in found.items() if uuid not in known]
            if not new:
                return []
            seq = next_change_seq(conn)
            rows: list[tuple[Any, ...]] = []
            for run in new:
                labels = dump_json({str(k): str(v) for k, v in run.labels.items()})
                status, is_terminal, seen_at = (
                    (run.status, int(run.status in terminal), now) if baseline else (None, 0, None)
                )
                # status_since and last_polled_at: "seen now", when there is a baseline
                rows.append(
                    (
                        run.run_uuid,
                        run.project_id,
                        labels,
                        now,
                        seq,
                        status,
                        is_terminal,
                        seen_at,
                        seen_at,
                    )
                )
            conn.executemany(
                "INSERT INTO runs (run_uuid, project_id, labels, tracked_at, change_seq, status, "
                "terminal, status_since, last_polled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return [run.run_uuid for run in new]

    def discovery_done(self, watch_key: str) -> bool:
        """Whether the watch entry ``watch_key`` completed its first pass."""
        rows = self._db.query("SELECT 1 FROM discovery WHERE watch_key = ?", (watch_key,))
        return bool(rows)

    def mark_discovery_done(self, watch_key: str) -> None:
        """Remember that ``watch_key``'s first pass completed (idempotent)."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO discovery (watch_key, first_pass_at) VALUES (?, ?) "
                "ON CONFLICT (watch_key) DO NOTHING",
                (watch_key, self._now()),
            )
