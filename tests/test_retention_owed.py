"""Retention never deletes a delivery still owed: what a user whose notifier is muted longer
than ``retention_days`` sees, on SQLite and on PostgreSQL alike.

- A run finished longer ago than the retention that still owes a delivery (held by a mute
  window, by a failure's lookup, waiting for a retry) keeps its run, its events and every
  row; so does a run-less event (a digest) that owes one. Runs and run-less events whose rows
  are all settled (delivered, dead) go as before, and the kept ones go at the first pass
  after their last row settles.
- With the dispatcher on an injected clock: a notifier muted for the weekend with a retention
  of one day keeps its rows through Sunday's pass and delivers them when the window ends on
  Monday; its ``max_age_seconds`` of ten minutes does not count the two days held, so a
  failed first attempt is retried, not dead-lettered. A notifier without the window delivers
  at once, and its run is pruned on Sunday. The next pass takes the muted one's run too.
- PostgreSQL runs writers side by side: a dead letter redelivered by another connection
  while a retention step deletes its run is kept, with its event and run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp import web
from astore import Backend, astore, backend, observe
from pg import lock_waited
from pydantic import TypeAdapter
from support import FakeClock, delivering, serve_hook, until

from watcher.delivery.dispatcher import Dispatcher, Policy
from watcher.delivery.muting import MuteInterval
from watcher.events import Event, new_event_id
from watcher.notifiers.base import Notifier
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.retention import Pruner, PruneResult, RetentionOptions
from watcher.store import TrackRequest
from watcher.store.api import AsyncStore
from watcher.store.history import Redelivery
from watcher.transitions import not_found_event

__all__ = ["astore", "backend"]  # fixtures, used by name

DAY = timedelta(days=1)
# FakeClock starts on Friday 2026-11-27 10:00 UTC: the weekend window opens at midnight.
SATURDAY = datetime.fromisoformat("2026-11-28T00:00:00+00:00")
MONDAY = SATURDAY + 2 * DAY
WEEKEND = MuteInterval(name="weekend", weekdays=frozenset({5, 6}))  # whole days, UTC
WAIT = 30.0  # seconds: the dispatcher on a busy machine


def set_clock(clock: FakeClock, at: datetime) -> None:
    clock.advance((at - clock.now).total_seconds())


async def prune(store: AsyncStore, clock: FakeClock, retention: timedelta) -> PruneResult:
    """One pass of the daemon's pruner, in small steps as on a large state."""
    options = RetentionOptions(
        retention_seconds=retention.total_seconds(), batch_runs=1, batch_events=2, pause_seconds=0
    )
    pruner = Pruner(store=store, options=options, clock=clock)
    try:
        return await pruner.prune_once()
    finally:
        pruner.close()


async def settle_all(store: AsyncStore) -> None:
    await store.release_held()
    for delivery in await store.pending_deliveries(limit=1000):
        await store.mark_delivered(delivery.id)


async def row_states(store: AsyncStore, run_uuid: str) -> list[tuple[str, str]]:
    history = await store.run_history(run_uuid)
    assert history is not None, run_uuid
    return sorted((d.notifier, d.state) for entry in history for d in entry.deliveries)


# --- the rule, at the store ------------------------------------------------------------------


