"""Bytes per event on disk: a state file grown through the store API the way the daemon writes.

Why: the state file's size decides the volume a lab must provision (``[state]
retention_days`` bounds how many events it keeps; this benchmark measures what each one costs).
Each run is tracked with realistic labels, then recorded the way the poller records it: the
first observation and every later transition of a simulated run (``detect`` on RunMetadata
from the simulator's own generator), plus one ``run.stuck`` event, each routed to two
notifiers whose outbox rows are then marked delivered. After each size the WAL is
checkpointed and the file's size (all pages, indexes and free pages included) is divided by
the number of events.

``--old DIR`` also runs the same growth against another copy of the ``watcher`` package (for
example ``git archive <commit> watcher | tar -x -C DIR``), alternating old and new for each
size, so both sides see the same machine load.

    .venv/bin/python benchmarks/store_size_bench.py --sizes 30000,120000 --old /tmp/w5-old

``--prune`` then deletes every run of the new side's file in retention's own steps (50 runs,
about 250 events, per transaction) and prints how long the steps held the write lock.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOTIFIERS = ("slack", "webhook")
FAILED_MESSAGE = "Workflow failed: task bwa_mem (shard 3) exited with code 137 (OOMKilled)"


def grow(path: Path, sizes: list[int]) -> list[dict[str, Any]]:
    """Grow the file at ``path`` past each size in turn; one measurement per size."""
    from watcher.events import RunState
    from watcher.simulator.config import SimulatorConfig
    from watcher.simulator.metadata import Statics, is_failure, run_metadata
    from watcher.simulator.runs import RunBook
    from watcher.statuses import DEFAULT_TERMINAL
    from watcher.store import Store, TrackRequest
    from watcher.transitions import detect, stuck_event

    terminal = frozenset(DEFAULT_TERMINAL)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    book = RunBook(SimulatorConfig(seed=7), mono=0.0, wall=start.timestamp())
    statics = Statics()
    results: list[dict[str, Any]] = []
    events = runs = 0
    store = Store.open(path)
    began = time.perf_counter()
    try:
        for size in sizes:
            while events < size:
                run = book.submit(mono=0.0, wall=start.timestamp() + runs * 17.0)
                runs += 1
                labels = {
                    "run_group": run.run_group_id,
                    "sample": run.user_defined_id,
                    "team": "genomics-core",
                }
                store.track([TrackRequest(run.run_uuid, run.project_id, labels)])
                prev: RunState | None = None
                for step in book.lifecycles.transitions(run, 10.0**9):
                    elapsed = step.at - run.created_wall
                    snap = book.lifecycles.snapshot(run, elapsed)
                    message = FAILED_MESSAGE if snap.ended and is_failure(snap.status) else ""
                    meta = run_metadata(run, snap, error_message=message, statics=statics)
                    at = datetime.fromtimestamp(step.at, UTC)
                    cur = RunState(run.run_uuid, run.project_id, snap.status, at, labels, meta)
                    event = detect(prev, cur, terminal=terminal)
                    if event is None:
                        continue
                    store.record_observation(cur, event, notifiers=NOTIFIERS)
                    events += 1
                    if prev is not None and prev.status == "QUEUED":
                        stuck = stuck_event(cur, since=at, now=at + timedelta(hours=2))
                        if store.record_event(stuck, notifiers=NOTIFIERS):
                            events += 1
                    prev = cur
                for delivery in store.pending_deliveries(limit=1000):
                    store.mark_delivered(delivery.id)
            with sqlite3.connect(path) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                counts = {
                    table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                    for table in ("runs", "events", "outbox")
                }
            size_bytes = path.stat().st_size + _wal_size(path)
            results.append(
                {
                    "events": counts["events"],
                    "runs": counts["runs"],
                    "outbox_rows": counts["outbox"],
                    "file_bytes": size_bytes,
                    "bytes_per_event": round(size_bytes / counts["events"], 1),
                    "grow_seconds": round(time.perf_counter() - began, 1),
                }
            )
    finally:
        store.close()
    return results


def prune_steps(path: Path, batch_runs: int) -> dict[str, Any]:
    """Delete every run of the grown file in retention's own steps; time each transaction."""
    from watcher.store import Store

    far = datetime(2100, 1, 1, tzinfo=UTC)
    took: list[float] = []
    with Store.open(path) as store:
        while True:
            began = time.perf_counter()
            step = store.prune_finished_runs(finished_before=far, limit=batch_runs)
            took.append(time.perf_counter() - began)
            if not step.more:
                break
    took.sort()
    return {
        "steps": len(took),
        "batch_runs": batch_runs,
        "p50_ms": round(took[len(took) // 2] * 1000, 2),
        "p99_ms": round(took[int(len(took) * 0.99)] * 1000, 2),
        "max_ms": round(took[-1] * 1000, 2),
    }


def _wal_size(path: Path) -> int:
    wal = Path(str(path) + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def _child(sizes: list[int], prune: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="store-size-") as tmp:
        path = Path(tmp) / "state.db"
        results = grow(path, sizes)
        if prune:
            results[-1]["prune"] = prune_steps(path, batch_runs=50)
        print(json.dumps(results))


def _run_side(tree: Path, size: int, prune: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--sizes", str(size), *(["--prune"] * prune)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.splitlines()[-1])[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="30000,120000", help="event counts, comma-separated")
    parser.add_argument("--old", type=Path, help="a folder holding the old watcher package")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="then delete every run in retention's steps (50 runs each) and time the steps",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.child:
        _child(sizes, args.prune)
        return
    print(f"load average: {os.getloadavg()}")
    sides = [("new", REPO)] + ([("old", args.old.resolve())] if args.old else [])
    print(f"{'side':4} {'events':>8} {'runs':>7} {'file MB':>8} {'bytes/event':>12} {'s':>6}")
    for size in sizes:
        for name, tree in sides:
            r = _run_side(tree, size, args.prune and name == "new")
            print(
                f"{name:4} {r['events']:>8} {r['runs']:>7} {r['file_bytes'] / 1e6:>8.1f} "
                f"{r['bytes_per_event']:>12.1f} {r['grow_seconds']:>6.1f}",
                flush=True,
            )
            if "prune" in r:
                print(f"     prune steps: {r['prune']}", flush=True)
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
