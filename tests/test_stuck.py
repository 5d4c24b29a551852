"""Stuck-run alerts: limits, configuration, and hung simulator runs through the daemon's pieces.

The end-to-end tests run the real scheduler, recorder, client and a real state file against
the simulator, with the :class:`StuckChecker` beside them as the daemon runs it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from support import now

from watcher.config import ConfigError, Settings, StuckSettings, load_settings
from watcher.events import STUCK, Event, RunState
from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.limiter import PacingLimiter
from watcher.options import stuck_limits
from watcher.polling.per_run import Scheduler, SchedulerOptions
from watcher.recorder import Recorder
from watcher.service.metrics import Metrics
from watcher.simulator import Simulator, SimulatorConfig, running_simulator
from watcher.sink import EventSink
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.stuck import StuckChecker, StuckLimits
from watcher.transitions import detect

TERMINAL = frozenset(Settings().polling.terminal)


# -- limits and configuration -------------------------------------------------------------------


def test_limit_precedence() -> None:
    limits = stuck_limits(
        StuckSettings(
            after_seconds=100,
            per_status={"QUEUED": 0, "RUNNING": 50},
            per_label={"team=genomics": 30, "tier=bulk": 0, "team=x": 10},
        )
    )
    assert limits.limit_for("INITIALIZING", {}) == 100
    assert limits.limit_for("RUNNING", {}) == 50
    assert limits.limit_for("QUEUED", {}) == 0
    assert limits.limit_for("QUEUED", {"team": "genomics"}) == 30  # labels beat statuses
    assert limits.limit_for("RUNNING", {"team": "genomics", "tier": "bulk"}) == 0  # smallest
    assert limits.smallest == 10
    assert limits.enabled
    assert limits.interval() == 2.5


def test_off_unless_some_limit_is_positive() -> None:
    assert not stuck_limits(StuckSettings()).enabled
    off = StuckSettings(after_seconds=0, per_status={"RUNNING": 0}, per_label={"a=b": 0})
    assert not stuck_limits(off).enabled
    assert stuck_limits(StuckSettings(per_status={"QUEUED": 60})).enabled
    assert StuckLimits(after_seconds=86400).interval() == 30.0
    assert StuckLimits(after_seconds=2).interval() == 1.0


def test_config_per_label(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[stuck]\nafter_seconds = 60\nper_label = {"team=genomics" = 3600}\n')
    settings = load_settings(str(path), environ={})
    assert settings.stuck.per_label == {"team=genomics": 3600}
    env = {"OMICS_WATCHER_STUCK__PER_LABEL": '{"team=x": 5}'}
    merged = load_settings(str(path), environ=env).stuck.per_label  # tables merge key by key
    assert merged == {"team=genomics": 3600, "team=x": 5}
    path.write_text('[stuck]\nper_label = {"genomics" = 3600}\nper_status = {RUNNING = -1}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), environ={})
    problems = "\n".join(caught.value.problems)
    assert "stuck.per_label" in problems
    assert "KEY=VALUE" in problems
    assert "stuck.per_status" in problems


# -- against a real state file ------------------------------------------------------------------

RUN_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
RUN_B = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
RUN_C = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"


def observe(store: Store, run_uuid: str, status: str, at: datetime) -> None:
    stored = store.get_run(run_uuid)
    previous = RunState(run_uuid, "", stored.status if stored else None, at)
    current = RunState(run_uuid, "", status, at)
    event = detect(previous, current, terminal=TERMINAL)
    assert store.record_observation(current, event, notifiers=[])


def poll(store: Store, at: datetime, *run_uuids: str) -> None:
    """Polls that found ``run_uuids`` unchanged at ``at`` (as the pollers record them)."""
    store.record_polls([(run_uuid, at) for run_uuid in run_uuids])


async def test_per_status_and_per_label_with_a_store(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store = Store.open(tmp_path / "state.db")
    store.track(
        [
            TrackRequest(RUN_A),
            TrackRequest(RUN_B, labels={"team": "genomics"}),
            TrackRequest(RUN_C),
        ]
    )
    observe(store, RUN_A, "QUEUED", t0)
    observe(store, RUN_B, "QUEUED", t0)
    observe(store, RUN_C, "RUNNING", t0)
    events: list[Event] = []
    woken: list[int] = []
    checker = StuckChecker(
        store=SqliteStore(store),
        limits=stuck_limits(
            StuckSettings(
                after_seconds=600, per_status={"QUEUED": 0}, per_label={"team=genomics": 60}
            )
        ),
        sink=EventSink(
            store=SqliteStore(store),
            route=lambda e: ["ops"],
            on_event=[events.append],
            on_recorded=lambda: woken.append(1),
        ),
    )
    poll(store, t0 + timedelta(seconds=59), RUN_A, RUN_B, RUN_C)
    assert await checker.check() == []
    poll(store, t0 + timedelta(seconds=61), RUN_A, RUN_B, RUN_C)
    (first,) = await checker.check()
    assert first.type == STUCK
    assert first.run_uuid == RUN_B
    assert first.data["status"] == "QUEUED"
    assert first.data["stuck_seconds"] == 61
    assert first.data["labels"] == {"team": "genomics"}
    assert first.data["since"] == "2026-01-01T00:00:00.000Z"
    assert first.timestamp == t0 + timedelta(seconds=61)  # the poll that saw it stuck
    poll(store, t0 + timedelta(seconds=601), RUN_C)
    (second,) = await checker.check()
    assert second.run_uuid == RUN_C  # RUN_A is QUEUED, which per_status silences
    poll(store, t0 + timedelta(days=3), RUN_A, RUN_B, RUN_C)
    assert await checker.check() == []
    assert [e.id for e in events] == [first.id, second.id]
    assert len(woken) == 2
    # Routed like every event: one outbox row for the route's notifier.
    pending = store.pending_deliveries("ops")
    assert sorted(d.event.id for d in pending) == sorted([first.id, second.id])
    # A second checker on the same file (a restart) does not repeat them.
    again = StuckChecker(
        store=SqliteStore(store),
        sink=EventSink(store=SqliteStore(store), route=lambda e: []),
        limits=StuckLimits(after_seconds=1),
    )
    assert [e.run_uuid for e in await again.check()] == [RUN_A]
    store.close()


async def test_max_per_pass(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store = Store.open(tmp_path / "state.db")
    runs = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(7)]
    store.track([TrackRequest(u) for u in runs])
    for run_uuid in runs:
        observe(store, run_uuid, "RUNNING", t0)
    checker = StuckChecker(
        store=SqliteStore(store),
        sink=EventSink(store=SqliteStore(store), route=lambda e: []),
        limits=StuckLimits(after_seconds=10),
        max_per_pass=3,
    )
    poll(store, t0 + timedelta(seconds=11), *runs)
    counts = [len(await checker.check()) for _ in range(4)]
    assert counts == [3, 3, 1, 0]
    store.close()


async def test_stuck_events_are_counted_and_announced_by_the_sink(tmp_path: Path) -> None:
    """A ``run.stuck`` goes through the one event sink: counted by type, seen by hooks."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store = Store.open(tmp_path / "state.db")
    store.track([TrackRequest(RUN_A)])
    observe(store, RUN_A, "RUNNING", t0)
    metrics = Metrics()
    seen: list[Event] = []
    checker = StuckChecker(
        store=SqliteStore(store),
        sink=EventSink(
            store=SqliteStore(store),
            route=lambda e: ["ops"],
            metrics=metrics,
            on_event=[seen.append],
        ),
        limits=StuckLimits(after_seconds=10),
    )
    poll(store, t0 + timedelta(seconds=11), RUN_A)
    (event,) = await checker.check()
    assert seen == [event]
    count = metrics.registry.get_sample_value("omics_watcher_events_total", {"type": STUCK})
    assert count == 1.0
    poll(store, t0 + timedelta(seconds=30), RUN_A)
    assert await checker.check() == []  # not written again: not counted
    assert metrics.registry.get_sample_value("omics_watcher_events_total", {"type": STUCK}) == 1.0
    store.close()