async def test_a_finished_run_that_still_owes_a_delivery_keeps_everything(
    astore: AsyncStore, backend: Backend, clock: FakeClock
) -> None:
    muted, held, retrying, gone, settled = "r-muted", "r-held", "r-retry", "r-gone", "r-settled"
    await astore.track(TrackRequest(r, "prj") for r in (muted, held, retrying, gone, settled))
    # Muted (or waiting for its digest): pending; the other notifier's row is delivered.
    await observe(astore, muted, "RUNNING", clock.now, notifiers=("chat", "ops"))
    await observe(astore, muted, "SUCCESS", clock.now, notifiers=("chat", "ops"))
    for delivery in await astore.pending_deliveries("ops"):
        await astore.mark_delivered(delivery.id)
    # Held for a failure's details, its lookup never finished (the daemon stopped meanwhile).
    soon = clock.now + timedelta(minutes=5)
    await observe(astore, held, "FAILED", clock.now, notifiers=("mail",), held_until=soon)
    # A retry: still pending, an attempt made.
    await observe(astore, retrying, "SUCCESS", clock.now, notifiers=("hook",))
    (retry,) = await astore.pending_deliveries("hook")
    await astore.mark_retry(retry.id, attempts=1, next_attempt_at=clock.now + DAY, error="HTTP 503")
    # Stopped as not found, its notice muted.
    gone_run = await astore.get_run(gone)
    assert gone_run is not None
    assert await astore.record_not_found(
        gone, not_found_event(gone_run, now=clock.now), notifiers=["chat"]
    )
    # Settled: one delivered, one dead letter; and a digest each way.
    await observe(astore, settled, "SUCCESS", clock.now, notifiers=("ops", "hook"))
    for delivery in await astore.pending_deliveries("ops"):
        await astore.mark_delivered(delivery.id)
    for delivery in await astore.pending_deliveries("hook"):
        if delivery.event.run_uuid == settled:
            await astore.mark_dead(delivery.id, error="HTTP 500")
    owed_digest = Event("digest", new_event_id(clock.now), clock.now, {"run_group": "g1"})
    done_digest = Event("digest", new_event_id(clock.now), clock.now, {"run_group": "g2"})
    assert await astore.record_event(owed_digest, notifiers=["chat"])
    assert await astore.record_event(done_digest, notifiers=["ops"])
    for delivery in await astore.pending_deliveries("ops"):
        await astore.mark_delivered(delivery.id)
    before = await backend.table_counts()
    assert before == {"runs": 5, "events": 8, "outbox": 11}

    clock.advance((40 * DAY).total_seconds())
    result = await prune(astore, clock, retention=30 * DAY)

    assert (result.runs, result.events) == (1, 2)  # the settled run's event and its digest
    assert {r.run_uuid for r in await astore.list_runs()} == {muted, held, retrying, gone}
    assert await backend.table_counts() == {"runs": 4, "events": 6, "outbox": 8}
    assert await row_states(astore, muted) == [
        ("chat", "pending"),
        ("chat", "pending"),
        ("ops", "delivered"),
        ("ops", "delivered"),
    ]
    assert [e.status for e in await astore.events(run_uuid=muted)] == ["SUCCESS", "RUNNING"]
    assert [e.id for e in await astore.held_events()] == [
        e.id for e in await astore.events(run_uuid=held)
    ]
    assert await row_states(astore, retrying) == [("hook", "pending")]
    assert await row_states(astore, gone) == [("chat", "pending")]
    assert owed_digest.id in {e.id for e in await astore.events(limit=100)}
    assert await astore.dead_letters() == []  # the settled run's dead letter went with it

    # Once the last row settles, the next pass takes what was kept.
    await settle_all(astore)
    result = await prune(astore, clock, retention=30 * DAY)
    assert (result.runs, result.events) == (4, 6)
    assert await backend.table_counts() == {"runs": 0, "events": 0, "outbox": 0}


# --- a weekend's mute window against a retention of one day --------------------------------


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 keeping each body; ``fail_next`` answers 503 first."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    refused: int = 0

    def ids(self, run_uuid: str) -> list[str]:
        return [b["id"] for b in self.bodies if b["data"].get("run_uuid") == run_uuid]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def handle(request: web.Request) -> web.Response:
        if state.fail_next:
            state.fail_next -= 1
            state.refused += 1
            return web.Response(status=503)
        state.bodies.append(json.loads(await request.read()))
        return web.Response(status=204)

    async with serve_hook(handle) as url:
        state.url = url
        yield state


def webhook(name: str, url: str, session: aiohttp.ClientSession) -> Notifier:
    settings = {"name": name, "type": "webhook", "url": url}
    built = TypeAdapter(NotifierSettings).validate_python(settings)
    return build_notifier(built, session=session, logger=structlog.get_logger())


