"""An idle dispatcher stops re-reading the outbox, and still finds every row it must send.

Why: the per-second outbox read cost CPU in every idle second (issue 12 item 5); on SQLite the
dispatcher now re-reads only after the outbox may have changed
(watcher/store/outbox_changes.py). What must still hold, against a real state file: rows
written by another process (a CLI ``redeliver``) and rows this process writes without
announcing them (the admin API's and the page's redeliver) are sent, and a retry is sent when
due although nothing re-reads the outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from support import until

from watcher.delivery.dispatcher import Dispatcher
from watcher.events import Event, new_event_id
from watcher.notifiers.base import Retryable
from watcher.store import Store
from watcher.store.api import SqliteStore
from watcher.store.history import Redelivery
from watcher.store.models import Delivery, TrackRequest


class Recorder:
    """A destination that keeps what it was sent; the first ``fail`` sends are refused."""

    kind = "test"

    def __init__(self, name: str, *, fail: int = 0, retry_after: float | None = None) -> None:
        self.name = name
        self.sent: list[str] = []
        self.attempts = 0
        self._fail = fail
        self._retry_after = retry_after

    async def send(self, event: Event) -> None:
        self.attempts += 1
        if self.attempts <= self._fail:
            raise Retryable("HTTP 503", retry_after=self._retry_after)
        self.sent.append(event.id)


class CountingStore(SqliteStore):
    """The daemon's store, counting the dispatcher's outbox reads."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.reads = 0

    async def pending_deliveries(
        self, notifier: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        self.reads += 1
        return await super().pending_deliveries(notifier, limit)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db") as opened:
        yield opened


def record(store: Store, run: str, notifiers: list[str]) -> str:
    now = datetime.now(UTC)
    event = Event(
        type="run.status_changed",
        id=new_event_id(now),
        timestamp=now,
        data={"run_uuid": run, "project_id": "prj-a", "status": "RUNNING"},
    )
    assert store.record_event(event, notifiers=notifiers)
    return event.id


def dispatcher(store: SqliteStore, notifier: Recorder, *, poll_interval: float) -> Dispatcher:
    return Dispatcher(
        store=store,
        notifiers={notifier.name: notifier},
        logger=structlog.get_logger(),
        poll_interval=poll_interval,
        uniform=lambda: 0.0,
    )


def test_version_moves_only_when_the_outbox_may_have_changed(store: Store, tmp_path: Path) -> None:
    version = store.outbox_changes().version
    v0 = version()
    store.pending_deliveries("a")
    run = "11111111-2222-3333-4444-555555555555"
    store.track([TrackRequest(run_uuid=run)])
    store.record_polls([(run, datetime.now(UTC))])  # the daemon's per-second flush
    assert version() == v0  # reads (and writes elsewhere on this connection) leave it alone
    record(store, "run-1", ["a"])
    v1 = version()
    assert v1 != v0  # this connection wrote an outbox row
    with Store.open(tmp_path / "state.db") as other_process:
        other_process.mark_dead(other_process.pending_deliveries("a")[0].id, error="x")
    v2 = version()
    assert v2 != v1  # another connection committed
    assert version() == v2
    assert store.redeliver(Redelivery(all=True))  # this process, not announced
    assert version() != v2
    assert store.outbox_changes() is store.outbox_changes()  # one signal per connection


async def test_idle_dispatcher_reads_once_and_still_finds_every_writer(
    store: Store, tmp_path: Path
) -> None:
    dead = record(store, "run-0", ["a"])
    store.mark_dead(store.pending_deliveries("a")[0].id, error="HTTP 410")
    counting = CountingStore(store)
    notifier = Recorder("a")
    running = dispatcher(counting, notifier, poll_interval=0.05)
    task = asyncio.create_task(running.run())
    try:
        await until(lambda: counting.reads >= 1)
        await asyncio.sleep(0.5)  # about ten intervals with nothing written
        assert counting.reads == 1
        # another process (a CLI command) writes a row: found without notify()
        with Store.open(tmp_path / "state.db") as other_process:
            first = record(other_process, "run-1", ["a"])
        await until(lambda: notifier.sent == [first])
        # this process writes a row without announcing it
        second = record(store, "run-2", ["a"])
        await until(lambda: notifier.sent == [first, second])
        # this process puts the dead letter back without telling the dispatcher (admin API)
        assert len(store.redeliver(Redelivery(all=True))) == 1
        await until(lambda: notifier.sent == [first, second, dead])
    finally:
        await running.stop(asyncio.get_running_loop().time() + 0.5)
        await task
    assert store.pending_deliveries("a") == []


async def test_a_retry_is_sent_when_due_without_rereading_the_outbox(store: Store) -> None:
    counting = CountingStore(store)
    notifier = Recorder("a", fail=1, retry_after=0.3)
    event_id = record(store, "run-1", ["a"])
    running = dispatcher(counting, notifier, poll_interval=3600.0)  # no timed re-read here
    task = asyncio.create_task(running.run())
    try:
        await until(lambda: notifier.sent == [event_id])
        assert notifier.attempts == 2
        assert counting.reads == 1
    finally:
        await running.stop(asyncio.get_running_loop().time() + 0.5)
        await task
    assert store.pending_deliveries("a") == []
