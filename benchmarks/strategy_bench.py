"""Detection latency and request use of per-run versus batch polling, 10,000 active runs.

What it measures, per strategy: for every transition event recorded during the run, the
time from the simulator's change to the event in the state file; the requests sent per
action; the most requests per action in any 1-second window (at the simulator, counted at
arrival); throttled answers.

Setup, all in this process and one event loop (the simulator is cheap next to 40 requests
a second, and in-process it can be *aged* and read exactly):

- One simulator with ``--runs`` active runs: a ``--flapping`` share changes status at random
  (``flapping`` kind, one change every ``--flap-period`` seconds on average, gaps within
  0.5-1.5 periods), the others stay RUNNING. Its clocks are shifted so every run was created
  ``AGE`` seconds ago: the runs are past their start and their changes spread evenly in time.
  The default rate limit (20 per action in any sliding second) applies.
- Each strategy gets a fresh state file seeded in its own steady state: every run tracked,
  its last poll spread evenly over one polling cycle before the start (per-run: runs / rate
  = 500 s for 10,000 runs at 20/s; batch: ``--interval``, since 100 DescribeRuns of 100 runs
  take 5 s at 20/s), with the status the simulator's timeline says it had then. Without this
  a 120 s run of per-run polling would only show its first 500 s cycle.
- The real pollers (:class:`~watcher.polling.per_run.Scheduler`,
  :class:`~watcher.polling.batch.BatchPoller`)
  run for ``--duration`` seconds each, with the real client, pacing limiters (20/s per
  action), recorder and SQLite store.

Latency of an event = its ``observed_at`` in the state file minus the time of the run's first
change after its previous observation (the seeded poll or its previous event): how long the
registry was stale. A run that changed and changed back before its next poll shows up as
the later change, with the staleness counted from the first.

Usage::

    .venv/bin/python benchmarks/strategy_bench.py [--runs 10000] [--duration 120]
        [--interval 5] [--flap-period 300] [--flapping 0.3] [--strategies per-run,batch]
        [--seed 1] [--json]

A correlated burst (``--burst N``): right before each strategy's seeding, ``N`` more runs
of one new run group are submitted (``Simulator.submit_group``): all QUEUED, each changing
to INITIALIZING ``--burst-delay`` seconds later plus its own shift within ``--burst-spread``
seconds (their later phases last an hour, outside the window). So ``--runs 7000 --burst
3000`` is 10,000 active runs of which 3,000 of one group change within one minute; the
report adds the latency of those burst events alone::

    .venv/bin/python benchmarks/strategy_bench.py --runs 7000 --burst 3000 \
        --strategies batch --duration 100

The defaults finish in about 5 minutes. ``--flapping 0.3`` gives about 10 changes a second:
batch spends one GetRunStatus per change, so the change rate must stay under the
GetRunStatus budget (20/s) for batch to keep up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from watcher.events import RunState, parse_iso
from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.limiter import PacingLimiter
from watcher.polling.batch import MAX_BATCH, BatchOptions, BatchPoller
from watcher.polling.common import STATUS_GROUP
from watcher.polling.per_run import Scheduler, SchedulerOptions
from watcher.recorder import Recorder
from watcher.simulator import Simulator, SimulatorConfig, running_simulator
from watcher.sink import EventSink
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.transitions import detect

TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "CANCELED"})
RATE = 20.0  # per action, what the API allows
STRATEGIES = ("per-run", "batch")


def now() -> datetime:
    return datetime.now(UTC)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in [0, 1])."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


class AgedSimulator:
    """A serving simulator whose runs were created ``age`` seconds before it started."""

    def __init__(self, config: SimulatorConfig, age: float) -> None:
        self._config = config
        self._age = age
        self._shift = 0.0
        self._cm: Any = None

    async def __aenter__(self) -> Simulator:
        loop = asyncio.get_running_loop()
        age = self._age
        self._cm = running_simulator(
            self._config,
            monotonic=lambda: loop.time() + self._shift,
            wall=lambda: time.time() - age + self._shift,
        )
        sim: Simulator = await self._cm.__aenter__()
        self._shift = age  # creation now lies ``age`` seconds back, on both clocks
        return sim

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)


def history(sim: Simulator) -> dict[str, list[tuple[float, str]]]:
    """Every run's changes ``(at, status)`` so far, oldest first."""
    out: dict[str, list[tuple[float, str]]] = {}
    for change in sim.timeline():
        out.setdefault(change.run_uuid, []).append((change.at, change.status))
    return out


def status_at(changes: list[tuple[float, str]], at: float) -> str:
    status = changes[0][1]
    for when, value in changes:
        if when > at:
            break
        status = value
    return status


