"""The dispatcher against a real state file and real local receivers (webhook notifiers).

Covers: at-least-once delivery through an outage, per-run order, Retry-After, isolation of a
dead destination, restart on the same file, dead-lettering by age (injected clock) and for
permanent failures, pacing, wake-up on notify() and by polling, reload, drain, send_now.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from pydantic import TypeAdapter
from support import delivering, serve, until

from watcher.delivery.digest import DigestPolicy
from watcher.delivery.dispatcher import DeliveryObserver, DeliveryOutcome, Dispatcher, Policy
from watcher.delivery.pacing import Pacer
from watcher.delivery.retry import backoff, retry_delay, send_now
from watcher.events import Event, new_event_id
from watcher.notifiers.base import Notifier, Permanent, Rate, Retryable
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.options import delivery_policy
from watcher.service.metrics import DeliveryMetrics, Metrics
from watcher.store import Store
from watcher.store.api import SqliteStore

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
TOKEN = "PathTokenSecret123"

# ---- a receiver whose behaviour each test scripts per path ----------------------------------

Behaviour = Callable[[str], Awaitable[web.Response]]


@dataclass
class Hit:
    path: str
    event_id: str
    run_uuid: str
    at: float
    status: int


@dataclass
class Receiver:
    base: str = ""
    hits: list[Hit] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def delivered(self, path: str) -> list[str]:
        return [h.event_id for h in self.hits if h.path == path and 200 <= h.status < 300]

    def attempts(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]


async def ok(_: str) -> web.Response:
    return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    loop = asyncio.get_running_loop()

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        name = request.match_info["name"]
        response = await state.behaviours.get(name, ok)(body["id"])
        state.hits.append(
            Hit(name, body["id"], body["data"]["run_uuid"], loop.time(), response.status)
        )
        return response

    app = web.Application()
    app.router.add_post("/{name}/" + TOKEN, handle)
    async with serve(app) as state.base:
        yield state
        state.release.set()


# ---- helpers -------------------------------------------------------------------------------


class Clock:
    """A wall clock the test can move forward; real time passes underneath it."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Observer:
    seen: list[tuple[str, DeliveryOutcome]] = field(default_factory=list)

    def delivery(self, *, notifier: str, outcome: DeliveryOutcome, latency: float | None) -> None:
        self.seen.append((notifier, outcome))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db", clock=clock) as opened:
        yield opened


def webhook(
    name: str, receiver: Receiver, session: aiohttp.ClientSession, clock: Clock
) -> Notifier:
    raw = {
        "name": name,
        "type": "webhook",
        "url": f"{receiver.base}/{name}/{TOKEN}",
        "secret": SECRET,
    }
    settings = TypeAdapter(NotifierSettings).validate_python(raw)
    return build_notifier(settings, session=session, logger=structlog.get_logger(), clock=clock)


def record(store: Store, clock: Clock, run: str, n: int, notifiers: list[str]) -> list[str]:
    ids = []
    for index in range(n):
        now = clock()
        event = Event(
            type="run.status_changed",
            id=new_event_id(now),
            timestamp=now,
            data={"run_uuid": run, "project_id": "prj-a", "status": f"S{index}"},
        )
        assert store.record_event(event, notifiers=notifiers)
        ids.append(event.id)
    return ids


def dispatcher(
    store: Store,
    notifiers: dict[str, Notifier],
    clock: Clock,
    *,
    policies: dict[str, Policy] | None = None,
    uniform: float = 0.5,
    poll_interval: float = 0.1,
    metrics: DeliveryObserver | None = None,
) -> Dispatcher:
    return Dispatcher(
        store=SqliteStore(store),
        notifiers=notifiers,
        policies=policies,
        clock=clock,
        logger=structlog.get_logger(),
        metrics=metrics,
        poll_interval=poll_interval,
        uniform=lambda: uniform,
    )


# ---- the tests -----------------------------------------------------------------------------