async def test_a_notifier_muted_longer_than_the_retention_gets_every_row_when_its_window_ends(
    astore: AsyncStore,
    backend: Backend,
    clock: FakeClock,
    receiver: Receiver,
    session: aiohttp.ClientSession,
) -> None:
    ten_minutes = 600.0
    target = Dispatcher(
        store=astore,
        notifiers={n: webhook(n, receiver.url, session) for n in ("chat", "ops")},
        policies={"chat": Policy(max_age=ten_minutes, mute=(WEEKEND,)), "ops": Policy()},
        clock=clock,
        logger=structlog.get_logger(),
        poll_interval=0.05,
        uniform=lambda: 0.1,
    )
    muted, plain = "r-weekend", "r-plain"
    await astore.track([TrackRequest(muted, "prj"), TrackRequest(plain, "prj")])
    set_clock(clock, SATURDAY + timedelta(minutes=30))
    async with delivering(target, grace=5.0):
        for status in ("RUNNING", "SUCCESS"):
            await observe(astore, muted, status, clock.now, notifiers=("chat",))
            await observe(astore, plain, status, clock.now, notifiers=("ops",))
            target.notify()
            clock.advance(3600)

        async def plain_sent_and_muted_held() -> bool:
            return len(receiver.ids(plain)) == 2 and target.muted() == {"chat": 2, "ops": 0}

        await until(plain_sent_and_muted_held, timeout=WAIT)
        # Sunday night: the muted run finished 45 hours ago, a retention of one day.
        set_clock(clock, MONDAY - timedelta(hours=1))
        result = await prune(astore, clock, retention=DAY)
        assert result.runs == 1
        assert [r.run_uuid for r in await astore.list_runs()] == [muted]
        assert len(await astore.pending_deliveries("chat")) == 2
        assert receiver.ids(muted) == []

        # Monday: the window ends. The first attempt fails; the row is two days old, but
        # the time held does not count towards max_age, so it is retried, not dead-lettered.
        receiver.fail_next = 1
        set_clock(clock, MONDAY + timedelta(seconds=1))

        async def retry_recorded() -> bool:
            rows = await astore.pending_deliveries("chat")
            return any(row.attempts == 1 for row in rows)

        await until(retry_recorded, timeout=WAIT)
        clock.advance(10)  # the retry's backoff

        async def both_delivered() -> bool:
            return len(receiver.ids(muted)) == 2

        await until(both_delivered, timeout=WAIT)
    assert receiver.refused == 1
    events = await astore.events(run_uuid=muted)
    assert receiver.ids(muted) == [e.id for e in reversed(events)]  # in order, same ids
    assert await astore.dead_letters() == []
    assert await row_states(astore, muted) == [("chat", "delivered"), ("chat", "delivered")]

    # Delivered and settled: the next pass takes it.
    result = await prune(astore, clock, retention=DAY)
    assert result.runs == 1
    assert await backend.table_counts() == {"runs": 0, "events": 0, "outbox": 0}


# --- PostgreSQL: a redelivery racing a retention step ----------------------------------------


async def test_a_dead_letter_redelivered_while_its_run_is_pruned_is_kept(
    pg_url: str, clock: FakeClock
) -> None:
    pg = Backend("postgres", clock, url=pg_url)
    store = await pg.open()
    other = await asyncpg.connect(pg_url)
    try:
        run = "r-redelivered"
        await store.track([TrackRequest(run, "prj")])
        await observe(store, run, "RUNNING", clock.now, notifiers=("hook", "ops"))
        await observe(store, run, "SUCCESS", clock.now, notifiers=("hook", "ops"))
        for delivery in await store.pending_deliveries(limit=10):
            if delivery.notifier == "ops" or delivery.event.status == "RUNNING":
                await store.mark_delivered(delivery.id)
            else:
                await store.mark_dead(delivery.id, error="HTTP 500")
        (letter,) = await store.dead_letters()
        clock.advance((40 * DAY).total_seconds())
        # Another connection puts the letter back (redeliver's own statement) and holds its
        # transaction open while the retention step runs.
        redeliver = other.transaction()
        await redeliver.start()
        await other.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, settled_at = NULL "
            "WHERE id = $1 AND state = 'dead'",
            letter.id,
        )
        step = asyncio.create_task(
            store.prune_finished_runs(finished_before=clock.now - 30 * DAY, limit=10)
        )
        await lock_waited(other)
        await redeliver.commit()
        done = await step
    finally:
        await other.close()
    try:
        assert done.runs == 0
        assert [r.run_uuid for r in await store.list_runs()] == [run]
        (owed,) = await store.pending_deliveries(limit=10)
        assert (owed.id, owed.notifier, owed.event.status) == (letter.id, "hook", "SUCCESS")
        # The RUNNING event, all settled, went; once the letter is delivered the run goes.
        assert [e.status for e in await store.events(run_uuid=run)] == ["SUCCESS"]
        await store.mark_delivered(owed.id)
        again = await store.prune_finished_runs(finished_before=clock.now - 30 * DAY, limit=10)
        assert again.runs == 1
        assert await pg.table_counts() == {"runs": 0, "events": 0, "outbox": 0}
        assert await store.redeliver(Redelivery(all=True)) == []
    finally:
        await store.close()