def seed(
    store: Store, sim: Simulator, runs: list[str], *, cycle: float, rng: random.Random
) -> dict[str, float]:
    """Track ``runs``, last polled at evenly spread times over one ``cycle``; their times."""
    started = now().timestamp()
    store.track(TrackRequest(u, sim.project_id) for u in runs)
    changes = history(sim)
    spots = [(k + 0.5) / len(runs) for k in range(len(runs))]
    rng.shuffle(spots)
    polled: dict[str, float] = {}
    for run_uuid, spot in zip(runs, spots, strict=True):
        # Not before the run existed (a burst group is created just before seeding).
        at = max(started - cycle * spot, changes[run_uuid][0][0])
        status = status_at(changes[run_uuid], at)
        moment = datetime.fromtimestamp(at, UTC)
        state = RunState(run_uuid, sim.project_id, status, moment, metadata={"Status": status})
        event = detect(None, state, terminal=TERMINAL)
        # A first observation (previous_status null): the measurement ignores those.
        store.record_observation(state, event, notifiers=[])
        polled[run_uuid] = at
    return polled


def build(
    strategy: str,
    *,
    store: Store,
    client: OmicsClient,
    limiters: dict[str, PacingLimiter],
    args: argparse.Namespace,
) -> Any:
    sink = EventSink(store=SqliteStore(store), route=lambda e: [])
    recorder = Recorder(store=SqliteStore(store), sink=sink, terminal=TERMINAL, wall_clock=now)
    if strategy == "per-run":
        return Scheduler(
            store=SqliteStore(store),
            source=client,
            recorder=recorder,
            options=SchedulerOptions(
                interval_seconds=args.interval,
                rate_per_second=RATE,
                request_timeout_seconds=10,
                terminal=TERMINAL,
            ),
            backlog=lambda: limiters["GetRunStatus"].waiting,
            wall_clock=now,
            rng=random.Random(args.seed),
        )
    return BatchPoller(
        store=SqliteStore(store),
        source=client,
        recorder=recorder,
        options=BatchOptions(
            interval_seconds=args.interval,
            terminal=TERMINAL,
            batch_size=args.batch_size,
            describe_rate_per_second=RATE,
            status_rate_per_second=RATE,
        ),
        describe_backlog=lambda: limiters["DescribeRuns"].waiting,
        status_backlog=lambda: limiters["GetRunStatus"].waiting,
        wall_clock=now,
        rng=random.Random(args.seed),
    )


def latencies(
    store: Store,
    sim: Simulator,
    polled: dict[str, float],
    started: float,
    *,
    only: set[str] | None = None,
) -> list[float]:
    """Staleness at detection for every transition event recorded from ``started`` on (of
    the runs in ``only``, when given)."""
    changes = history(sim)
    last_seen = dict(polled)
    out: list[float] = []
    for event in reversed(store.events(limit=10_000_000)):
        if event.type != "run.status_changed" or event.previous_status is None:
            continue
        observed = parse_iso(event.data["observed_at"]).timestamp()
        if observed < started:
            continue
        if only is not None and event.run_uuid not in only:
            continue
        since = last_seen[event.run_uuid]
        first = next(at for at, _ in changes[event.run_uuid] if at > since)
        out.append(observed - first)
        last_seen[event.run_uuid] = observed
    return out


async def measure(
    strategy: str, sim: Simulator, session: aiohttp.ClientSession, args: argparse.Namespace
) -> dict[str, Any]:
    burst: set[str] = set()
    if args.burst:
        burst_runs = sim.submit_group(
            args.burst,
            spread_seconds=args.burst_spread,
            durations=(args.burst_delay, 3600.0, 3600.0),
            kind="finishing",
        )
        burst = set(burst_runs)
    runs = sim.run_uuids[: args.runs] + [u for u in sim.run_uuids if u in burst]
    active = args.runs + args.burst
    if strategy == "per-run":
        cycle = active / RATE
    else:
        cycle = max(args.interval, math.ceil(active / args.batch_size) / RATE)
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "state.db") as store:
        began = time.monotonic()
        polled = seed(store, sim, runs, cycle=cycle, rng=random.Random(args.seed))
        seeding = time.monotonic() - began
        limiters = {
            "GetRunStatus": PacingLimiter(RATE, group=STATUS_GROUP),  # as the daemon's
            "DescribeRuns": PacingLimiter(RATE),
            "default": PacingLimiter(5),
        }
        client = OmicsClient(
            session=session,
            endpoint=sim.endpoint,
            region="ap-guangzhou",
            credentials=StaticProvider(Credential(sim.secret_id, sim.secret_key), name="bench"),
            limiters=limiters,
            timeout=10,
        )
        poller = build(strategy, store=store, client=client, limiters=limiters, args=args)
        await poller.load()
        sim.reset_stats()
        started = now().timestamp()
        cpu = time.process_time()
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        await asyncio.sleep(args.duration)
        stop.set()
        await task
        ended = now().timestamp()
        cpu = time.process_time() - cpu
        stats = sim.stats(timeline=False)
        values = latencies(store, sim, polled, started)
        in_burst = latencies(store, sim, polled, started, only=burst) if burst else []
        happened = sum(
            1 for c in sim.timeline() if started <= c.at <= ended and c.previous is not None
        )
    actions = ("GetRunStatus", "DescribeRuns")
    return {
        "strategy": strategy,
        "seeded_cycle_seconds": round(cycle, 1),
        "seeding_seconds": round(seeding, 1),
        "seconds": round(ended - started, 1),
        "changes_in_window": happened,
        "events": len(values),
        "latency_median": statistics.median(values) if values else math.nan,
        "latency_p99": percentile(values, 0.99),
        "latency_max": max(values) if values else math.nan,
        "burst_events": len(in_burst),
        "burst_latency_median": statistics.median(in_burst) if in_burst else math.nan,
        "burst_latency_p99": percentile(in_burst, 0.99),
        "burst_latency_max": max(in_burst) if in_burst else math.nan,
        "requests": {a: stats["requests"][a] for a in actions},
        "max_per_1s_window": {a: stats["max_window_arrivals"][a] for a in actions},
        "throttled": stats["throttled_total"],
        "cpu_share": round(cpu / max(ended - started, 1e-9), 2),
    }