async def test_outage_then_recovery_delivers_each_event_once_in_order(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    loop = asyncio.get_running_loop()
    healthy_at = loop.time() + 1.5

    async def flaky(_: str) -> web.Response:
        return web.Response(status=503 if loop.time() < healthy_at else 200)

    receiver.behaviours["a"] = flaky
    first = record(store, clock, "run-1", 4, ["a"])
    second = record(store, clock, "run-2", 3, ["a"])
    metrics = Observer()
    with structlog.testing.capture_logs() as logs:
        async with delivering(
            dispatcher(
                store, {"a": webhook("a", receiver, session, clock)}, clock, metrics=metrics
            ),
            grace=0.5,
        ):
            await until(lambda: len(receiver.delivered("a")) == 7)
    delivered = receiver.delivered("a")
    assert sorted(delivered) == sorted(first + second)  # each exactly once
    assert [i for i in delivered if i in first] == first  # in order per run
    assert [i for i in delivered if i in second] == second
    # Nothing later for a run was even attempted before the earlier event got through.
    for ids in (first, second):
        attempted = [h.event_id for h in receiver.attempts("a") if h.event_id in ids]
        assert attempted == sorted(attempted, key=ids.index)
    assert store.pending_deliveries("a") == []
    assert ("a", "retry") in metrics.seen
    assert metrics.seen.count(("a", "delivered")) == 7
    retry = next(line for line in logs if line["event"] == "notify_retry")
    assert retry["notifier"] == "a"
    assert retry["run_uuid"] in ("run-1", "run-2")
    assert "HTTP 503" in retry["error"]
    done = [line for line in logs if line["event"] == "notify_delivered"]
    assert {line["event_id"] for line in done} == set(first + second)
    text = json.dumps(logs, default=str)
    assert TOKEN not in text
    assert SECRET.removeprefix("whsec_") not in text


async def test_retry_after_is_honoured(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    calls = 0

    async def throttled_once(_: str) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    receiver.behaviours["a"] = throttled_once
    record(store, clock, "run-1", 1, ["a"])
    record(store, clock, "run-2", 1, ["a"])
    # uniform=0: the backoff alone would retry after 0.5 s; Retry-After must hold both rows back
    # (the second run's row too, since a 429 speaks for the whole destination). One send at a
    # time, so the second row is not already on its way when the 429 comes back.
    policies = {"a": Policy(max_in_flight=1)}
    async with delivering(
        dispatcher(
            store,
            {"a": webhook("a", receiver, session, clock)},
            clock,
            uniform=0.0,
            policies=policies,
        ),
        grace=0.5,
    ):
        await until(lambda: len(receiver.delivered("a")) == 2)
    first, *rest = receiver.attempts("a")
    assert first.status == 429
    assert all(hit.at - first.at >= 0.95 for hit in rest)


async def test_a_dead_destination_does_not_delay_another(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    async def hang(_: str) -> web.Response:
        await receiver.release.wait()
        return web.Response(status=200)

    receiver.behaviours["dead"] = hang
    ids = record(store, clock, "run-1", 3, ["dead", "live"])
    ids += record(store, clock, "run-2", 3, ["dead", "live"])
    notifiers = {
        "dead": webhook("dead", receiver, session, clock),
        "live": webhook("live", receiver, session, clock),
    }
    policies = {"dead": Policy(timeout=5.0), "live": Policy(timeout=5.0)}
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with delivering(dispatcher(store, notifiers, clock, policies=policies), grace=0.5):
        await until(lambda: len(receiver.delivered("live")) == 6)
        assert loop.time() - started < 4.0
        assert receiver.delivered("dead") == []
    assert sorted(receiver.delivered("live")) == sorted(ids)
    assert len(store.pending_deliveries("dead")) == 6  # drained, still owed


async def test_restart_on_the_same_file_resumes_pending_rows(
    receiver: Receiver, tmp_path: Path, clock: Clock, session: aiohttp.ClientSession
) -> None:
    down = True

    async def maybe(_: str) -> web.Response:
        return web.Response(status=503 if down else 200)

    receiver.behaviours["a"] = maybe
    path = tmp_path / "state.db"
    with Store.open(path, clock=clock) as first_store:
        ids = record(first_store, clock, "run-1", 3, ["a"])
        async with delivering(
            dispatcher(first_store, {"a": webhook("a", receiver, session, clock)}, clock), grace=0.5
        ):
            await until(lambda: len(receiver.attempts("a")) >= 2)
        (head, *_) = first_store.pending_deliveries("a")
        assert head.attempts >= 1
        assert head.last_error is not None
    down = False
    with Store.open(path, clock=clock) as second_store:
        async with delivering(
            dispatcher(second_store, {"a": webhook("a", receiver, session, clock)}, clock),
            grace=0.5,
        ):
            await until(lambda: len(receiver.delivered("a")) == 3)
        assert second_store.pending_deliveries("a") == []
    assert receiver.delivered("a") == ids


async def test_dead_letter_after_max_age(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    async def down(_: str) -> web.Response:
        return web.Response(status=503)

    receiver.behaviours["a"] = down
    (stale,) = record(store, clock, "run-1", 1, ["a"])
    metrics = Observer()
    with structlog.testing.capture_logs() as logs:
        async with delivering(
            dispatcher(
                store,
                {"a": webhook("a", receiver, session, clock)},
                clock,
                policies={"a": Policy(max_age=3600)},
                uniform=0.1,
                metrics=metrics,
            ),
            grace=0.5,
        ):
            await until(lambda: len(receiver.attempts("a")) >= 2)
            assert store.dead_letters() == []
            clock.offset = timedelta(hours=2)  # the row is now older than max_age
            await until(lambda: len(store.dead_letters()) == 1)
            # The run's next event is no longer held back by the dead one.
            (fresh,) = record(store, clock, "run-1", 1, ["a"])
            await until(lambda: fresh in [h.event_id for h in receiver.attempts("a")])
    (dead,) = store.dead_letters()
    assert dead.event.id == stale
    assert dead.last_error is not None
    assert dead.last_error.startswith("gave up after")
    assert ("a", "dead_lettered") in metrics.seen
    (line,) = [entry for entry in logs if entry["event"] == "notify_dead_lettered"]
    assert line["event_id"] == stale
    assert line["run_uuid"] == "run-1"


async def test_permanent_failure_dead_letters_at_once_and_unblocks_the_run(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    async def refuse_first(event_id: str) -> web.Response:
        return web.Response(status=400 if event_id == ids[0] else 200, text="bad payload")

    receiver.behaviours["a"] = refuse_first
    ids = record(store, clock, "run-1", 2, ["a"])
    with structlog.testing.capture_logs() as logs:
        async with delivering(
            dispatcher(store, {"a": webhook("a", receiver, session, clock)}, clock), grace=0.5
        ):
            await until(lambda: receiver.delivered("a") == [ids[1]])
    (dead,) = store.dead_letters()
    assert dead.event.id == ids[0]
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert "HTTP 400" in dead.last_error
    assert TOKEN not in dead.last_error
    assert [e["event"] for e in logs if e.get("event_id") == ids[0]] == [
        "notify_failed",
        "notify_dead_lettered",
    ]


async def test_pacing_spreads_a_burst(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    for index in range(6):
        record(store, clock, f"run-{index}", 1, ["a"])
    policy = Policy(rates=(Rate(limit=2, period=0.5),))
    async with delivering(
        dispatcher(
            store, {"a": webhook("a", receiver, session, clock)}, clock, policies={"a": policy}
        ),
        grace=0.5,
    ):
        await until(lambda: len(receiver.delivered("a")) == 6)
    times = [hit.at for hit in receiver.attempts("a")]
    # Never more than 2 in any 0.5 s window: the 3rd is ≥ 0.5 s after the 1st, and so on.
    assert all(later - earlier >= 0.45 for earlier, later in zip(times, times[2:], strict=False))
    assert times[-1] - times[0] >= 0.95


async def test_notify_wakes_workers_at_once_and_polling_finds_other_writers(
    receiver: Receiver, tmp_path: Path, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    loop = asyncio.get_running_loop()
    slow_poll = dispatcher(
        store, {"a": webhook("a", receiver, session, clock)}, clock, poll_interval=30
    )
    async with delivering(slow_poll, grace=0.5):
        await asyncio.sleep(0.1)
        record(store, clock, "run-1", 1, ["a"])
        started = loop.time()
        slow_poll.notify()
        await until(lambda: len(receiver.delivered("a")) == 1, timeout=5)
        assert loop.time() - started < 3.0
    fast_poll = dispatcher(
        store, {"a": webhook("a", receiver, session, clock)}, clock, poll_interval=0.2
    )
    async with delivering(fast_poll, grace=0.5):
        await asyncio.sleep(0.1)
        with Store.open(tmp_path / "state.db", clock=clock) as other_process:
            record(other_process, clock, "run-2", 1, ["a"])
        await until(lambda: len(receiver.delivered("a")) == 2, timeout=5)


async def test_replace_notifiers_keeps_rows_of_removed_ones(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    target = dispatcher(store, {"a": webhook("a", receiver, session, clock)}, clock)
    async with delivering(target, grace=0.5):
        target.replace_notifiers({"b": webhook("b", receiver, session, clock)})
        record(store, clock, "run-1", 2, ["a", "b"])
        target.notify()
        await until(lambda: len(receiver.delivered("b")) == 2)
        await asyncio.sleep(0.2)
        assert receiver.delivered("a") == []
        target.replace_notifiers(
            {
                "a": webhook("a", receiver, session, clock),
                "b": webhook("b", receiver, session, clock),
            }
        )
        await until(lambda: len(receiver.delivered("a")) == 2)


async def test_drain_cancels_hung_sends_and_keeps_their_rows(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    hanging: list[str] = []

    async def hang(event_id: str) -> web.Response:
        hanging.append(event_id)
        await receiver.release.wait()
        return web.Response(status=200)

    receiver.behaviours["a"] = hang
    record(store, clock, "run-1", 1, ["a"])
    target = dispatcher(store, {"a": webhook("a", receiver, session, clock)}, clock)
    task = asyncio.create_task(target.run())
    await until(lambda: len(hanging) == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await target.stop(loop.time() + 0.3) == 1
    await task
    assert 0.25 <= loop.time() - started < 2.0
    (row,) = store.pending_deliveries("a")
    assert row.attempts == 0  # a cancelled attempt counts for nothing


async def test_stop_sends_what_is_due_then_returns(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    target = dispatcher(
        store, {"a": webhook("a", receiver, session, clock)}, clock, poll_interval=30
    )
    task = asyncio.create_task(target.run())
    await asyncio.sleep(0.1)
    record(store, clock, "run-1", 1, ["a"])  # no notify(): only the final look finds it
    loop = asyncio.get_running_loop()
    assert await target.stop(loop.time() + 5) == 0
    await asyncio.wait_for(task, 1)
    assert len(receiver.delivered("a")) == 1


async def test_delivery_latency_is_exported_per_notifier_from_the_recording(
    receiver: Receiver, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    """``omics_watcher_delivery_seconds{notifier}``: one observation per delivered row."""
    refused: set[str] = set()

    async def refuse_once(event_id: str) -> web.Response:
        if event_id in refused:
            return web.Response(status=200)
        refused.add(event_id)
        return web.Response(status=503)

    receiver.behaviours["b"] = refuse_once  # each row of b waits a backoff (≥ 0.75 s) first
    record(store, clock, "run-1", 2, ["a", "b"])
    record(store, clock, "run-2", 1, ["a"])
    metrics = Metrics()
    notifiers = {name: webhook(name, receiver, session, clock) for name in ("a", "b")}
    async with delivering(
        dispatcher(store, notifiers, clock, metrics=DeliveryMetrics(metrics)), grace=0.5
    ):
        await until(lambda: len(receiver.delivered("a")) == 3 == len(receiver.delivered("b")) + 1)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("omics_watcher_delivery_seconds_count", notifier="a") == 3
    assert sample("omics_watcher_delivery_seconds_count", notifier="b") == 2
    assert sample("omics_watcher_deliveries_total", notifier="b", outcome="retry") == 2
    # Counted from the recording, not from the successful attempt: b's rows waited retries
    # (the second row of run-1 also waited for the first).
    latency_b = sample("omics_watcher_delivery_seconds_sum", notifier="b")
    assert latency_b is not None
    assert latency_b >= 0.7 + 1.4
    latency_a = sample("omics_watcher_delivery_seconds_sum", notifier="a")
    assert latency_a is not None
    assert 0 < latency_a < latency_b


# ---- send_now (test-notify) and the pure parts ---------------------------------------------


class Scripted:
    """A notifier that fails as scripted; for send_now's retry rules."""

    name = "scripted"
    kind = "test"

    def __init__(self, *outcomes: Exception | None) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def send(self, event: Event) -> None:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome


def sample() -> Event:
    now = datetime.now(UTC)
    return Event(type="run.status_changed", id=new_event_id(now), timestamp=now, data={})


async def test_send_now_retries_then_succeeds_or_gives_up() -> None:
    loop = asyncio.get_running_loop()
    flaky = Scripted(Retryable("503"), Retryable("503"), None)
    assert (
        await send_now(flaky, sample(), attempts=5, deadline=loop.time() + 10, uniform=lambda: 0.01)
        == 3
    )
    with pytest.raises(Permanent):
        await send_now(Scripted(Permanent("400")), sample(), deadline=loop.time() + 10)
    always = Scripted(*[Retryable("503")] * 10)
    with pytest.raises(Retryable):
        await send_now(
            always, sample(), attempts=3, deadline=loop.time() + 10, uniform=lambda: 0.01
        )
    assert always.calls == 3
    waiting = Scripted(Retryable("429", retry_after=60))
    with pytest.raises(Retryable):  # the wait would pass the deadline: give up now
        await send_now(waiting, sample(), deadline=loop.time() + 2)
    assert waiting.calls == 1


def test_backoff_doubles_with_equal_jitter_and_caps() -> None:
    assert [backoff(n, uniform=lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert [backoff(n, uniform=lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff(30, uniform=lambda: 1.0) == 300.0
    assert backoff(1000, uniform=lambda: 1.0) == 300.0
    assert backoff(3, uniform=lambda: 0.5) == 3.0
    # Worst case for a receiver that is back after 10 s: the retry that reaches it comes
    # within 16 s of the first failure, whatever the jitter draws.
    for draw in (0.0, 1.0):
        elapsed = 0.0
        for attempt in range(1, 10):
            elapsed += backoff(attempt, uniform=functools.partial(float, draw))
            if elapsed >= 10:
                break
        assert elapsed <= 16.0
    assert retry_delay(1, 3.0, uniform=lambda: 1.0) == 3.0  # Retry-After wins when longer
    assert retry_delay(4, 3.0, uniform=lambda: 1.0) == 8.0  # the backoff when longer
    assert retry_delay(1, 10**9, uniform=lambda: 1.0) == 3600.0  # capped at an hour


def test_pacer_windows_count_from_finished_requests() -> None:
    pacer = Pacer((Rate(limit=2, period=1.0),))
    first = pacer.start()
    assert pacer.delay(0.0) == 0.0
    second = pacer.start()
    assert pacer.delay(0.0) == float("inf")  # the first is still in flight
    pacer.finish(first, 0.2)
    pacer.finish(second, 0.3)
    assert pacer.delay(0.5) == pytest.approx(0.7)  # 1 s after the first finished
    pacer.pause(5.0)
    assert pacer.delay(1.5) == pytest.approx(3.5)


def test_delivery_policy_from_notifier_settings() -> None:
    raw: dict[str, Any] = {
        "name": "w",
        "type": "wecom",
        "url": "https://q.example/send?key=k",
        "timeout_seconds": 3,
        "max_age_seconds": 60,
    }
    policy = delivery_policy(TypeAdapter(NotifierSettings).validate_python(raw))
    assert policy == Policy(max_age=60, timeout=3, rates=(Rate(20, 60.0, burst=5),))
    raw["digest"] = {"window_seconds": 5, "group_by": "project", "max_items": 7}
    policy = delivery_policy(TypeAdapter(NotifierSettings).validate_python(raw))
    assert policy.digest == DigestPolicy(window=5, group_by="project", max_items=7)