async def test_off_when_no_limit(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store = Store.open(tmp_path / "state.db")
    store.track([TrackRequest(RUN_A)])
    observe(store, RUN_A, "RUNNING", t0)
    checker = StuckChecker(
        store=SqliteStore(store),
        sink=EventSink(store=SqliteStore(store), route=lambda e: []),
        limits=stuck_limits(StuckSettings(after_seconds=0)),
    )
    poll(store, t0 + timedelta(days=30), RUN_A)
    assert not checker.enabled
    assert await checker.check() == []
    async with asyncio.timeout(1):
        await checker.run(asyncio.Event())  # returns at once, though never stopped
    assert all(e.type != STUCK for e in store.events())
    store.close()


# -- hung runs against the simulator ------------------------------------------------------------


async def watch(
    sim: Simulator,
    session: aiohttp.ClientSession,
    store: Store,
    limits: StuckLimits,
    seconds: float,
    interval: float = 0.2,
) -> list[Event]:
    """Run scheduler + recorder + stuck checker for ``seconds``, each run polled every
    ``interval`` seconds; every event recorded."""
    events: list[Event] = []
    client = OmicsClient(
        session=session,
        endpoint=sim.endpoint,
        region="ap-guangzhou",
        credentials=StaticProvider(Credential(sim.secret_id, sim.secret_key), name="t"),
        limiters={"default": PacingLimiter(20)},
        timeout=5,
    )
    sink = EventSink(store=SqliteStore(store), route=lambda e: ["ops"], on_event=[events.append])
    recorder = Recorder(store=SqliteStore(store), sink=sink, terminal=TERMINAL, wall_clock=now)
    scheduler = Scheduler(
        store=SqliteStore(store),
        source=client,
        recorder=recorder,
        options=SchedulerOptions(
            interval_seconds=interval,
            rate_per_second=20,
            request_timeout_seconds=5,
            terminal=TERMINAL,
            drain_seconds=1,
        ),
        wall_clock=now,
    )
    checker = StuckChecker(
        store=SqliteStore(store),
        sink=sink,
        limits=limits,
        interval=0.2,
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(scheduler.run(stop)), asyncio.create_task(checker.run(stop))]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return events


async def test_hung_run_yields_exactly_one_stuck(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # Default hung status: INITIALIZING, forever.
    async with running_simulator(SimulatorConfig(runs=0, seed=5)) as sim:
        hung = sim.submit_run(kind="hung", durations=(0.1, 0.1, 1.0))
        fine = sim.submit_run(kind="finishing", outcome="SUCCESS", durations=(0.1, 0.1, 0.3))
        store = Store.open(tmp_path / "state.db")
        store.track([TrackRequest(hung), TrackRequest(fine)])
        # ~15 checker passes after the limit passed.
        events = await watch(sim, session, store, StuckLimits(after_seconds=1.0), seconds=4.0)
        stuck = [e for e in events if e.type == STUCK]
        assert [(e.run_uuid, e.status) for e in stuck] == [(hung, "INITIALIZING")]
        assert stuck[0].data["stuck_seconds"] >= 1
        assert [e.type for e in store.events(run_uuid=hung)].count(STUCK) == 1
        assert not [e for e in store.events(run_uuid=fine) if e.type == STUCK]
        pending = [d.event for d in store.pending_deliveries("ops", limit=100)]
        assert stuck[0].id in {e.id for e in pending}
        store.close()


async def test_stuck_again_after_the_next_transition(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # RUNNING for 2.5 s, then PAUSED forever: stuck in RUNNING, re-armed, stuck in PAUSED.
    async with running_simulator(SimulatorConfig(runs=0, seed=5, hung_status="PAUSED")) as sim:
        run_uuid = sim.submit_run(kind="hung", durations=(0.1, 0.1, 2.5))
        store = Store.open(tmp_path / "state.db")
        store.track([TrackRequest(run_uuid)])
        events = await watch(sim, session, store, StuckLimits(after_seconds=1.0), seconds=5.5)
        kinds = [(e.type, e.status) for e in events]
        assert [k for k in kinds if k[0] == STUCK] == [(STUCK, "RUNNING"), (STUCK, "PAUSED")]
        # In order: the RUNNING alert before the transition that cleared it.
        assert kinds.index((STUCK, "RUNNING")) < kinds.index(("run.status_changed", "PAUSED"))
        assert kinds.index(("run.status_changed", "PAUSED")) < kinds.index((STUCK, "PAUSED"))
        store.close()


def true_durations(sim: Simulator, run_uuid: str) -> dict[str, list[float]]:
    """How long the run really spent in each status, by the simulator's own timeline
    (``inf`` for the status it is still in)."""
    timeline = sim.timeline(run_uuid)
    out: dict[str, list[float]] = {}
    for here, after in zip(timeline, [*timeline[1:], None], strict=True):
        end = after.at if after is not None else float("inf")
        out.setdefault(here.status, []).append(end - here.at)
    return out


async def test_a_poll_cycle_three_times_the_limit_gives_no_false_alert(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Must show (issue 12): polls 3 s apart, ``after_seconds = 1``. Runs of one group pass
    through INITIALIZING and RUNNING in 0.8 s each, spread over 5 s, so most of those
    statuses are still current a second after a poll saw them but gone by the next poll:
    none may be reported. Two hung runs are reported exactly once each."""
    async with running_simulator(SimulatorConfig(runs=0, seed=12)) as sim:
        group = sim.submit_group(30, spread_seconds=5.0, durations=(0.8, 0.8, 0.8))
        hung = [sim.submit_run(kind="hung", durations=(0.2, 0.2, 1.0)) for _ in range(2)]
        store = Store.open(tmp_path / "state.db")
        store.track([TrackRequest(u) for u in [*group, *hung]])
        limits = StuckLimits(after_seconds=1.0, per_status={"QUEUED": 0})  # the spread
        events = await watch(sim, session, store, limits, seconds=10.0, interval=3.0)
        stuck = [e for e in events if e.type == STUCK]
        assert sorted((e.run_uuid, e.status) for e in stuck) == sorted(
            (u, "INITIALIZING") for u in hung
        )
        for event in stuck:  # what was reported really lasted the limit, and more
            assert min(true_durations(sim, event.run_uuid)[str(event.status)]) >= 1.0
            assert event.data["stuck_seconds"] >= 1
        # The short statuses were there to be misread: polls saw many of them (about 18).
        short = {"INITIALIZING", "RUNNING"}
        assert len([e for e in events if e.run_uuid in group and e.status in short]) >= 5
        for run_uuid in hung:
            assert [e.type for e in store.events(run_uuid=run_uuid)].count(STUCK) == 1
        store.close()
