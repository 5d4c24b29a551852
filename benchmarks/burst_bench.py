"""A run group moving together, through the whole daemon: change → recorded → webhook.

Why: real Omics work is a run group of hundreds or thousands of samples that are queued,
start and finish within seconds of each other. In ``strategy = "batch"`` every change used
to wait for a confirming GetRunStatus (20/s), so a burst queued behind that budget; now the
DescribeRuns ``Run`` itself is recorded. This benchmark measures both side by side.

Setup: one simulator child process (``benchmarks/common.py sim``, 20 requests/s per action,
counted at arrival) and, per scenario and per daemon version, a fresh group submitted through
``POST /_sim/groups`` (``--count`` runs, every change of the group within ``--spread``
seconds, phase durations ``--durations``), tracked with ``omics-watcher track``, then the real
daemon (``omics-watcher run``, ``strategy = "batch"``, ``interval_seconds = --interval``) with
one webhook notifier posting to a receiver in this process. It runs until every final status
reached the webhook (or ``--timeout``). Versions alternate in one run: this tree, then the
``--peer`` git revision (default: the commit before batch recorded from the list) extracted
with ``git archive`` and run with ``PYTHONPATH``.

Figures per version: latency from the simulator's change to (a) the event's ``recorded_at``
in the state file and (b) the webhook's arrival, for every final status and for every event;
finals missing; events that are false (a status the run never had after the one before it),
backward or repeated; requests per action, the most in any 1 s window, throttled.

Usage::

    .venv/bin/python benchmarks/burst_bench.py [--scenario burst|lag|both] [--peer REV|none]
        [--interval 2] [--seed 1] [--json]

``burst``: 1,000 runs finishing within 16 s, no list lag. ``lag``: 300 runs, DescribeRuns
2 s behind GetRunStatus. Failing runs (the simulator's default outcome mix) go through the
daemon's failure enrichment like any failure; their figures are shown apart as well.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Receiver,
    Sim,
    daemon,
    http_json,
    percentile,
    simulator,
)

from watcher.store import Store

WEBHOOK_SECRET = "whsec_YnVyc3QtYmVuY2gtc2VjcmV0LWtleSEh"
PEER = "31d7cfa"  # main before "batch: record ... from the DescribeRuns Run itself"
SUCCESS_LIKE = frozenset({"SUCCESS", "COMPLETE", "CANCELED"})


@dataclass(frozen=True)
class Scenario:
    name: str
    count: int
    spread: float
    lag: float
    durations: tuple[float, float, float]


SCENARIOS = {
    "burst": Scenario("burst", 1000, 16.0, 0.0, (8.0, 3.0, 5.0)),
    "lag": Scenario("lag", 300, 16.0, 2.0, (8.0, 3.0, 5.0)),
}


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def extract(rev: str, into: Path) -> Path:
    """``git archive REV`` unpacked into ``into`` (the repository is only read)."""
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True
    ).stdout
    archive = into / "peer.tar"
    archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    return into / "src"


def batch_config(path: Path) -> None:
    text = path.read_text()
    path.write_text(text.replace("[polling]\n", '[polling]\nstrategy = "batch"\n', 1))


def match(
    events: list[dict[str, Any]], truth: list[tuple[float, str]]
) -> tuple[list[tuple[dict[str, Any], float]], int]:
    """Pair each event with the true change it reports (in order); count the bad ones.

    Bad: a status the run did not take after the previous event's (false, backward or
    repeated), or a ``previous_status`` that is not the previous event's status.
    """
    pairs: list[tuple[dict[str, Any], float]] = []
    bad = 0
    k = 0
    previous: str | None = None
    for event in events:
        if event["previous_status"] != previous:
            bad += 1  # the chain of previous statuses is broken
        j = k
        while j < len(truth) and truth[j][1] != event["status"]:
            j += 1
        if j == len(truth):
            bad += 1
            continue
        pairs.append((event, truth[j][0]))
        k = j + 1
        previous = event["status"]
    return pairs, bad


def figures(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def measure(
    sim: Sim, scenario: Scenario, *, source: Path | None, label: str, args: argparse.Namespace
) -> dict[str, Any]:
    http_json(f"{sim.endpoint}/_sim/list-lag", method="POST", body={"seconds": scenario.lag})
    group = http_json(
        f"{sim.endpoint}/_sim/groups",
        method="POST",
        body={
            "count": scenario.count,
            "spread_seconds": scenario.spread,
            "durations": list(scenario.durations),
        },
    )
    uuids: list[str] = group["run_uuids"]
    wanted = set(uuids)
    hook = {"name": "bench", "type": "webhook", "url": "", "secret": WEBHOOK_SECRET}
    with Receiver() as receiver:
        hook["url"] = receiver.url
        with daemon(sim, rate=20, interval=args.interval, notifiers=[hook], source=source) as d:
            batch_config(d.config_path)
            if source is not None:
                # ``-m`` puts the working directory (this tree) first on sys.path; -P keeps
                # it off, so the peer's tree (PYTHONPATH, set by daemon()) is imported.
                d.command = lambda: [sys.executable, "-P", "-m", "watcher"]  # type: ignore[method-assign]
            d.track(uuids)
            http_json(f"{sim.endpoint}/_sim/stats/reset", method="POST", body={})
            d.start()
            q, i, r = scenario.durations
            deadline = time.monotonic() + q + i + r + scenario.spread + args.timeout
            while time.monotonic() < deadline:
                assert d.proc is not None
                if d.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited: {d.log_tail()}")
                finals = {
                    e["data"]["run_uuid"]
                    for _, e in list(receiver.received.values())
                    if e["type"] == "run.status_changed" and e["data"]["terminal"]
                }
                if len(finals & wanted) == len(wanted):
                    break
                time.sleep(0.5)
            time.sleep(1.0)
            d.stop()
            with sqlite3.connect(f"file:{d.state_path}?mode=ro", uri=True) as conn:
                recorded_at = dict(conn.execute("SELECT id, recorded_at FROM events").fetchall())
            # Bodies through the store (its codec reads either version's rows).
            with Store.open(d.state_path) as store:
                stored = list(reversed(store.events(limit=1_000_000)))
        arrivals = {eid: at for eid, (at, _) in receiver.received.items()}
    stats = sim.stats()
    truth: dict[str, list[tuple[float, str]]] = {u: [] for u in uuids}
    for change in sim.timeline():
        if change["run_uuid"] in wanted:  # from the creation (None -> QUEUED) on
            truth[change["run_uuid"]].append((change["at"], change["to"]))
    events: dict[str, list[dict[str, Any]]] = {u: [] for u in uuids}
    for event in stored:
        if event.type == "run.status_changed" and event.run_uuid in wanted:
            events[event.run_uuid].append({"id": event.id, **event.data})
    return summarise(label, scenario, truth, events, recorded_at, arrivals, stats)


def summarise(
    label: str,
    scenario: Scenario,
    truth: dict[str, list[tuple[float, str]]],
    events: dict[str, list[dict[str, Any]]],
    recorded_at: dict[str, float],
    arrivals: dict[str, float],
    stats: dict[str, Any],
) -> dict[str, Any]:
    to_record: list[float] = []
    to_hook: list[float] = []
    final_record: dict[str, list[float]] = {"ok": [], "failed": []}
    final_hook: dict[str, list[float]] = {"ok": [], "failed": []}
    bad = missing = undelivered = 0
    for run_uuid, changes in truth.items():
        pairs, wrong = match(events[run_uuid], changes)
        bad += wrong
        final_at, final = changes[-1]
        kind = "ok" if final in SUCCESS_LIKE else "failed"
        found = False
        for event, at in pairs:
            if event["previous_status"] is None:
                continue  # the first observation (QUEUED before the group moved)
            to_record.append(recorded_at[event["id"]] - at)
            if event["id"] in arrivals:
                to_hook.append(arrivals[event["id"]] - at)
            else:
                undelivered += 1
            if event["status"] == final and at == final_at:
                found = True
                final_record[kind].append(recorded_at[event["id"]] - at)
                if event["id"] in arrivals:
                    final_hook[kind].append(arrivals[event["id"]] - at)
        missing += not found
    actions = ("GetRunStatus", "DescribeRuns", "GetRunCalls", "GetRunJobLog")
    return {
        "version": label,
        "scenario": scenario.name,
        "runs": scenario.count,
        "spread_seconds": scenario.spread,
        "list_lag_seconds": scenario.lag,
        "changes": sum(len(c) - 1 for c in truth.values()),  # the creation is no change
        "events": len(to_record),
        "false_backward_repeated": bad,
        "finals_missing": missing,
        "undelivered": undelivered,
        "final_to_recorded": {k: figures(v) for k, v in final_record.items()},
        "final_to_webhook": {k: figures(v) for k, v in final_hook.items()},
        "final_within_5s": sum(1 for v in final_record.values() for x in v if x <= 5.0),
        "change_to_recorded": figures(to_record),
        "change_to_webhook": figures(to_hook),
        "requests": {a: stats["requests"].get(a, 0) for a in actions},
        "max_per_1s_window": {a: stats["max_window_arrivals"].get(a, 0) for a in actions},
        "throttled": stats["throttled_total"],
    }


def fmt(f: dict[str, Any]) -> str:
    if not f["n"]:
        return "n=0"
    return (
        f"n={f['n']} p50 {f['p50']:.2f} p95 {f['p95']:.2f} p99 {f['p99']:.2f} max {f['max']:.2f} s"
    )


def report(results: list[dict[str, Any]], args: argparse.Namespace, load: float) -> None:
    print("command: python benchmarks/burst_bench.py " + " ".join(sys.argv[1:]))
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; interval_seconds {args.interval:g}; "
        f"20 requests/s per action"
    )
    for r in results:
        print(
            f"\n[{r['scenario']}] {r['version']}: {r['runs']} runs, changes within "
            f"{r['spread_seconds']:g} s, list lag {r['list_lag_seconds']:g} s; "
            f"{r['changes']} changes, {r['events']} events"
        )
        for kind in ("ok", "failed"):
            print(f"  final ({kind:6}) change → recorded: {fmt(r['final_to_recorded'][kind])}")
            print(f"  final ({kind:6}) change → webhook:  {fmt(r['final_to_webhook'][kind])}")
        print(f"  finals recorded within 5 s: {r['final_within_5s']} of {r['runs']}")
        print(f"  every event, change → recorded: {fmt(r['change_to_recorded'])}")
        print(f"  every event, change → webhook:  {fmt(r['change_to_webhook'])}")
        print(
            f"  false/backward/repeated {r['false_backward_repeated']}, finals missing "
            f"{r['finals_missing']}, undelivered {r['undelivered']}, throttled {r['throttled']}"
        )
        req, win = r["requests"], r["max_per_1s_window"]
        print("  requests (max in 1 s): " + ", ".join(f"{a} {req[a]} ({win[a]})" for a in req))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["burst", "lag", "both"], default="both")
    parser.add_argument("--peer", default=PEER, help="git revision to compare with, or none")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=40.0, help="extra seconds to wait")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    names = ["burst", "lag"] if args.scenario == "both" else [args.scenario]
    results = []
    with tempfile.TemporaryDirectory(prefix="burst-bench-") as tmp:
        versions: list[tuple[str, Path | None]] = [("this tree", None)]
        if args.peer != "none":
            versions.append((f"peer {args.peer}", extract(args.peer, Path(tmp))))
        with simulator({"runs": 0, "seed": args.seed, "rate_limit": 20}) as sim:
            for name in names:
                for label, source in versions:
                    say(f"{name}: {label} ...")
                    results.append(
                        measure(sim, SCENARIOS[name], source=source, label=label, args=args)
                    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results, args, load)


if __name__ == "__main__":
    main()
