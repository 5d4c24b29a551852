"""The one event sink: every producer's event is routed, written and announced the same way.

Unit tests on a real state file, then the whole daemon: a roll-up and a stuck alert reach
``Wiring.on_event`` and the ``omics_watcher_events`` counter, like status changes do.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from support import daemon_task

from watcher.app import Wiring
from watcher.config import Settings
from watcher.events import GROUP_COMPLETED, RUN_GROUP_LABEL, STATUS_CHANGED, STUCK, Event, RunState
from watcher.service.metrics import Metrics
from watcher.simulator import SimulatorConfig, running_simulator
from watcher.sink import EventSink
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.transitions import detect, not_found_event

RUN = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TERMINAL = frozenset(Settings().polling.terminal)


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Announced:
    """What a sink announced: each hook call, then each wake-up of the dispatcher."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def hook(self, event: Event) -> None:
        self.calls.append(f"event:{event.type}")

    def woken(self) -> None:
        self.calls.append("woken")


def sink_for(store: Store, routes: list[str]) -> tuple[EventSink, Metrics, Announced]:
    metrics, announced = Metrics(), Announced()
    sink = EventSink(
        store=SqliteStore(store),
        route=lambda event: routes,
        metrics=metrics,
        on_recorded=announced.woken,
        on_event=[announced.hook],
    )
    return sink, metrics, announced


def change(previous: str | None, status: str, at: datetime) -> tuple[RunState, Event]:
    state = RunState(RUN, "", status, at)
    event = detect(RunState(RUN, "", previous, at), state, terminal=TERMINAL)
    assert event is not None
    return state, event


async def test_a_status_change_is_written_compare_and_set_then_announced(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state.db") as store:
        store.track([TrackRequest(RUN)])
        sink, metrics, announced = sink_for(store, ["ops"])
        state, event = change(None, "RUNNING", T0)
        assert await sink.emit(event, observed=state)
        assert [d.event.id for d in store.pending_deliveries("ops")] == [event.id]
        assert announced.calls == [f"event:{STATUS_CHANGED}", "woken"]  # hooks, then wake-up
        assert count(metrics, "omics_watcher_events_total", type=STATUS_CHANGED) == 1
        assert count(metrics, "omics_watcher_transitions_total") == 1
        # A writer that compared against a status the registry has left records nothing,
        # and nothing is counted or announced.
        stale_state, stale = change(None, "QUEUED", T0 + timedelta(seconds=1))
        assert not await sink.emit(stale, observed=stale_state)
        assert announced.calls == [f"event:{STATUS_CHANGED}", "woken"]
        assert count(metrics, "omics_watcher_events_total", type=STATUS_CHANGED) == 1
        stored = store.get_run(RUN)
        assert stored is not None
        assert stored.status == "RUNNING"


async def test_a_status_change_needs_the_observed_state(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state.db") as store:
        store.track([TrackRequest(RUN)])
        sink, _, announced = sink_for(store, [])
        _, event = change(None, "RUNNING", T0)
        with pytest.raises(ValueError, match="observed state"):
            await sink.emit(event)
        assert announced.calls == []


async def test_not_found_is_announced_once_only_when_written(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state.db") as store:
        store.track([TrackRequest(RUN)])
        sink, metrics, announced = sink_for(store, ["ops"])
        event = not_found_event(RunState(RUN, "", "RUNNING", T0), now=T0)
        assert await sink.emit(event)
        again = not_found_event(RunState(RUN, "", "RUNNING", T0), now=T0 + timedelta(seconds=1))
        assert not await sink.emit(again)  # the run is stopped already: nothing written
        assert announced.calls == [f"event:{event.type}", "woken"]
        assert count(metrics, "omics_watcher_events_total", type=event.type) == 1


def test_route_keeps_only_the_notifiers_asked_for(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state.db") as store:
        sink, _, _ = sink_for(store, ["chat", "hook", "ops"])
        _, event = change(None, "RUNNING", T0)
        assert sink.route(event) == ["chat", "hook", "ops"]
        assert sink.route(event, only={"ops", "chat", "other"}) == ["chat", "ops"]
        assert sink.route(event, only=set()) == []


# -- the daemon: every producer through the one sink -------------------------------------------


async def test_the_daemon_counts_and_announces_rollups_and_stuck_alerts(tmp_path: Path) -> None:
    """Before the sink, roll-ups missed both the events metric and ``on_event``."""
    seen: list[Event] = []
    ports: list[int] = []
    async with running_simulator(SimulatorConfig(runs=0, seed=11)) as sim:
        finishing = [
            sim.submit_run(kind="finishing", outcome="SUCCESS", durations=(0.1, 0.1, 0.3))
            for _ in range(2)
        ]
        hung = sim.submit_run(kind="hung", durations=(0.1, 0.1, 1.0))
        state = tmp_path / "state.db"
        with Store.open(state) as store:
            store.track(
                TrackRequest(r, sim.project_id, {RUN_GROUP_LABEL: "rg-1"}) for r in finishing
            )
            store.track([TrackRequest(hung, sim.project_id)])
        settings = Settings(
            tencentcloud={
                "endpoint": sim.endpoint,
                "secret_id": sim.secret_id,
                "secret_key": sim.secret_key,
                "project_id": sim.project_id,
            },
            polling={"interval_seconds": 0.3},
            state={"path": state},
            server={"listen": "127.0.0.1:0"},
            stuck={"after_seconds": 1},
            notifiers=[{"name": "log", "type": "log", "rollup": True}],
        )
        wiring = Wiring(on_event=seen.append, on_ready=ports.append)
        async with daemon_task(settings, wiring=wiring), asyncio.timeout(20):
            while not ports or not {GROUP_COMPLETED, STUCK} <= {e.type for e in seen}:
                await asyncio.sleep(0.1)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{ports[0]}/metrics") as response,
            ):
                text = await response.text()
    (rollup,) = [e for e in seen if e.type == GROUP_COMPLETED]
    assert rollup.data["run_group"] == "rg-1"
    assert any(e.type == STUCK and e.run_uuid == hung for e in seen)
    assert exported(text, GROUP_COMPLETED) == 1.0  # once per group
    assert exported(text, STUCK) >= 1.0


def exported(text: str, event_type: str) -> float:
    """The value of ``omics_watcher_events_total{type=...}`` in a /metrics page (0 if absent)."""
    line = f'omics_watcher_events_total{{type="{event_type}"}} '
    values = [float(row[len(line) :]) for row in text.splitlines() if row.startswith(line)]
    return values[0] if values else 0.0
