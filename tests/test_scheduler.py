"""The scheduler against the simulator, with the real client, limiter and SQLite store."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from support import OmicsServer, make_client, now

from watcher.events import Event
from watcher.omics.limiter import PacingLimiter
from watcher.polling.per_run import Scheduler, SchedulerOptions
from watcher.recorder import Recorder
from watcher.simulator import SimulatorConfig, running_simulator
from watcher.sink import EventSink
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore

TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "CANCELED"})


def make_scheduler(
    store: Store,
    server: OmicsServer,
    session: aiohttp.ClientSession,
    *,
    secret_key: str | None = None,
    interval: float = 1.0,
    events: list[Event] | None = None,
    route: Callable[[Event], list[str]] = lambda e: [],
    drain_seconds: float = 5.0,
) -> Scheduler:
    """The scheduler with the real client; it watches the backlog of the client's limiter."""
    sink = events if events is not None else []
    limiter = PacingLimiter(20)
    client = make_client(server, session, limiters={"default": limiter}, secret_key=secret_key)
    recorder = Recorder(
        store=SqliteStore(store),
        sink=EventSink(store=SqliteStore(store), route=route, on_event=[sink.append]),
        terminal=TERMINAL,
        wall_clock=now,
    )
    return Scheduler(
        backlog=lambda: limiter.waiting,
        when_drained=limiter.when_drained,  # as the daemon wires it (app.py)
        store=SqliteStore(store),
        source=client,
        recorder=recorder,
        options=SchedulerOptions(
            interval_seconds=interval,
            rate_per_second=20,
            request_timeout_seconds=5,
            terminal=TERMINAL,
            drain_seconds=drain_seconds,
        ),
        wall_clock=now,
        rng=random.Random(7),
    )


def is_subsequence(part: list[str | None], whole: list[str]) -> bool:
    remaining = iter(whole)
    return all(any(item == w for w in remaining) for item in part)


