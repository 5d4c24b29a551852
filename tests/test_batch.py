"""The batch poller and the strategy switch against the simulator, real client and store.

Most tests start from a registry whose statuses are already known (seeded the way
discovery seeds a baseline, from the simulator's own timeline), so they measure what a
poller does in steady state rather than the first observation of every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from support import now

from watcher.events import Event
from watcher.notifiers.render import duration_of, failure_of, message_for, plain_text
from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.errors import BadRequest
from watcher.omics.limiter import PacingLimiter
from watcher.omics.models import RunsFilter, RunSummary
from watcher.polling.batch import BatchOptions, BatchPoller, Order, StatusReference, order
from watcher.polling.per_run import Scheduler, SchedulerOptions
from watcher.polling.strategy import PollingStrategy, auto_prefers_batch
from watcher.recorder import Recorder
from watcher.service.metrics import Metrics
from watcher.simulator import Simulator, SimulatorConfig, running_simulator
from watcher.sink import EventSink
from watcher.store import DiscoveredRun, Store, TrackRequest
from watcher.store.api import SqliteStore

TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "CANCELED"})


class Rig:
    """One daemon's polling parts on one state file: client, limiters, recorder, pollers."""

    def __init__(
        self,
        sim: Simulator,
        session: aiohttp.ClientSession,
        store: Store,
        *,
        interval: float = 1.0,
        batch_size: int = 100,
        secret_key: str | None = None,
        route: Callable[[Event], list[str]] = lambda e: [],
    ) -> None:
        self.store = store
        self.status_limiter = PacingLimiter(20)
        self.describe_limiter = PacingLimiter(20)
        self.client = OmicsClient(
            session=session,
            endpoint=sim.endpoint,
            region="ap-guangzhou",
            credentials=StaticProvider(
                Credential(sim.secret_id, secret_key or sim.secret_key), name="t"
            ),
            limiters={
                "GetRunStatus": self.status_limiter,
                "DescribeRuns": self.describe_limiter,
                "default": PacingLimiter(5),
            },
            timeout=5,
        )
        self.events: list[Event] = []
        self.recorder = Recorder(
            store=SqliteStore(store),
            sink=EventSink(store=SqliteStore(store), route=route, on_event=[self.events.append]),
            terminal=TERMINAL,
            wall_clock=now,
        )
        self.interval = interval
        self.batch_size = batch_size

    def batch(self) -> BatchPoller:
        return BatchPoller(
            store=SqliteStore(self.store),
            source=self.client,
            recorder=self.recorder,
            options=BatchOptions(
                interval_seconds=self.interval,
                terminal=TERMINAL,
                batch_size=self.batch_size,
                request_timeout_seconds=5,
            ),
            describe_backlog=lambda: self.describe_limiter.waiting,
            status_backlog=lambda: self.status_limiter.waiting,
            wall_clock=now,
            rng=random.Random(7),
        )

    def scheduler(self) -> Scheduler:
        return Scheduler(
            store=SqliteStore(self.store),
            source=self.client,
            recorder=self.recorder,
            options=SchedulerOptions(
                interval_seconds=self.interval,
                rate_per_second=20,
                request_timeout_seconds=5,
                terminal=TERMINAL,
            ),
            backlog=lambda: self.status_limiter.waiting,
            wall_clock=now,
            rng=random.Random(7),
        )


async def run_for(poller: Any, seconds: float, done: Callable[[], bool] = lambda: False) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not done() and loop.time() < deadline and not task.done():
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 15)


def status_at(sim: Simulator, run_uuid: str, at: float) -> str:
    """The simulator's truth for ``run_uuid`` at wall time ``at``."""
    status = None
    for change in sim.timeline(run_uuid):
        if change.at <= at:
            status = change.status
    assert status is not None
    return status


