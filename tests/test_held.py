"""Held deliveries: a failure is in the registry at once, its webhook waits for the details.

The recorder writes a failing transition (status, event, outbox rows) before its enrichment,
with the rows held; the dispatcher never sends a held row; the release stores the details
under the same event id and the webhook carries them, once. A process that dies while rows
are held loses nothing: the next start releases them as they are. Against a real state file
and a real local webhook receiver (aiohttp on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from pydantic import TypeAdapter
from support import delivering, now, serve_hook, until

from watcher.delivery.dispatcher import Dispatcher
from watcher.events import RUN_GROUP_LABEL, Event, RunState
from watcher.notifiers.base import Notifier
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.recorder import Recorder
from watcher.rollup import RollupTracker
from watcher.sink import EventSink
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.store.outbox import HELD_NEXT_ATTEMPT
from watcher.transitions import detect

RUN = "22222222-2222-4222-8222-222222222222"
OTHER = "33333333-3333-4333-8333-333333333333"
TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "CANCELED"})
SECRET = "whsec_" + base64.b64encode(b"h" * 32).decode()
DETAILS = {"task": "wf.align", "message": "exit 137", "stderr_tail": "Killed\n"}


@dataclass
class Inbox:
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def of(self, run_uuid: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["data"]["run_uuid"] == run_uuid]


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    state = Inbox()

    async def handle(request: web.Request) -> web.Response:
        state.bodies.append(json.loads(await request.read()))
        return web.Response(status=204)

    async with serve_hook(handle) as url:
        state.url = url
        yield state


def webhook(inbox: Inbox, session: aiohttp.ClientSession) -> Notifier:
    raw = {"name": "hook", "type": "webhook", "url": inbox.url, "secret": SECRET}
    settings = TypeAdapter(NotifierSettings).validate_python(raw)
    return build_notifier(settings, session=session, logger=structlog.get_logger(), clock=now)


def dispatching(store: Store, notifier: Notifier) -> AbstractAsyncContextManager[Dispatcher]:
    """A dispatcher (one webhook) delivering in the background during an ``async with``."""
    dispatcher = Dispatcher(
        store=SqliteStore(store),
        notifiers={"hook": notifier},
        logger=structlog.get_logger(),
        poll_interval=0.1,
    )
    return delivering(dispatcher, grace=1.0)


class BlockingEnricher:
    """Finds the details only once the test opens ``gate`` (as a starved API budget would)."""

    failing = frozenset({"EXECUTOR_ERROR"})

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.asked: list[str] = []

    async def failure(
        self, run_uuid: str, project_id: str, metadata: Mapping[str, Any]
    ) -> Mapping[str, str] | None:
        self.asked.append(run_uuid)
        await self.gate.wait()
        return DETAILS


def sink_for(store: Store, on_recorded: Callable[[], None] = lambda: None) -> EventSink:
    return EventSink(
        store=SqliteStore(store), route=lambda event: ["hook"], on_recorded=on_recorded
    )


async def held_failure(store: Store, run_uuid: str, *, held_for: float = 10.0) -> Event:
    """Record RUNNING → EXECUTOR_ERROR for ``run_uuid`` with its deliveries held."""
    sink = sink_for(store)
    seen = now()
    before = RunState(run_uuid, "prj-a", "RUNNING", seen)
    after = RunState(run_uuid, "prj-a", "EXECUTOR_ERROR", seen, metadata={"Status": "X"})
    assert store.record_observation(before, detect(None, before, terminal=TERMINAL), notifiers=[])
    event = detect(before, after, terminal=TERMINAL)
    assert event is not None
    assert await sink.emit(event, observed=after, held_until=seen + timedelta(seconds=held_for))
    return event


async def test_failure_is_listed_while_its_details_wait_and_its_webhook_carries_them(
    tmp_path: Path, session: aiohttp.ClientSession, inbox: Inbox
) -> None:
    store = Store.open(tmp_path / "state.db")
    store.track([TrackRequest(RUN, "prj-a"), TrackRequest(OTHER, "prj-a")])
    enricher = BlockingEnricher()
    async with dispatching(store, webhook(inbox, session)) as dispatcher:
        recorder = Recorder(
            store=SqliteStore(store),
            sink=sink_for(store, on_recorded=dispatcher.notify),
            terminal=TERMINAL,
            wall_clock=now,
            enricher=enricher,
        )
        for run in (RUN, OTHER):
            await recorder.status_changed(run, "prj-a", None, "RUNNING", {"Status": "RUNNING"})
        recorded = await recorder.status_changed(
            RUN, "prj-a", "RUNNING", "EXECUTOR_ERROR", {"Status": "EXECUTOR_ERROR"}
        )
        assert recorded.event is not None
        # Recorded before its details: the registry (what `list` shows) has the failure ...
        stored = store.get_run(RUN)
        assert stored is not None
        assert stored.status == "EXECUTOR_ERROR"
        assert stored.terminal
        await until(lambda: enricher.asked == [RUN])
        assert recorder.enriching == 1
        # ... and a later transition of another run is not held behind it.
        await recorder.status_changed(OTHER, "prj-a", "RUNNING", "SUCCESS", {"Status": "SUCCESS"})
        await until(lambda: len(inbox.of(OTHER)) == 2)
        await asyncio.sleep(0.5)  # several dispatcher scans: the held row stays unsent
        assert [b["data"]["status"] for b in inbox.of(RUN)] == ["RUNNING"]
        assert store.held_runs([RUN, OTHER]) == {RUN}

        enricher.gate.set()
        await recorder.drain()
        await until(lambda: len(inbox.of(RUN)) == 2)
    failed = inbox.of(RUN)[-1]
    assert failed["id"] == recorded.event.id
    assert failed["data"]["status"] == "EXECUTOR_ERROR"
    assert failed["data"]["failure"] == DETAILS
    # Exactly once, and the event log holds the body that was sent.
    assert [b["id"] for b in inbox.bodies].count(recorded.event.id) == 1
    (logged,) = store.events(limit=1, run_uuid=RUN)
    assert logged.id == recorded.event.id
    assert logged.data["failure"] == DETAILS
    assert store.pending_deliveries() == []
    store.close()


async def test_held_rows_are_never_sent_and_a_late_release_changes_nothing(
    tmp_path: Path, session: aiohttp.ClientSession, inbox: Inbox
) -> None:
    store = Store.open(tmp_path / "state.db")
    store.track([TrackRequest(RUN, "prj-a")])
    event = await held_failure(store, RUN)
    (row,) = store.pending_deliveries("hook")
    assert row.event.id == event.id
    assert row.next_attempt_at.timestamp() == HELD_NEXT_ATTEMPT  # never due
    async with dispatching(store, webhook(inbox, session)) as dispatcher:
        await asyncio.sleep(0.5)
        assert inbox.bodies == []
        enriched = Event(
            type=event.type,
            id=event.id,
            timestamp=event.timestamp,
            data={**event.data, "failure": DETAILS},
        )
        assert store.release_event(event.id, enriched)
        dispatcher.notify()
        await until(lambda: len(inbox.bodies) == 1)
        # A second release (say, a late enrichment) finds nothing held: no new body.
        other = Event(
            type=event.type,
            id=event.id,
            timestamp=event.timestamp,
            data={**event.data, "failure": {"task": "x", "message": "y", "stderr_tail": ""}},
        )
        assert not store.release_event(event.id, other)
        await asyncio.sleep(0.3)
    assert [b["data"]["failure"] for b in inbox.bodies] == [DETAILS]
    (logged,) = store.events(limit=1, run_uuid=RUN)
    assert logged.data["failure"] == DETAILS
    store.close()


@pytest.mark.parametrize("enriching", [True, False], ids=["looked-up-again", "no-enricher"])
async def test_restart_completes_what_a_dead_process_held(
    tmp_path: Path, session: aiohttp.ClientSession, inbox: Inbox, enriching: bool
) -> None:
    path = tmp_path / "state.db"
    # The first process records a failure, holds it, and dies before its enrichment ends.
    first = Store.open(path)
    first.track([TrackRequest(RUN, "prj-a")])
    event = await held_failure(first, RUN)
    first.close()

    store = Store.open(path)
    assert store.held_runs([RUN]) == {RUN}
    enricher = BlockingEnricher()
    enricher.gate.set()
    async with dispatching(store, webhook(inbox, session)) as dispatcher:
        recorder = Recorder(
            store=SqliteStore(store),
            sink=sink_for(store, on_recorded=dispatcher.notify),
            terminal=TERMINAL,
            wall_clock=now,
            enricher=enricher if enriching else None,
        )
        assert await recorder.resume_held() == 1  # the daemon's start-up step
        await recorder.drain()
        await until(lambda: len(inbox.of(RUN)) == 1)
    (failed,) = inbox.of(RUN)
    assert failed["id"] == event.id
    assert failed["data"]["status"] == "EXECUTOR_ERROR"
    assert failed["data"]["failure"] == (DETAILS if enriching else None)
    assert enricher.asked == ([RUN] if enriching else [])
    assert store.held_runs([RUN]) == set()
    assert await recorder.resume_held() == 0
    store.close()


async def test_shutdown_releases_what_is_still_being_enriched(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.track([TrackRequest(RUN, "prj-a")])
    recorder = Recorder(
        store=SqliteStore(store),
        sink=sink_for(store),
        terminal=TERMINAL,
        wall_clock=now,
        enricher=BlockingEnricher(),  # never opened
    )
    await recorder.status_changed(RUN, "prj-a", None, "RUNNING", {"Status": "RUNNING"})
    await recorder.status_changed(
        RUN, "prj-a", "RUNNING", "EXECUTOR_ERROR", {"Status": "EXECUTOR_ERROR"}
    )
    assert store.held_runs([RUN]) == {RUN}
    await recorder.drain(0.1)
    assert store.held_runs([RUN]) == set()
    rows = store.pending_deliveries("hook")
    assert [r.event.status for r in rows] == ["RUNNING", "EXECUTOR_ERROR"]
    assert all(r.next_attempt_at.timestamp() < HELD_NEXT_ATTEMPT for r in rows)
    store.close()


async def test_unrouted_failure_still_gets_its_details_in_the_log(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.track([TrackRequest(RUN, "prj-a")])
    enricher = BlockingEnricher()
    enricher.gate.set()
    recorder = Recorder(
        store=SqliteStore(store),
        sink=EventSink(store=SqliteStore(store), route=lambda event: []),
        terminal=TERMINAL,
        wall_clock=now,
        enricher=enricher,
    )
    await recorder.status_changed(RUN, "prj-a", None, "EXECUTOR_ERROR", {"Status": "X"})
    await recorder.drain()
    (logged,) = store.events(limit=1, run_uuid=RUN)
    assert logged.data["failure"] == DETAILS
    store.close()


async def test_group_rollup_waits_for_held_failure_details(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.track([TrackRequest(RUN, "prj-a", {RUN_GROUP_LABEL: "rg-1"})])
    enricher = BlockingEnricher()
    sink = EventSink(store=SqliteStore(store), route=lambda event: ["hook"])
    recorder = Recorder(
        store=SqliteStore(store), sink=sink, terminal=TERMINAL, wall_clock=now, enricher=enricher
    )
    rollups = RollupTracker(
        store=SqliteStore(store), sink=sink, targets=lambda: {"hook"}, clock=now, interval=0.05
    )
    await recorder.status_changed(RUN, "prj-a", None, "EXECUTOR_ERROR", {"Status": "X"})
    assert await rollups.check("rg-1") is None  # complete, but its failure's details are on the way
    enricher.gate.set()
    await recorder.drain()
    rollup = await rollups.check("rg-1")
    assert rollup is not None
    assert rollup.data["runs"][0]["failure"] == DETAILS
    store.close()