async def run_until(scheduler: Scheduler, done: Callable[[], bool], limit: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not done() and loop.time() < deadline:
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_every_transition_reported_once_and_final_statuses_match(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    config = SimulatorConfig(
        runs=40,
        seed=3,
        queued_seconds=(0.2, 1.0),
        initializing_seconds=(0.2, 1.0),
        running_seconds=(1.0, 4.0),
    )
    async with running_simulator(config) as sim:
        with Store.open(tmp_path / "state.db") as store:
            store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
            events: list[Event] = []
            scheduler = make_scheduler(store, sim, session, events=events)
            await run_until(
                scheduler,
                lambda: all(r.terminal for r in store.list_runs()),
                limit=90,
            )
            runs = {r.run_uuid: r for r in store.list_runs()}
            for uuid in sim.run_uuids:
                assert runs[uuid].status == sim.status(uuid)
                assert runs[uuid].terminal
            stats = sim.stats(timeline=False)
            assert stats["signature_failures"] == 0
            assert stats["throttled_total"] == 0
            assert stats["max_window_arrivals"]["GetRunStatus"] <= 20
            # No event for a transition that did not happen, none twice.
            seen = [(e.run_uuid, e.previous_status, e.status) for e in events]
            assert len(seen) == len(set(seen))
            for run_uuid in sim.run_uuids:
                mine = [e for e in events if e.run_uuid == run_uuid]
                observed = [e.status for e in mine]
                assert is_subsequence(observed, [t.status for t in sim.timeline(run_uuid)])
                # Each event chains from the one before it.
                assert [e.previous_status for e in mine] == [None, *observed[:-1]]
            # The event log holds the same events the hook saw.
            assert {e.id for e in store.events(limit=10_000)} == {e.id for e in events}
            # First observation of each run carries previous_status null.
            firsts = [e for e in events if e.previous_status is None]
            assert {e.run_uuid for e in firsts} == set(sim.run_uuids)


async def test_over_budget_every_run_is_polled_in_turn(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # 120 runs at 1 s interval need 120 req/s; the budget is 20/s: a cycle lasts ~6 s, and
    # round robin means no run is polled a second time before all others were polled once.
    config = SimulatorConfig(runs=120, seed=5, kinds={"forever": 1.0})
    async with running_simulator(config) as sim:
        with Store.open(tmp_path / "state.db") as store:
            store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
            scheduler = make_scheduler(store, sim, session)
            await run_until(scheduler, lambda: False, limit=9)
            polls = sim.stats(timeline=False)["polls"]
            counts = [polls.get(u, 0) for u in sim.run_uuids]
            assert min(counts) >= 1, "a run starved"
            assert max(counts) - min(counts) <= 1, counts


async def test_requests_keep_starting_at_the_budget_while_earlier_ones_hang(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # Every answer takes 3 s (under the 5 s request timeout), so no worker comes back to
    # refill the limiter's queue: the limiter says when its queue ran dry and the loop
    # refills it at once. Without a refill the loop would only look at its 1 s registry
    # turn (about two requests a second); with it, requests start at the 20/s budget.
    config = SimulatorConfig(
        runs=60,
        seed=9,
        kinds={"forever": 1.0},
        fault_rate=1.0,
        fault_kinds=("slow",),
        slow_seconds=3.0,
    )
    async with running_simulator(config) as sim:
        with Store.open(tmp_path / "state.db") as store:
            store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
            scheduler = make_scheduler(store, sim, session)
            await run_until(scheduler, lambda: False, limit=2.5)
            stats = sim.stats(timeline=False)
            asked = sum(stats["polls"].values())
            assert asked >= 20, f"{asked} requests in 2.5 s while answers hang"
            assert stats["max_window_arrivals"]["GetRunStatus"] <= 20


async def test_a_cancelled_scheduler_does_not_wait_for_its_polls_in_flight(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # A lost lease cancels the active daemon's work: polls in flight are cancelled with it
    # rather than given the stop's drain grace (their requests may not start anyway). Every
    # answer takes 6 s: waiting for them, the cancelled scheduler would end 6 s after its
    # first request; it ends at once (well within 3 s).
    slow = 6.0
    config = SimulatorConfig(
        runs=20,
        seed=9,
        kinds={"forever": 1.0},
        fault_rate=1.0,
        fault_kinds=("slow",),
        slow_seconds=slow,
    )
    async with running_simulator(config) as sim:
        with Store.open(tmp_path / "state.db") as store:
            store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
            scheduler = make_scheduler(store, sim, session, drain_seconds=600)
            loop = asyncio.get_running_loop()
            started = loop.time()
            task = asyncio.create_task(scheduler.run(asyncio.Event()))
            while sim.stats(timeline=False)["requests"].get("GetRunStatus", 0) < 3:
                await asyncio.sleep(0.05)  # polls are in flight
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=slow / 2)
            assert done == {task}
            assert task.cancelled()
            await asyncio.sleep(max(0.0, started + slow + 0.5 - loop.time()))  # the answers


async def test_run_tracked_while_running_is_polled_within_two_seconds(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    config = SimulatorConfig(runs=200, seed=9, kinds={"forever": 1.0})
    async with running_simulator(config) as sim:
        late = sim.run_uuids[-1]
        with Store.open(tmp_path / "state.db") as store:
            store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids[:-1])
            scheduler = make_scheduler(store, sim, session, interval=1.0)
            stop = asyncio.Event()
            task = asyncio.create_task(scheduler.run(stop))
            # Once every run was polled, all are overdue again (199 runs, 1 s interval, 20/s).
            while len(sim.stats(timeline=False)["polls"]) < 199:
                await asyncio.sleep(0.2)
            # Tracked by "another process": a second connection to the same file.
            with Store.open(tmp_path / "state.db") as cli:
                cli.track([TrackRequest(late, sim.project_id)])
            loop = asyncio.get_running_loop()
            started = loop.time()
            while sim.stats(timeline=False)["polls"].get(late, 0) == 0:
                assert loop.time() - started < 10, "new run not polled"
                await asyncio.sleep(0.05)
            waited = loop.time() - started
            stop.set()
            await asyncio.wait_for(task, 15)
            assert waited < 2.5, waited


async def test_unknown_run_yields_one_not_found_and_is_dropped(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(SimulatorConfig(runs=1, seed=1)) as sim:
        ghost = "00000000-0000-4000-8000-000000000000"
        with Store.open(tmp_path / "state.db") as store:
            store.track([TrackRequest(ghost, sim.project_id)])
            events: list[Event] = []
            scheduler = make_scheduler(store, sim, session, events=events)
            await run_until(scheduler, lambda: bool(events), limit=10)
            await run_until(scheduler, lambda: False, limit=2)
            assert [e.type for e in events] == ["run.not_found"]
            assert sim.stats(timeline=False)["polls"].get(ghost, 0) <= 1
            run = store.get_run(ghost)
            assert run is not None
            assert run.stopped


async def test_bad_credentials_pause_polling_instead_of_hammering(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(SimulatorConfig(runs=30, seed=2, kinds={"forever": 1.0})) as sim:
        with Store.open(tmp_path / "state.db") as store:
            store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
            scheduler = make_scheduler(store, sim, session, secret_key="wrong-key")
            await run_until(scheduler, lambda: False, limit=4)
            assert scheduler.paused
            stats = sim.stats(timeline=False)
            # 30 due runs, yet only the requests in flight when the first failure came back.
            assert stats["auth_failures"] + stats["signature_failures"] <= 25
            assert all(r.status is None for r in store.list_runs())


async def test_a_poll_that_crashes_on_a_bug_keeps_its_run_watched(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(SimulatorConfig(runs=1, seed=1, kinds={"forever": 1.0})) as sim:
        client = make_client(sim, session)
        calls = 0

        class BuggyOnce:
            """GetRunStatus through the real client, but the first call hits a bug."""

            async def get_run_status(self, run_uuid: str, project_id: str = "") -> Any:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("a bug, not an API error")
                return await client.get_run_status(run_uuid, project_id)

        with Store.open(tmp_path / "state.db") as store:
            store.track(TrackRequest(u, sim.project_id) for u in sim.run_uuids)
            events: list[Event] = []
            recorder = Recorder(
                store=SqliteStore(store),
                sink=EventSink(
                    store=SqliteStore(store), route=lambda e: [], on_event=[events.append]
                ),
                terminal=TERMINAL,
                wall_clock=now,
            )
            scheduler = Scheduler(
                store=SqliteStore(store),
                source=BuggyOnce(),
                recorder=recorder,
                options=SchedulerOptions(
                    interval_seconds=1,
                    rate_per_second=20,
                    request_timeout_seconds=5,
                    terminal=TERMINAL,
                    crash_retry_seconds=0.5,
                ),
                wall_clock=now,
            )
            await run_until(scheduler, lambda: bool(events), limit=10)
            # The crash did not drop the run: it was polled again and its first status recorded.
            assert calls >= 2
            assert events[0].run_uuid == sim.run_uuids[0]
            assert events[0].previous_status is None