def seed(store: Store, sim: Simulator, uuids: list[str]) -> tuple[float, dict[str, str]]:
    """Track ``uuids`` with their true status as a silent baseline; ``(seed time, statuses)``."""
    at = now().timestamp()
    statuses = {u: status_at(sim, u, at) for u in uuids}
    store.track_discovered(
        [DiscoveredRun(u, sim.project_id, s) for u, s in statuses.items()],
        baseline=True,
        terminal=TERMINAL,
    )
    return at, statuses


def recorded(store: Store) -> list[Event]:
    """Every ``run.status_changed`` in the state file, oldest first."""
    events = reversed(store.events(limit=1_000_000))
    return [e for e in events if e.type == "run.status_changed"]


def check_history(
    store: Store,
    sim: Simulator,
    seeded: dict[str, str],
    seeded_at: float,
    *,
    settled_before: float,
) -> list[float]:
    """Every change after the seed is reported once, in order, none invented; latencies.

    Changes after ``settled_before`` may or may not be reported yet (a poller was stopped),
    but nothing may be reported that did not happen.
    """
    by_run: dict[str, list[Event]] = {}
    for event in recorded(store):
        by_run.setdefault(event.run_uuid, []).append(event)
    latencies = []
    for run_uuid, first in seeded.items():
        truth = [c for c in sim.timeline(run_uuid) if c.at > seeded_at]
        mine = by_run.get(run_uuid, [])
        chain = [first] + [e.status for e in mine]
        assert [e.previous_status for e in mine] == chain[: len(mine)]
        statuses = [e.status for e in mine]
        assert statuses == [c.status for c in truth[: len(statuses)]], (run_uuid, mine, truth)
        settled = [c for c in truth if c.at < settled_before]
        assert len(statuses) >= len(settled), (run_uuid, statuses, truth)
        for event, change in zip(mine, truth, strict=False):
            observed = datetime.fromisoformat(event.data["observed_at"].replace("Z", "+00:00"))
            latencies.append(observed.timestamp() - change.at)
    return latencies


def flapping(runs: int, period: float, **extra: Any) -> SimulatorConfig:
    """Runs that change status every ``period`` s on average (gaps within 0.5-1.5 periods).

    Changes of one run come in the middle half of each period after it started flapping;
    start times spread over a whole period spread the changes of all runs evenly in time.
    """
    return SimulatorConfig(
        runs=runs,
        seed=11,
        kinds={"flapping": 1.0},
        flap_period_seconds=period,
        queued_seconds=(0.0, period),
        initializing_seconds=(0.1, 0.3),
        **extra,
    )


@contextlib.asynccontextmanager
async def aged_simulator(config: SimulatorConfig, age: float = 600.0) -> AsyncIterator[Simulator]:
    """A simulator whose runs were created ``age`` seconds ago: past their start, flapping
    in steady state, with ``age`` seconds of timeline."""
    loop = asyncio.get_running_loop()
    shift = [0.0]
    async with running_simulator(
        config,
        monotonic=lambda: loop.time() + shift[0],
        wall=lambda: time.time() - age + shift[0],
    ) as sim:
        shift[0] = age  # the runs' creation now lies ``age`` seconds back on both clocks
        yield sim


async def test_batch_sees_every_transition_with_far_fewer_requests(
    store: Store, session: aiohttp.ClientSession
) -> None:
    # 300 runs each changing every ~20 s, checked every second: per-run polling would need
    # 300 GetRunStatus a second (15 times the budget); batch needs 3 DescribeRuns a second
    # plus one GetRunStatus per change.
    async with aged_simulator(flapping(300, 20.0)) as sim:
        seeded_at, seeded = seed(store, sim, sim.run_uuids)
        sim.reset_stats()
        rig = Rig(sim, session, store, interval=1.0)
        await run_for(rig.batch(), 5.0)
        ended = now().timestamp()
        latencies = check_history(store, sim, seeded, seeded_at, settled_before=ended - 3)
        stats = sim.stats(timeline=False)
        describes = stats["requests"]["DescribeRuns"]
        statuses = stats["requests"]["GetRunStatus"]
        assert len(latencies) >= 40  # ~75 changes expected in 5 s
        assert statuses <= len(latencies) + 10  # one GetRunStatus per change, hardly more
        assert describes <= 3 * 6 + 3
        per_run_needed = 300 * 5 / 1.0
        assert describes + statuses < per_run_needed / 10
        # Batch sees every run about once a second here; per-run would need 15 s per cycle.
        # The bound is loose so a busy machine passes; benchmarks/strategy_bench.py measures.
        assert max(latencies) < 10.0, sorted(latencies)[-5:]
        assert stats["throttled_total"] == 0
        assert stats["max_window_arrivals"]["DescribeRuns"] <= 20
        assert stats["max_window_arrivals"]["GetRunStatus"] <= 20


