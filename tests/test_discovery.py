"""Discovery against the simulator and a real state file; the store's part of it."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiohttp
import structlog
from support import daemon_task, make_client, now, state_file_before

from watcher.config import WatchSettings
from watcher.events import Event
from watcher.omics.client import OmicsClient
from watcher.omics.limiter import PacingLimiter
from watcher.omics.models import RunsFilter
from watcher.options import watch_options
from watcher.polling.discovery import Discovery, watch_key
from watcher.polling.per_run import Scheduler, SchedulerOptions
from watcher.recorder import Recorder
from watcher.simulator import Simulator, SimulatorConfig, running_simulator
from watcher.sink import EventSink
from watcher.store import DiscoveredRun, Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.store.schema import MIGRATIONS

TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "CANCELED"})
RUN_A = "84232c68-a016-4668-b2e3-168a175d6f29"
RUN_B = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


# --- the store ------------------------------------------------------------------------------


def test_migration_2_upgrades_a_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = state_file_before(path, 1)
    conn.execute(
        "INSERT INTO runs (run_uuid, tracked, tracked_at) VALUES (?, 0, 0)", (RUN_A,)
    )  # untracked by the user under version 1
    conn.close()
    with Store.open(path) as store:
        assert store.get_run(RUN_A) is None
        assert (
            store.track_discovered(
                [DiscoveredRun(RUN_A, "p", "RUNNING")], baseline=False, terminal=TERMINAL
            )
            == []
        )
        assert not store.discovery_done("k")
        store.mark_discovery_done("k")
        store.mark_discovery_done("k")
        assert store.discovery_done("k")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_watch_key_ignores_order() -> None:
    one = watch_key("p", [RunsFilter("Status", ["A", "B"]), RunsFilter("RunGroupId", ["g"])])
    two = watch_key("p", [RunsFilter("RunGroupId", ["g"]), RunsFilter("Status", ["B", "A"])])
    assert one == two
    assert one != watch_key("q", [RunsFilter("RunGroupId", ["g"])])


# --- against the simulator ------------------------------------------------------------------


def client_for(sim: Simulator, session: aiohttp.ClientSession) -> OmicsClient:
    limiters = {
        "GetRunStatus": PacingLimiter(20),
        "DescribeRuns": PacingLimiter(20),
        "default": PacingLimiter(5),
    }
    return make_client(sim, session, limiters=limiters)


def discovery(
    store: Store, client: OmicsClient, *watches: WatchSettings, on_tracked: Callable[[], None]
) -> Discovery:
    return Discovery(
        store=SqliteStore(store),
        source=client,
        watches=[watch_options(w) for w in watches],
        terminal=TERMINAL,
        on_tracked=on_tracked,
        rng=random.Random(3),
    )


async def poll_once(store: Store, client: OmicsClient) -> list[Event]:
    """Let a per-run scheduler poll every active run once, routing every event to "ops"."""
    events: list[Event] = []
    recorder = Recorder(
        store=SqliteStore(store),
        sink=EventSink(store=SqliteStore(store), route=lambda e: ["ops"], on_event=[events.append]),
        terminal=TERMINAL,
        wall_clock=now,
    )
    scheduler = Scheduler(
        store=SqliteStore(store),
        source=client,
        recorder=recorder,
        options=SchedulerOptions(
            interval_seconds=30, rate_per_second=20, request_timeout_seconds=5, terminal=TERMINAL
        ),
        wall_clock=now,
    )
    active = await scheduler.load()
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(0.5 + active / 20)
    stop.set()
    await task
    return events


def outbox_runs(store: Store) -> list[str]:
    pending = store.pending_deliveries(limit=10_000)
    return sorted(d.event.run_uuid for d in pending)


def mixed(runs: int, **extra: object) -> SimulatorConfig:
    """Half the runs finish within half a second, half run forever."""
    return SimulatorConfig(
        runs=runs,
        seed=5,
        kinds={"finishing": 0.5, "forever": 0.5},
        queued_seconds=(0.05, 0.1),
        initializing_seconds=(0.05, 0.1),
        running_seconds=(0.1, 0.3),
        **extra,  # type: ignore[arg-type]
    )


async def wait_for(check: Callable[[], bool], limit: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        assert loop.time() - started < limit, "timed out"
        await asyncio.sleep(0.02)
    return loop.time() - started


async def test_discovery_tracks_a_submitted_run_once_across_restarts(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "state.db"
    watch = WatchSettings(labels={"team": "genomics"}, interval_seconds=1.0)
    async with running_simulator(mixed(40)) as sim:
        await asyncio.sleep(0.6)  # the finishing half has finished
        client = client_for(sim, session)
        finished = [u for u in sim.run_uuids if sim.status(u) in TERMINAL]
        assert 5 < len(finished) < 35
        with Store.open(path) as store:
            tracked = asyncio.Event()
            found = discovery(store, client, watch, on_tracked=tracked.set)
            stop = asyncio.Event()
            task = asyncio.create_task(found.run(stop))
            await wait_for(lambda: len(store.list_runs()) == 40, 5)
            # The first pass is history: recorded, silently.
            for run in store.list_runs():
                assert run.labels == {"team": "genomics", "run_group": run.labels["run_group"]}
                assert run.labels["run_group"].startswith("rg-")
                assert run.status == sim.status(run.run_uuid)
                assert run.terminal == (run.run_uuid in finished)
            assert store.events(limit=100) == []
            await asyncio.sleep(0.3)
            first_seen = {r.run_uuid: r.tracked_at for r in store.list_runs()}
            new = sim.submit_run(kind="forever")
            waited = await wait_for(lambda: store.get_run(new) is not None, 3)
            assert waited < 1.5  # within one discovery interval (plus a request)
            stop.set()
            await task
            assert store.get_run(new).status is None  # type: ignore[union-attr]
            gone = next(u for u in sim.run_uuids if u not in finished)
            store.untrack([gone])
        later = sim.submit_run(kind="forever")  # submitted while the daemon was down
        with Store.open(path) as store:  # restart
            found = discovery(store, client, watch, on_tracked=lambda: None)
            stop = asyncio.Event()
            task = asyncio.create_task(found.run(stop))
            await wait_for(lambda: store.get_run(later) is not None, 3)
            await asyncio.sleep(2.2)  # two more passes
            stop.set()
            await task
            runs = {r.run_uuid: r for r in store.list_runs()}
            assert len(runs) == 41  # 40 + 2 submitted - 1 untracked
            assert gone not in runs
            for run_uuid, tracked_at in first_seen.items():
                if run_uuid != gone:
                    assert runs[run_uuid].tracked_at == tracked_at  # never tracked again
            assert runs[later].status is None  # not a first pass: news, not history
            assert runs[later].labels["team"] == "genomics"
            assert runs[later].labels["run_group"].startswith("rg-")
            # Polling reports the two new runs and nothing of the baseline.
            events = await poll_once(store, client)
            assert {e.run_uuid for e in events} == {new, later}
            assert set(outbox_runs(store)) == {new, later}
            assert all(e.previous_status is None for e in events)


async def test_notify_existing_reports_what_the_first_pass_finds(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(mixed(20)) as sim:
        await asyncio.sleep(0.6)
        client = client_for(sim, session)
        with Store.open(tmp_path / "state.db") as store:
            watch = WatchSettings(notify_existing=True)
            added = await discovery(store, client, watch, on_tracked=lambda: None).discover(0)
            assert sorted(added) == sorted(sim.run_uuids)
            assert all(r.status is None for r in store.list_runs())
            await poll_once(store, client)
            assert outbox_runs(store) == sorted(sim.run_uuids)
            assert {r.status for r in store.list_runs()} == {sim.status(u) for u in sim.run_uuids}


async def test_filters_labels_and_paging(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    config = SimulatorConfig(runs=260, seed=8, runs_per_group=120, kinds={"forever": 1.0})
    async with running_simulator(config) as sim:
        client = client_for(sim, session)
        listed = sim.call("DescribeRuns", {"Limit": 100, "Offset": 200})["Runs"]
        group = listed[0]["RunGroupId"]  # among the oldest runs: the first group, 120 runs
        members = [
            r["RunUuid"]
            for r in sim.call(
                "DescribeRuns",
                {"Limit": 100, "Filters": [{"Name": "RunGroupId", "Values": [group]}]},
            )["Runs"]
        ]
        with Store.open(tmp_path / "state.db") as store:
            by_group = WatchSettings(filters={"RunGroupId": [group]}, labels={"g": "1"})
            everything = WatchSettings(labels={"all": "yes"})
            found = discovery(store, client, by_group, everything, on_tracked=lambda: None)
            in_group = await found.discover(0)
            assert len(in_group) == 120  # two pages
            assert set(members) <= set(in_group)
            rest = await found.discover(1)
            assert len(rest) == 140  # three pages; the group's runs were known already
            labels = {r.run_uuid: r.labels for r in store.list_runs()}
            assert all(labels[u] == {"g": "1", "run_group": group} for u in in_group)
            assert all(labels[u]["all"] == "yes" for u in rest)
            assert all(labels[u]["run_group"] != group for u in rest)
            # A later pass stops at the first page without news: one request.
            sim.reset_stats()
            assert await found.discover(1) == []
            assert sim.stats(timeline=False)["requests"]["DescribeRuns"] == 1


async def test_discovery_refused_logs_once_and_recovers(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(mixed(5)) as sim:
        sim.deny_action("DescribeRuns")
        client = client_for(sim, session)
        with Store.open(tmp_path / "state.db") as store, structlog.testing.capture_logs() as logs:
            found = discovery(
                store, client, WatchSettings(interval_seconds=0.5), on_tracked=lambda: None
            )
            stop = asyncio.Event()
            task = asyncio.create_task(found.run(stop))
            await asyncio.sleep(1.5)
            assert store.list_runs() == []
            sim.deny_action("DescribeRuns", None)
            await wait_for(lambda: len(store.list_runs()) == 5, 3)
            stop.set()
            await task
        loud = [e["event"] for e in logs if e["log_level"] in ("warning", "error")]
        assert loud == ["discovery_refused"]


def test_untracked_run_is_never_rediscovered_even_on_a_first_pass(tmp_path: Path) -> None:
    # The marker is per entry: a new [[watch]] entry does a first pass over runs the user
    # untracked long ago, and still leaves them alone.
    with Store.open(tmp_path / "state.db") as store:
        store.track([TrackRequest(RUN_A)])
        store.untrack([RUN_A])
        for baseline in (True, False):
            added = store.track_discovered(
                [DiscoveredRun(RUN_A, "", "RUNNING")], baseline=baseline, terminal=TERMINAL
            )
            assert added == []
        assert store.list_runs() == []


async def test_daemon_discovers_and_batch_polls(tmp_path: Path) -> None:
    """The wiring: run_daemon with strategy = "batch" and one [[watch]] entry."""
    from watcher.app import Wiring
    from watcher.config import Settings

    async with running_simulator(mixed(30)) as sim:
        await asyncio.sleep(0.6)
        settings = Settings(
            tencentcloud={
                "endpoint": sim.endpoint,
                "secret_id": sim.secret_id,
                "secret_key": sim.secret_key,
                "project_id": sim.project_id,
            },
            polling={"interval_seconds": 0.5, "strategy": "batch"},
            state={"path": tmp_path / "state.db"},
            server={"listen": "127.0.0.1:0"},
            watch=[{"labels": {"team": "genomics"}, "interval_seconds": 0.5}],
        )
        events: list[Event] = []
        ready = asyncio.Event()
        wiring = Wiring(on_event=events.append, on_ready=lambda port: ready.set())
        async with daemon_task(settings, wiring=wiring, stop_timeout=15):
            await asyncio.wait_for(ready.wait(), 10)
            new = sim.submit_run(kind="finishing", outcome="SUCCESS", durations=(0.3, 0.3, 0.5))
            await wait_for(lambda: any(e.terminal and e.run_uuid == new for e in events), 10)
        assert {e.run_uuid for e in events} == {new}  # the first pass was a silent baseline
        assert [e.status for e in events][-1] == "SUCCESS"
        assert all(e.labels["team"] == "genomics" for e in events)
        assert all(e.labels["run_group"].startswith("rg-") for e in events)
        stats = sim.stats(timeline=False)
        assert stats["requests"]["DescribeRuns"] > 0
        assert stats["requests"]["GetRunStatus"] <= len(events) + 3  # only for changes
