"""How long the daemon's writes wait on retention while runs it may not delete pile up.

Why: retention keeps a finished run whose deliveries are still owed (a notifier muted for
weeks keeps every run routed to it). A retention step passes over those runs to find the
ones it may delete, which costs time in proportion to them; on SQLite, time spent inside the
write transaction is time every other writer (the daemon's polling, its delivery marks)
waits for the lock.

What it does: a SQLite state file with ``--kept`` finished runs whose two events each owe a
delivery, and ``--settled`` finished runs whose deliveries were made; then retention's own
steps (``prune_finished_runs``, 50 runs each, as the daemon's pruner calls them) run in a
thread while the main thread makes one small write every millisecond on a connection of its
own (as the daemon's loop does), timing how long each write waited. Printed: steps, their
time, and the writes' wait (p50, p99, max). ``--old DIR`` runs the same against another copy
of the ``watcher`` package (``git archive <commit> watcher | tar -x -C DIR``), alternating
with this tree for ``--rounds`` rounds::

    .venv/bin/python benchmarks/retention_owed_bench.py --kept 100000 --old /tmp/k6-old
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TERMINAL = frozenset({"SUCCESS"})


def _grow(path: Path, kept: int, settled: int) -> None:
    from watcher.events import RunState
    from watcher.store import Store, TrackRequest
    from watcher.transitions import detect

    with Store.open(path, clock=lambda: T0) as store:
        uuids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(kept + settled)]
        store.track([TrackRequest(u, "prj") for u in uuids])
        for uuid in uuids:
            running = RunState(uuid, "prj", "RUNNING", T0)
            done = RunState(uuid, "prj", "SUCCESS", T0)
            first = detect(None, running, terminal=TERMINAL)
            store.record_observation(running, first, notifiers=["chat"])
            store.record_observation(
                done, detect(running, done, terminal=TERMINAL), notifiers=["chat"]
            )
    conn = sqlite3.connect(path)
    with conn:  # the settled runs' rows delivered (the runs are in tracking order)
        conn.execute(
            "UPDATE outbox SET state = 'delivered', settled_at = 0 WHERE event_seq IN "
            "(SELECT seq FROM events WHERE run_uuid >= ?)",
            (f"{kept:08x}",),
        )
    conn.close()


def _child(kept: int, settled: int) -> dict[str, Any]:
    from watcher.store import Store

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.db"
        _grow(path, kept, settled)
        steps: list[float] = []
        done = threading.Event()

        def prune() -> None:
            with Store.open(path) as store:
                far = T0 + timedelta(days=90)
                while True:
                    began = time.perf_counter()
                    step = store.prune_finished_runs(finished_before=far, limit=50)
                    steps.append(time.perf_counter() - began)
                    if not step.more:
                        break
                    time.sleep(0.05)  # the pruner's pause between steps
            done.set()

        writer = sqlite3.connect(path, isolation_level=None, timeout=30)
        waits: list[float] = []
        worker = threading.Thread(target=prune)
        worker.start()
        while not done.is_set():
            began = time.perf_counter()
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE counters SET value = value WHERE name = 'change_seq'")
            writer.execute("COMMIT")
            waits.append(time.perf_counter() - began)
            time.sleep(0.001)
        worker.join()
        left = writer.execute("SELECT count(*) FROM runs").fetchone()[0]
        writer.close()
    waits.sort()
    steps.sort()
    return {
        "kept": kept,
        "settled": settled,
        "runs_left": left,
        "steps": len(steps),
        "step_p50_ms": round(steps[len(steps) // 2] * 1000, 2),
        "step_max_ms": round(steps[-1] * 1000, 2),
        "writes": len(waits),
        "write_p50_ms": round(waits[len(waits) // 2] * 1000, 3),
        "write_p99_ms": round(waits[int(len(waits) * 0.99)] * 1000, 3),
        "write_max_ms": round(waits[-1] * 1000, 2),
    }


def _side(tree: Path | None, kept: int, settled: int) -> dict[str, Any]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    args = [sys.executable, __file__, "--child", "--kept", str(kept), "--settled", str(settled)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kept", type=int, default=100_000, help="finished runs still owing")
    parser.add_argument("--settled", type=int, default=2_000, help="finished runs settled")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--old", type=Path, help="a folder holding the old watcher package")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.kept, args.settled)))
        return
    sides: list[tuple[str, Path | None]] = [("new", None)]
    if args.old is not None:
        sides.append(("old", args.old))
    for round_ in range(args.rounds):
        for name, tree in sides if round_ % 2 == 0 else reversed(sides):
            print(f"round {round_ + 1} {name}: {_side(tree, args.kept, args.settled)}", flush=True)


if __name__ == "__main__":
    main()