def report(
    results: list[dict[str, Any]], args: argparse.Namespace, command: str, load: float
) -> None:
    flapping = round(args.runs * args.flapping)
    print(f"command: {command}")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; python {sys.version.split()[0]}"
    )
    print(
        f"{args.runs} active runs: {flapping} flapping (one change per {args.flap_period:g} s "
        f"on average, {flapping / args.flap_period:.1f} changes/s in all), "
        f"{args.runs - flapping} steady; rate limit {RATE:g}/s per action; "
        f"interval {args.interval:g} s; {args.duration:g} s per strategy"
    )
    head = (
        f"{'strategy':<8} {'events':>6} {'median s':>9} {'p99 s':>7} {'max s':>7} "
        f"{'GetRunStatus':>13} {'max/1s':>6} {'DescribeRuns':>13} {'max/1s':>6} "
        f"{'throttled':>9} {'cpu':>5}"
    )
    print(head)
    for r in results:
        req, win = r["requests"], r["max_per_1s_window"]
        print(
            f"{r['strategy']:<8} {r['events']:>6} {r['latency_median']:>9.1f} "
            f"{r['latency_p99']:>7.1f} {r['latency_max']:>7.1f} {req['GetRunStatus']:>13} "
            f"{win['GetRunStatus']:>6} {req['DescribeRuns']:>13} {win['DescribeRuns']:>6} "
            f"{r['throttled']:>9} {r['cpu_share']:>5.0%}"
        )
    for r in results:
        if args.burst:
            print(
                f"{r['strategy']} burst ({args.burst} runs of one group, changes within "
                f"{args.burst_spread:g} s): {r['burst_events']} events, median "
                f"{r['burst_latency_median']:.1f} s, p99 {r['burst_latency_p99']:.1f} s, "
                f"max {r['burst_latency_max']:.1f} s"
            )
        print(
            f"{r['strategy']}: {r['changes_in_window']} changes happened during the run, "
            f"{r['events']} events recorded; seeded cycle {r['seeded_cycle_seconds']} s"
        )


async def main(args: argparse.Namespace, emit: Callable[[list[dict[str, Any]]], None]) -> None:
    # Old enough that every run flaps and its first changes lie before the longest seeded
    # cycle, so the seeded statuses come from a steady timeline.
    age = 2 * args.flap_period + args.runs / RATE + 60
    config = SimulatorConfig(
        runs=args.runs,
        seed=args.seed,
        kinds={"flapping": args.flapping, "forever": 1.0 - args.flapping},
        flap_period_seconds=args.flap_period,
        queued_seconds=(0.0, args.flap_period),  # start times spread: changes spread evenly
        initializing_seconds=(1.0, 5.0),
        rate_limit=int(RATE),
    )
    results = []
    async with AgedSimulator(config, age) as sim, aiohttp.ClientSession() as session:
        for strategy in args.strategies:
            print(f"running {strategy} for {args.duration:g} s ...", file=sys.stderr)
            results.append(await measure(strategy, sim, session, args))
    emit(results)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per strategy")
    parser.add_argument("--interval", type=float, default=5.0, help="[polling] interval_seconds")
    parser.add_argument("--flap-period", type=float, default=300.0)
    parser.add_argument("--flapping", type=float, default=0.3, help="share of runs that change")
    parser.add_argument("--batch-size", type=int, default=MAX_BATCH)
    parser.add_argument(
        "--strategies",
        type=lambda text: [s for s in text.split(",") if s],
        default=list(STRATEGIES),
        help="comma-separated: per-run,batch",
    )
    parser.add_argument("--burst", type=int, default=0, help="runs of one correlated group")
    parser.add_argument("--burst-spread", type=float, default=60.0)
    parser.add_argument("--burst-delay", type=float, default=20.0, help="seconds queued")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.flapping <= 1:
        parser.error("--flapping must be within (0, 1]")
    if unknown := set(args.strategies) - set(STRATEGIES):
        parser.error(f"unknown strategies: {sorted(unknown)}")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    load = os.getloadavg()[0]
    command = " ".join(["python", "benchmarks/strategy_bench.py", *sys.argv[1:]])

    def emit(results: list[dict[str, Any]]) -> None:
        if arguments.json:
            print(json.dumps(results, indent=2))
        else:
            report(results, arguments, command, load)

    asyncio.run(main(arguments, emit))
