"""Issue 12 items 2 and 3, measured in one process against the simulator.

``stuck``: the issue's case. ``--runs`` finishing runs (default 150) polled at 20/s (a
7.5 s cycle) with ``after_seconds`` (default 6), plus ``--hung`` runs that never leave
INITIALIZING. Beside the real :class:`~watcher.stuck.StuckChecker` (the seen-stuck rule) a
peer applies the old rule on the same registry at the same passes ("now - status_since >=
limit", counted, not written). Every alert of either is checked against the simulator's
timeline: *false* when the status it names really lasted less than the limit.

``burst``: ``--failures`` runs of one group (default 50) failing within ``--spread`` seconds
(default 16), watched by the real scheduler, recorder and enricher. Side by side, one after
the other on the same machine: ``old`` (one 5/s limiter shared by GetRunCalls and
GetRunJobLog, 20 s timeout, requests in arrival order, as before issue 12) and the new
limiters (20/s each, 10 s timeout) with each order of enrichment steps (``oldest-run``, the
default; ``level``: every root listing before deeper levels; ``arrival``). Reported: how long
enrichment held each failure event (detection = the poll that saw the failure → recorded
and handed to the dispatcher), p50/p95/max, and how many events carry task, message and
stderr tail. Webhook delivery after that is the dispatcher's (loopback: milliseconds) and is
not part of these figures.

Usage::

    .venv/bin/python benchmarks/enrich_bench.py stuck [--runs 150] [--after 6] [--seconds 60]
    .venv/bin/python benchmarks/enrich_bench.py burst [--failures 50] [--spread 16]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from watcher.config import Settings
from watcher.connect import build_limiters
from watcher.enrich import EnrichLimits, FailureEnricher, Order
from watcher.events import STUCK, Event
from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.limiter import PacingLimiter
from watcher.options import enrich_limits
from watcher.polling.per_run import Scheduler, SchedulerOptions
from watcher.recorder import Recorder
from watcher.simulator import Simulator, SimulatorConfig, running_simulator
from watcher.sink import EventSink
from watcher.statuses import Statuses, StatusOptions
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.stuck import StuckChecker, StuckLimits

TERMINAL = frozenset(Settings().polling.terminal)


def now() -> datetime:
    return datetime.now(UTC)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def client_for(
    sim: Simulator, session: aiohttp.ClientSession, limiters: Mapping[str, PacingLimiter]
) -> OmicsClient:
    return OmicsClient(
        session=session,
        endpoint=sim.endpoint,
        region="ap-guangzhou",
        credentials=StaticProvider(Credential(sim.secret_id, sim.secret_key), name="bench"),
        limiters=limiters,
        timeout=10,
    )


def scheduler(store: Store, client: OmicsClient, recorder: Recorder, interval: float) -> Scheduler:
    return Scheduler(
        store=SqliteStore(store),
        source=client,
        recorder=recorder,
        options=SchedulerOptions(
            interval_seconds=interval,
            rate_per_second=20,
            request_timeout_seconds=10,
            terminal=TERMINAL,
            drain_seconds=1,
        ),
        wall_clock=now,
    )


def true_duration(sim: Simulator, run_uuid: str, status: str, since: float) -> float:
    """How long the episode of ``status`` the watcher saw at ``since`` really lasted."""
    timeline = sim.timeline(run_uuid)
    best = None
    for i, t in enumerate(timeline):
        if t.status == status and t.at <= since + 0.5:
            best = i
    if best is None:
        return float("nan")
    end = timeline[best + 1].at if best + 1 < len(timeline) else time.time()
    return end - timeline[best].at


# -- stuck ------------------------------------------------------------------------------------


async def stuck(args: argparse.Namespace) -> None:
    config = SimulatorConfig(
        runs=0,
        seed=args.seed,
        queued_seconds=(1.0, 14.0),
        initializing_seconds=(1.0, 14.0),
        running_seconds=(1.0, 14.0),
    )
    async with running_simulator(config) as sim, aiohttp.ClientSession() as session:
        runs = [sim.submit_run(kind="finishing") for _ in range(args.runs)]
        hung = [sim.submit_run(kind="hung", durations=(1.0, 1.0, 1.0)) for _ in range(args.hung)]
        with tempfile.TemporaryDirectory() as tmp:
            store = Store.open(Path(tmp) / "state.db")
            store.track([TrackRequest(u) for u in [*runs, *hung]])
            events: list[Event] = []
            sink = EventSink(store=SqliteStore(store), route=lambda e: [], on_event=[events.append])
            client = client_for(sim, session, {"default": PacingLimiter(20)})
            recorder = Recorder(
                store=SqliteStore(store), sink=sink, terminal=TERMINAL, wall_clock=now
            )
            limits = StuckLimits(after_seconds=args.after)
            checker = StuckChecker(store=SqliteStore(store), sink=sink, limits=limits)
            old_rule: dict[tuple[str, str], float] = {}
            stop = asyncio.Event()
            task = asyncio.create_task(scheduler(store, client, recorder, 0.5).run(stop))
            ended = time.monotonic() + args.seconds
            while time.monotonic() < ended:
                await checker.check()
                wall = time.time()
                for run in store.list_runs():
                    if run.terminal or run.status is None or run.status_since is None:
                        continue
                    since = run.status_since.timestamp()
                    key = (run.run_uuid, run.status)
                    if wall - since >= args.after and key not in old_rule:
                        old_rule[key] = since
                await asyncio.sleep(limits.interval())
            stop.set()
            await task
            store.close()
        new_alerts = [
            (e.run_uuid, str(e.status), datetime.fromisoformat(e.data["since"]).timestamp())
            for e in events
            if e.type == STUCK
        ]
        old_alerts = [(u, s, since) for (u, s), since in old_rule.items()]
        stats = sim.stats(timeline=False)
    print(f"load average {os.getloadavg()}")
    print(
        f"{args.runs} finishing runs + {args.hung} hung, 20/s, cycle ≈ "
        f"{(args.runs + args.hung) / 20:.1f} s, after_seconds = {args.after}, "
        f"{args.seconds:.0f} s; GetRunStatus {stats['requests'].get('GetRunStatus')}"
    )
    for name, alerts in (("seen-stuck (new)", new_alerts), ("wall-clock (old)", old_alerts)):
        lasted = [true_duration(sim, u, s, since) for u, s, since in alerts]
        false = [d for d in lasted if d < args.after]
        short = [d for d in lasted if d < 4]
        hung_alerts = [a for a in alerts if a[0] in hung]
        per_hung = {u: sum(1 for a in hung_alerts if a[0] == u) for u in hung}
        print(
            f"  {name:18} run.stuck {len(alerts):4}  false {len(false):4} "
            f"(status lasted < 4 s: {len(short)})  hung runs alerted "
            f"{sum(1 for n in per_hung.values() if n)}/{len(hung)}, "
            f"max per hung run {max(per_hung.values(), default=0)}"
        )


# -- burst ------------------------------------------------------------------------------------

VARIANTS: tuple[tuple[str, Order, bool], ...] = (
    ("old: shared 5/s, 20 s, arrival", "arrival", True),
    ("new: 20/s each, oldest-run", "oldest-run", False),
    ("new: 20/s each, level", "level", False),
    ("new: 20/s each, arrival", "arrival", False),
)


async def burst_once(args: argparse.Namespace, order: Order, old: bool) -> dict[str, Any]:
    statuses = Statuses(StatusOptions(terminal=TERMINAL))
    async with (
        running_simulator(SimulatorConfig(runs=0, seed=args.seed)) as sim,
        aiohttp.ClientSession() as session,
    ):
        runs = sim.submit_group(
            args.failures,
            spread_seconds=args.spread,
            durations=(0.5, 0.5, 1.0),
            outcome="EXECUTOR_ERROR",
        )
        limiters = build_limiters(Settings())
        if old:
            shared = PacingLimiter(5)
            limiters.update({"GetRunCalls": shared, "GetRunJobLog": shared})
            limits = EnrichLimits(timeout=20.0, lanes=10_000)
        else:
            limits = enrich_limits(Settings())
        client = client_for(sim, session, limiters)
        enricher = FailureEnricher(client=client, statuses=statuses, limits=limits, order=order)
        held: list[float] = []
        complete = 0

        def seen(event: Event) -> None:
            nonlocal complete
            if event.status != "EXECUTOR_ERROR":
                return
            held.append((now() - event.timestamp).total_seconds())
            failure = event.data.get("failure") or {}
            if all(failure.get(k) for k in ("task", "message", "stderr_tail")):
                complete += 1

        with tempfile.TemporaryDirectory() as tmp:
            store = Store.open(Path(tmp) / "state.db")
            store.track([TrackRequest(u) for u in runs])
            sink = EventSink(store=SqliteStore(store), route=lambda e: [], on_event=[seen])
            recorder = Recorder(
                store=SqliteStore(store),
                sink=sink,
                terminal=TERMINAL,
                wall_clock=now,
                enricher=enricher,
            )
            stop = asyncio.Event()
            task = asyncio.create_task(scheduler(store, client, recorder, 0.5).run(stop))
            deadline = time.monotonic() + args.spread + 60
            while len(held) < len(runs) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            stop.set()
            await task
            store.close()
        stats = sim.stats(timeline=False)
    return {
        "events": len(held),
        "complete": complete,
        "p50": pct(held, 0.5),
        "p95": pct(held, 0.95),
        "max": max(held, default=float("nan")),
        "calls": stats["requests"].get("GetRunCalls", 0),
        "throttled": sum(stats["throttled"].values()),
    }


async def burst(args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()}")
    print(
        f"{args.failures} failures of one group within {args.spread:.0f} s; hold = detection "
        "→ recorded (s)"
    )
    for name, order, old in VARIANTS:
        r = await burst_once(args, order, old)
        print(
            f"  {name:34} events {r['events']:3}  complete {r['complete']:3}  "
            f"p50 {r['p50']:5.2f}  p95 {r['p95']:5.2f}  max {r['max']:5.2f}  "
            f"GetRunCalls {r['calls']:4}  throttled {r['throttled']}"
        )
    print(f"load average {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("stuck")
    s.add_argument("--runs", type=int, default=150)
    s.add_argument("--hung", type=int, default=5)
    s.add_argument("--after", type=float, default=6.0)
    s.add_argument("--seconds", type=float, default=60.0)
    s.add_argument("--seed", type=int, default=1)
    b = sub.add_parser("burst")
    b.add_argument("--failures", type=int, default=50)
    b.add_argument("--spread", type=float, default=16.0)
    b.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    asyncio.run(stuck(args) if args.mode == "stuck" else burst(args))


if __name__ == "__main__":
    main()