async def test_switching_strategy_on_a_live_registry_loses_and_invents_nothing(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # 100 runs: per-run checks each every ~5 s, batch every second, and no run changes twice
    # within 15 s, so both strategies must see every single change, including those that
    # per-run had not seen yet when it stopped.
    path = tmp_path / "state.db"
    async with aged_simulator(flapping(100, 30.0)) as sim:
        with Store.open(path) as store:
            seeded_at, seeded = seed(store, sim, sim.run_uuids)
            await run_for(Rig(sim, session, store).scheduler(), 5.0)
            per_run = len(recorded(store))
        with Store.open(path) as store:  # the daemon restarted with strategy = "batch"
            await run_for(Rig(sim, session, store).batch(), 4.0)
            ended = now().timestamp()
            latencies = check_history(store, sim, seeded, seeded_at, settled_before=ended - 3)
            # Per-run reaches each run once in these 5 s, so it reports only the changes made
            # before that run's turn (~6); batch reports those made while it ran (~13).
            assert per_run >= 2
            assert len(latencies) - per_run >= 5
            ids = [e.id for e in store.events(limit=100_000)]
            assert len(ids) == len(set(ids))


async def test_strategy_switch_inside_one_process(
    store: Store, session: aiohttp.ClientSession
) -> None:
    # auto with a budget sized so 100 runs call for batch, then the registry shrinks below
    # a quarter of it: the same PollingStrategy hands the registry to per-run, mid-flight.
    async with aged_simulator(flapping(100, 30.0)) as sim:
        seeded_at, seeded = seed(store, sim, sim.run_uuids)
        rig = Rig(sim, session, store)
        strategy = PollingStrategy(
            mode="auto",
            scheduler=rig.scheduler(),
            make_batch=rig.batch,
            rate_per_second=20,
            interval_seconds=8,  # capacity 160: batch above 80 runs, per-run below 40
            check_seconds=0.5,
        )
        assert await strategy.load() == 100
        assert strategy.strategy == "batch"
        stop = asyncio.Event()
        task = asyncio.create_task(strategy.run(stop))
        await asyncio.sleep(2.5)
        store.untrack(sim.run_uuids[30:])
        await asyncio.sleep(2.5)
        assert strategy.strategy == "per-run"
        stop.set()
        await asyncio.wait_for(task, 15)
        ended = now().timestamp()
        kept = {u: s for u, s in seeded.items() if u in sim.run_uuids[:30]}
        check_history(store, sim, kept, seeded_at, settled_before=ended - 5)


def test_auto_rule_has_hysteresis() -> None:
    rule = auto_prefers_batch
    # 20/s for 30 s = 600 runs per-run keeps on time: batch above 300, back below 150.
    assert not rule(300, batching=False, rate_per_second=20, interval_seconds=30)
    assert rule(301, batching=False, rate_per_second=20, interval_seconds=30)
    assert rule(151, batching=True, rate_per_second=20, interval_seconds=30)
    assert not rule(150, batching=True, rate_per_second=20, interval_seconds=30)


async def test_batch_size_adapts_to_the_filter_value_limit(
    store: Store, session: aiohttp.ClientSession
) -> None:
    async with aged_simulator(flapping(150, 20.0)) as sim:
        sim.set_max_filter_values(30)
        seeded_at, seeded = seed(store, sim, sim.run_uuids)
        sim.reset_stats()
        rig = Rig(sim, session, store)
        with structlog.testing.capture_logs() as logs:
            poller = rig.batch()
            await run_for(poller, 5.0)
        ended = now().timestamp()
        assert poller.batch_size(sim.project_id) == 25
        assert poller.refused is None
        reductions = [e for e in logs if e["event"] == "batch_size_reduced"]
        assert [e["batch_size"] for e in reductions] == [50, 25]
        stats = sim.stats(timeline=False)
        assert stats["errors"].get("InvalidParameterValue", 0) <= 6  # learnt once, kept
        latencies = check_history(store, sim, seeded, seeded_at, settled_before=ended - 3)
        assert len(latencies) >= 20  # ~35 changes expected in 5 s
        assert max(latencies) < 10.0  # loose, for busy machines: see strategy_bench.py
        assert stats["max_window_arrivals"]["DescribeRuns"] <= 20
        assert stats["max_window_arrivals"]["GetRunStatus"] <= 20


async def test_describe_runs_refused_falls_back_to_per_run_with_one_log_line(
    store: Store, session: aiohttp.ClientSession
) -> None:
    config = SimulatorConfig(
        runs=30,
        seed=4,
        queued_seconds=(0.2, 1.0),
        initializing_seconds=(0.2, 1.0),
        running_seconds=(0.5, 1.5),
    )
    async with running_simulator(config) as sim:
        sim.deny_action("DescribeRuns")
        store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
        rig = Rig(sim, session, store)
        with structlog.testing.capture_logs() as logs:
            strategy = PollingStrategy(
                mode="batch",
                scheduler=rig.scheduler(),
                make_batch=rig.batch,
                rate_per_second=20,
                interval_seconds=1,
            )
            await strategy.load()
            await run_for(strategy, 30, lambda: all(r.terminal for r in store.list_runs()))
        assert strategy.strategy == "per-run"
        assert strategy.first_cycle_done.is_set()
        for run in store.list_runs():
            assert run.status == sim.status(run.run_uuid)
        loud = [e for e in logs if e["log_level"] in ("warning", "error")]
        assert [e["event"] for e in loud] == ["batch_polling_unavailable"]
        assert loud[0]["code"] == "UnauthorizedOperation"
        assert loud[0]["fallback"] == "per-run"
        assert sim.stats(timeline=False)["requests"]["DescribeRuns"] <= 3


@pytest.mark.parametrize("code", ["AuthFailure.UnauthorizedOperation", "OperationDenied"])
async def test_permission_codes_that_mean_fall_back(
    store: Store, session: aiohttp.ClientSession, code: str
) -> None:
    async with running_simulator(SimulatorConfig(runs=3, seed=1)) as sim:
        sim.deny_action("DescribeRuns", code)
        store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
        poller = Rig(sim, session, store).batch()
        await run_for(poller, 5, lambda: poller.refused is not None)
        assert poller.refused is not None
        assert poller.refused.startswith(code)


async def test_new_runs_tracked_elsewhere_are_checked_within_two_seconds(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # Every run moves QUEUED -> INITIALIZING -> RUNNING in its first seconds: a burst of
    # changes queues for the GetRunStatus budget when the new run is tracked.
    config = SimulatorConfig(runs=400, seed=9, kinds={"forever": 1.0})
    async with running_simulator(config) as sim:
        late = sim.run_uuids[-1]
        with Store.open(tmp_path / "state.db") as store:
            seed(store, sim, sim.run_uuids[:-1])
            poller = Rig(sim, session, store, interval=1.0).batch()
            stop = asyncio.Event()
            task = asyncio.create_task(poller.run(stop))
            await asyncio.sleep(2.0)
            with Store.open(tmp_path / "state.db") as cli:
                cli.track([TrackRequest(late, sim.project_id)])
            loop = asyncio.get_running_loop()
            started = loop.time()
            while store.get_run(late).status is None:  # type: ignore[union-attr]
                assert loop.time() - started < 10, "new run not polled"
                await asyncio.sleep(0.05)
            waited = loop.time() - started
            stop.set()
            await asyncio.wait_for(task, 15)
            assert waited < 2.5, waited


async def test_unknown_run_gets_one_get_run_status_and_not_found(
    store: Store, session: aiohttp.ClientSession
) -> None:
    config = SimulatorConfig(
        runs=5,
        seed=1,
        kinds={"forever": 1.0},
        queued_seconds=(0.1, 0.2),
        initializing_seconds=(0.1, 0.2),
    )
    async with running_simulator(config) as sim:
        await asyncio.sleep(0.5)  # all RUNNING, for good
        ghost = "00000000-0000-4000-8000-000000000000"
        store.track(TrackRequest(u, sim.project_id) for u in [*sim.run_uuids, ghost])
        rig = Rig(sim, session, store)
        poller = rig.batch()
        await run_for(poller, 10, lambda: any(e.type == "run.not_found" for e in rig.events))
        await run_for(poller, 1)
        assert [e.type for e in rig.events].count("run.not_found") == 1
        run = store.get_run(ghost)
        assert run is not None
        assert run.stopped
        assert sim.stats(timeline=False)["errors"].get("ResourceNotFound.RunNotExist") == 1
        assert all(r.status == sim.status(r.run_uuid) for r in store.list_runs() if r != run)


async def test_bad_credentials_pause_batch_polling(
    store: Store, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(SimulatorConfig(runs=250, seed=2, kinds={"forever": 1.0})) as sim:
        store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
        poller = Rig(sim, session, store, secret_key="wrong-key").batch()
        await run_for(poller, 2)
        assert poller.paused
        assert poller.refused is None  # a credential problem is not a reason to fall back
        stats = sim.stats(timeline=False)
        assert stats["signature_failures"] <= 4
        assert all(r.status is None for r in store.list_runs())


async def test_transient_faults_neither_lose_nor_invent(
    store: Store, session: aiohttp.ClientSession
) -> None:
    async with aged_simulator(flapping(200, 20.0)) as sim:
        seeded_at, seeded = seed(store, sim, sim.run_uuids)
        sim.set_faults(0.15, ["internal_error", "bad_gateway", "drop"])
        rig = Rig(sim, session, store)
        await run_for(rig.batch(), 4.0)
        sim.set_faults(0.0)
        ended = now().timestamp()
        latencies = check_history(store, sim, seeded, seeded_at, settled_before=ended - 4)
        assert latencies
        assert sum(sim.stats(timeline=False)["faults"].values()) > 0
        assert math.isfinite(max(latencies))


class RefusesOneProject:
    """The real client, except that DescribeRuns refuses one project outright: a fault the
    simulator has no knob for (Tencent's answer to a malformed ProjectId, say)."""

    def __init__(self, client: OmicsClient, project_id: str) -> None:
        self._client = client
        self._project_id = project_id

    async def get_run_status(self, run_uuid: str, project_id: str = "") -> Any:
        return await self._client.get_run_status(run_uuid, project_id)

    async def describe_runs(
        self,
        *,
        project_id: str = "",
        filters: Sequence[RunsFilter] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[RunSummary]]:
        if project_id == self._project_id:
            await asyncio.sleep(0.05)  # after the other project's first answer
            raise BadRequest("InvalidParameterValue.ProjectId", "no such project (simulated)")
        return await self._client.describe_runs(
            project_id=project_id, filters=filters, limit=limit, offset=offset
        )


async def test_a_project_describe_runs_refuses_is_polled_run_by_run(
    store: Store, session: aiohttp.ClientSession
) -> None:
    config = SimulatorConfig(
        runs=60,
        seed=6,
        project_ids=("prj-a", "prj-b"),
        runs_per_group=10,
        queued_seconds=(0.2, 0.5),
        initializing_seconds=(0.2, 0.5),
        running_seconds=(0.5, 2.0),
    )
    async with running_simulator(config) as sim:
        by_project = {
            project: [
                item["RunUuid"]
                for item in sim.call("DescribeRuns", {"ProjectId": project, "Limit": 100})["Runs"]
            ]
            for project in ("prj-a", "prj-b")
        }
        assert len(by_project["prj-a"]) == len(by_project["prj-b"]) == 30
        store.track(TrackRequest(u, p) for p, uuids in by_project.items() for u in uuids)
        rig = Rig(sim, session, store)
        with structlog.testing.capture_logs() as logs:
            poller = BatchPoller(
                store=SqliteStore(store),
                source=RefusesOneProject(rig.client, "prj-b"),
                recorder=rig.recorder,
                options=BatchOptions(interval_seconds=1, terminal=TERMINAL),
                wall_clock=now,
            )
            await run_for(poller, 20, lambda: all(r.terminal for r in store.list_runs()))
        assert poller.refused is None
        for run in store.list_runs():
            assert run.status == sim.status(run.run_uuid)
        loud = [e["event"] for e in logs if e["log_level"] in ("warning", "error")]
        assert loud.count("batch_project_direct") == 1
        assert "batch_polling_unavailable" not in loud


# -- recorded from DescribeRuns: bursts, a lagging list, the ordering rule ---------------------


@pytest.mark.parametrize(
    ("listed", "update_time", "seen_at", "expected"),
    [
        (101.0, 100.0, None, Order.NEWER),  # a later second than the listed change recorded
        (99.0, 100.0, None, Order.STALE),  # an earlier second: the list's view is older
        (100.0, 100.0, None, Order.AMBIGUOUS),  # two changes within one second
        (102.0, None, 100.5, Order.NEWER),  # at least the margin after GetRunStatus saw it
        (98.0, None, 100.5, Order.STALE),  # began (by 99) before the margin before 100.5
        (99.0, None, 100.5, Order.AMBIGUOUS),  # within the margin: ask GetRunStatus
        (101.0, None, 100.5, Order.AMBIGUOUS),
        (103.0, 100.0, 101.2, Order.NEWER),  # both known: newer than both
        (101.0, 100.0, 101.2, Order.AMBIGUOUS),  # newer than one only
        (99.0, 100.0, 90.0, Order.STALE),  # stale by either: stale
        (None, 100.0, None, Order.AMBIGUOUS),  # no parsable UpdateTime
        (100.0, None, None, Order.AMBIGUOUS),  # nothing known (baseline, another process)
    ],
)
def test_order_of_a_listed_status(
    listed: float | None, update_time: float | None, seen_at: float | None, expected: Order
) -> None:
    assert order(listed, StatusReference(update_time, seen_at)) is expected


def check_never_false(store: Store, sim: Simulator, uuids: Sequence[str]) -> int:
    """Each run's events are its true changes, in order, each recorded once, never before it
    happened (statuses in between may be skipped); the final status is recorded. How many."""
    by_run: dict[str, list[Event]] = {u: [] for u in uuids}
    for event in recorded(store):
        by_run[event.run_uuid].append(event)
    total = 0
    for run_uuid, events in by_run.items():
        truth = sim.timeline(run_uuid)
        previous: str | None = None
        k = 0
        for event in events:
            assert event.previous_status == previous, (run_uuid, events)
            observed = datetime.fromisoformat(event.data["observed_at"].replace("Z", "+00:00"))
            while k < len(truth) and truth[k].status != event.status:
                k += 1
            assert k < len(truth), ("false, backward or repeated", run_uuid, events, truth)
            assert truth[k].at <= observed.timestamp() + 0.01, (run_uuid, event, truth[k])
            k += 1
            previous = event.status
        assert previous == sim.status(run_uuid), (run_uuid, events, truth)
        total += len(events)
    return total


async def test_a_group_finishing_together_is_recorded_from_the_list(
    store: Store, session: aiohttp.ClientSession
) -> None:
    # 1,000 runs of one group move within 6 s of each other: every first observation and
    # every change comes from DescribeRuns itself (10 calls a cycle), none waits for the
    # GetRunStatus budget. benchmarks/burst_bench.py measures the latencies.
    async with running_simulator(SimulatorConfig(runs=0, seed=3)) as sim:
        uuids = sim.submit_group(1000, spread_seconds=6.0, durations=(0.5, 1.0, 1.5))
        store.track(TrackRequest(u, sim.project_id) for u in uuids)
        sim.reset_stats()
        rig = Rig(sim, session, store, interval=1.0)
        await run_for(rig.batch(), 45, lambda: all(r.terminal for r in store.list_runs()))
        stats = sim.stats(timeline=False)
    events = check_never_false(store, sim, uuids)
    assert all(r.terminal and r.status == sim.status(r.run_uuid) for r in store.list_runs())
    assert events >= 2000  # a first observation and a final status each, at least
    # GetRunStatus only where the list cannot order a change (UpdateTime has whole seconds):
    # a small share of the changes, however the polls fall on a busy machine (the confirming
    # poller of the first release asked once per change: ~1,400 here).
    assert stats["requests"].get("GetRunStatus", 0) <= events // 10
    assert stats["throttled_total"] == 0
    ids = [e.id for e in store.events(limit=100_000)]
    assert len(ids) == len(set(ids))


async def test_a_lagging_list_never_moves_a_run_backwards(
    store: Store, session: aiohttp.ClientSession
) -> None:
    # DescribeRuns shows every run as it was 2 s ago. Per-run polling records the first
    # seconds from GetRunStatus (ahead of the list), then batch takes over the registry:
    # the list's older answers must be ignored, same-second ones confirmed, none repeated.
    async with running_simulator(SimulatorConfig(runs=0, seed=5)) as sim:
        sim.set_list_lag(2.0)
        uuids = sim.submit_group(300, spread_seconds=4.0, durations=(0.4, 0.8, 3.0))
        store.track(TrackRequest(u, sim.project_id) for u in uuids)
        rig = Rig(sim, session, store, interval=1.0)
        await run_for(rig.scheduler(), 2.0)
        metrics = Metrics()
        poller = BatchPoller(
            store=SqliteStore(store),
            source=rig.client,
            recorder=rig.recorder,
            options=BatchOptions(interval_seconds=1.0, terminal=TERMINAL),
            wall_clock=now,
            metrics=metrics,
        )
        await run_for(poller, 45, lambda: all(r.terminal for r in store.list_runs()))
    check_never_false(store, sim, uuids)

    def polls(outcome: str) -> float:
        value = metrics.registry.get_sample_value("omics_watcher_polls_total", {"outcome": outcome})
        return value or 0.0

    assert polls("stale") > 0  # the lag did show older statuses, and they were ignored
    assert polls("changed") > 0  # and newer ones were recorded from the list


async def test_a_listed_failure_keeps_the_metadata_shape_and_its_message(
    store: Store, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(SimulatorConfig(runs=0, seed=2)) as sim:
        uuids = sim.submit_group(
            5, spread_seconds=0.3, durations=(1.2, 1.2, 1.2), outcome="EXECUTOR_ERROR"
        )
        store.track(TrackRequest(u, sim.project_id) for u in uuids)
        rig = Rig(sim, session, store)
        sim.reset_stats()
        await run_for(rig.batch(), 20, lambda: all(r.terminal for r in store.list_runs()))
        # Recorded from the Run: GetRunStatus only for a change within the same second.
        assert sim.stats(timeline=False)["requests"].get("GetRunStatus", 0) <= 5
    failed = [e for e in recorded(store) if e.status == "EXECUTOR_ERROR"]
    assert len(failed) == 5
    for event in failed:
        metadata = event.data["metadata"]
        assert set(metadata) == {
            "Status",
            "ErrorMessage",
            "SubmitTime",
            "StartTime",
            "EndTime",
            "UpdateTime",
        }
        assert metadata["Status"] == "EXECUTOR_ERROR"
        assert metadata["ErrorMessage"]
        assert metadata["EndTime"]
        text = plain_text(message_for(event))
        failure = failure_of(event.data)
        assert failure is not None
        assert failure.message
        assert failure.message.splitlines()[0][:40] in text
        assert duration_of(event.data) is not None
