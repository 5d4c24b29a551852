"""The outbox's change signal on both backends, and an idle dispatcher that trusts it.

Why: an idle dispatcher used to re-read every notifier's pending rows every second to see
rows written by other processes; now it reads the store's ``outbox_version`` (SQLite:
``PRAGMA data_version`` and TEMP triggers; PostgreSQL: a counter row bumped by triggers in
the writer's transaction, watcher/store/outbox_changes.py) and re-reads only when it moved.
What must hold on each backend, against a real SQLite file and a real PostgreSQL database:
the version moves for every write that can make a row due (another process's recording,
a ``redeliver`` by the CLI or by this process, a held event released), an idle dispatcher
reads the outbox once and no more, and a row another process makes pending (the real CLI's
``redeliver``, running beside the dispatcher) is still delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from astore import Backend, astore, backend, observe
from support import FakeClock, until, write_config

from watcher.cli import main
from watcher.delivery.dispatcher import Dispatcher
from watcher.events import Event
from watcher.notifiers.base import Permanent
from watcher.store.api import AsyncStore
from watcher.store.history import Redelivery
from watcher.store.models import Delivery, TrackRequest

__all__ = ["astore", "backend"]

RUN = "11111111-2222-4333-8444-555555555555"
OTHER_RUN = "22222222-2222-4333-8444-555555555555"


class Recorder:
    """A destination that keeps the ids it was sent; ``refuse`` ids fail for good."""

    kind = "test"

    def __init__(self, name: str, refuse: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.refuse = set(refuse)
        self.sent: list[str] = []

    async def send(self, event: Event) -> None:
        if event.id in self.refuse:
            self.refuse.discard(event.id)
            raise Permanent("HTTP 410")
        self.sent.append(event.id)


class Counting:
    """The dispatcher's part of a real store, counting its outbox reads."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store
        self.reads = 0

    async def pending_deliveries(
        self, notifier: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        self.reads += 1
        return await self.store.pending_deliveries(notifier, limit)

    async def mark_delivered(self, delivery_id: int) -> None:
        await self.store.mark_delivered(delivery_id)

    async def mark_retry(
        self, delivery_id: int, *, attempts: int, next_attempt_at: datetime, error: str
    ) -> None:
        await self.store.mark_retry(
            delivery_id, attempts=attempts, next_attempt_at=next_attempt_at, error=error
        )

    async def mark_dead(self, delivery_id: int, *, error: str, attempts: int | None = None) -> None:
        await self.store.mark_dead(delivery_id, error=error, attempts=attempts)

    async def mark_silenced(self, delivery_id: int, reason: str) -> None:
        await self.store.mark_silenced(delivery_id, reason)

    async def outbox_version(self) -> Hashable:
        return await self.store.outbox_version()


async def recorded(
    store: AsyncStore, run: str, status: str, at: datetime, held_until: datetime | None = None
) -> str:
    """A status change of ``run`` recorded with one row for notifier ``a``; its event id."""
    event = await observe(store, run, status, at, notifiers=("a",), held_until=held_until)
    assert event is not None
    return event.id


async def test_version_moves_whenever_a_row_may_have_become_due(
    backend: Backend, astore: AsyncStore, clock: FakeClock
) -> None:
    await astore.track([TrackRequest(run_uuid=RUN), TrackRequest(run_uuid=OTHER_RUN)])
    v0 = await astore.outbox_version()
    await astore.pending_deliveries("a")
    await astore.record_polls([(RUN, clock())])  # the daemon's per-second flush
    assert await astore.outbox_version() == v0  # reads and other writes leave it alone
    other = await backend.open()  # another process: the CLI, another replica
    try:
        await recorded(other, RUN, "RUNNING", clock())
        v1 = await astore.outbox_version()
        assert v1 != v0  # another process recorded a row
        assert await astore.outbox_version() == v1  # nothing happened since
        (row,) = await astore.pending_deliveries("a")
        await astore.mark_dead(row.id, error="HTTP 410")
        v2 = await astore.outbox_version()
        assert await other.redeliver(Redelivery(all=True)) == [row.id]
        v3 = await astore.outbox_version()
        assert v3 != v2  # another process put a dead letter back
        await astore.mark_dead(row.id, error="HTTP 410")
        v4 = await astore.outbox_version()
        assert await astore.redeliver(Redelivery(all=True)) == [row.id]
        v5 = await astore.outbox_version()
        assert v5 != v4  # this process put it back (the admin API, unannounced)
        held = await recorded(
            astore, OTHER_RUN, "FAILED", clock(), held_until=clock() + timedelta(minutes=5)
        )
        v6 = await astore.outbox_version()
        assert await other.release_event(held)
        assert await astore.outbox_version() != v6  # a held row became due
    finally:
        await other.close()


def dispatcher(store: Counting, notifier: Recorder) -> Dispatcher:
    """On the wall clock: the CLI stamps the rows it puts back with the real time."""
    return Dispatcher(
        store=store,
        notifiers={notifier.name: notifier},
        logger=structlog.get_logger(),
        poll_interval=0.05,
        uniform=lambda: 0.0,
    )


async def test_idle_dispatcher_reads_once_and_still_finds_the_cli_redeliver(
    backend: Backend, astore: AsyncStore, clock: FakeClock, tmp_path: Path
) -> None:
    await astore.track([TrackRequest(run_uuid=RUN), TrackRequest(run_uuid=OTHER_RUN)])
    first = await recorded(astore, RUN, "RUNNING", clock())
    notifier = Recorder("a", refuse=frozenset({first}))
    counting = Counting(astore)
    running = dispatcher(counting, notifier)
    task = asyncio.create_task(running.run())
    try:
        # the refused row is dead-lettered; then nothing is written for ten intervals
        await until(lambda: not notifier.refuse and counting.reads >= 1)
        await asyncio.sleep(0.1)  # its mark settles
        reads = counting.reads
        await asyncio.sleep(0.5)
        assert counting.reads == reads  # idle: the outbox was not read again
        # another process records a row: found without notify()
        other = await backend.open()
        try:
            second = await recorded(other, OTHER_RUN, "RUNNING", clock())
        finally:
            await other.close()
        await until(lambda: notifier.sent == [second])
        # the real CLI puts the dead letter back, beside the running dispatcher
        state = {"url": backend.url} if backend.url else {"path": str(backend.path)}
        notifiers = [{"name": "a", "type": "webhook", "url": "http://127.0.0.1:9/a"}]
        config = write_config(tmp_path / "cli.toml", {"state": state, "notifiers": notifiers})
        code = await asyncio.to_thread(main, ["redeliver", "-c", str(config), "--all"])
        assert code == 0
        await until(lambda: notifier.sent == [second, first])
    finally:
        await running.stop(asyncio.get_running_loop().time() + 0.5)
        await task
    assert await astore.pending_deliveries("a") == []
