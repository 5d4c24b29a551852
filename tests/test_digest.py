"""Digests and run-group roll-ups: many finishing runs, few messages, none lost.

Covers the planner (window, max_items, per-run order, roll-ups after their group), the
rendering (every run counted, every destination's size limit kept, lists cut only with
``+K more``), the dispatcher against a real state file and a local WeCom-style receiver that
*enforces* its rate limit (answering ``errcode 45009`` beyond it), at-least-once across a
500 and across a stop in mid-send, the webhook form of a digest (Standard Webhooks verified
with the ``standardwebhooks`` package), roll-ups once per group across restarts, and the
issue's must-show: 96 runs of one simulator run group through the whole daemon to a WeCom
receiver held to WeCom's real 20 messages per minute.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from pydantic import TypeAdapter
from standardwebhooks import Webhook
from support import daemon_task, serve, serve_hook, until

from watcher.config import Settings
from watcher.delivery.digest import DigestPolicy, Progress, digest_event, plan
from watcher.delivery.dispatcher import Dispatcher, Policy
from watcher.events import (
    DIGEST,
    GROUP_COMPLETED,
    RUN_GROUP_LABEL,
    STATUS_CHANGED,
    Event,
    RunState,
    new_event_id,
)
from watcher.notifiers.base import Notifier, Rate
from watcher.notifiers.common import json_bytes
from watcher.notifiers.grouped import RunLine, listing
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.notifiers.render import message_for
from watcher.rollup import RollupTracker, rollup_id
from watcher.service.metrics import DeliveryMetrics, Metrics
from watcher.simulator import SimulatorConfig, running_simulator
from watcher.sink import EventSink
from watcher.statuses import DEFAULT_STATUSES, Statuses, StatusOptions
from watcher.store import Delivery, Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.transitions import detect

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "CANCELED"})
SECRET = "whsec_" + base64.b64encode(b"d" * 32).decode()

# ---- building blocks -------------------------------------------------------------------------


def status_event(
    run: str,
    status: str,
    *,
    group: str = "rg-1",
    previous: str | None = "RUNNING",
    at: datetime = T0,
    failure: dict[str, str] | None = None,
) -> Event:
    return Event(
        type=STATUS_CHANGED,
        id=new_event_id(at),
        timestamp=at,
        data={
            "run_uuid": run,
            "project_id": "prj-a",
            "previous_status": previous,
            "status": status,
            "terminal": status in TERMINAL,
            "observed_at": "2026-11-27T10:00:00.000Z",
            "labels": {RUN_GROUP_LABEL: group} if group else {},
            "metadata": {"Status": status},
            "failure": failure,
        },
    )


def row(
    row_id: int,
    event: Event,
    *,
    created: float = 0.0,
    attempts: int = 0,
    due: float | None = None,
) -> Delivery:
    created_at = T0 + timedelta(seconds=created)
    next_at = created_at if due is None else T0 + timedelta(seconds=due)
    return Delivery(row_id, event, "n", attempts, created_at, next_at, None)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def runs(n: int) -> list[str]:
    return [f"{i + 1:08x}-0000-4000-8000-{i + 1:012x}" for i in range(n)]


# ---- the planner -----------------------------------------------------------------------------


def test_a_group_waits_for_its_window_then_goes_as_one() -> None:
    policy = DigestPolicy(window=2.0, max_items=50)
    rows = [row(1, status_event("r1", "SUCCESS"), created=0), row(2, status_event("r2", "SUCCESS"))]
    early = plan(rows, policy=policy, now=at(1.0))
    assert early.ready == []
    assert early.wake_at == at(2.0)
    late = plan(rows, policy=policy, now=at(2.0))
    assert [[r.id for r in b.rows] for b in late.ready] == [[1, 2]]
    assert plan(rows, policy=policy, now=at(0.5), flush=True).ready[0].rows == tuple(rows)


def test_groups_are_separate_and_a_full_group_goes_at_once() -> None:
    policy = DigestPolicy(window=60.0, max_items=3)
    rows = [row(i, status_event(f"a{i}", "SUCCESS", group="a")) for i in range(1, 6)]
    rows += [row(i, status_event(f"b{i}", "SUCCESS", group="b")) for i in (6, 7)]
    result = plan(rows, policy=policy, now=at(1.0))
    # Group a is full: it goes now; its 4th and 5th rows wait for the next message.
    assert [(b.group, [r.id for r in b.rows]) for b in result.ready] == [("a", [1, 2, 3])]
    assert result.wake_at == at(60.0)  # group b's window
    result = plan(rows, policy=policy, now=at(60.0), busy_groups={"a"})
    assert [(b.group, [r.id for r in b.rows]) for b in result.ready] == [("b", [6, 7])]


def test_order_per_run_holds_across_retries_and_sends_in_flight() -> None:
    policy = DigestPolicy(window=0.0)
    retrying = row(1, status_event("r1", "RUNNING"), attempts=1, due=5.0)
    later = row(2, status_event("r1", "SUCCESS"))
    other = row(3, status_event("r2", "SUCCESS"))
    result = plan([retrying, later, other], policy=policy, now=at(1.0))
    assert [[r.id for r in b.rows] for b in result.ready] == [[3]]
    assert result.wake_at == at(5.0)
    result = plan([retrying, later, other], policy=policy, now=at(5.0), busy_runs={"r2"})
    assert [[r.id for r in b.rows] for b in result.ready] == [[1, 2]]  # one run, in order


def test_a_rollup_goes_alone_after_the_rest_of_its_group() -> None:
    policy = DigestPolicy(window=10.0)
    rollup = Event(GROUP_COMPLETED, rollup_id("g"), T0, {"labels": {RUN_GROUP_LABEL: "g"}})
    rows = [row(1, status_event("r1", "SUCCESS", group="g")), row(2, rollup)]
    assert plan(rows, policy=policy, now=at(1.0)).ready == []
    assert [[r.id for r in b.rows] for b in plan(rows, policy=policy, now=at(10.0)).ready] == [[1]]
    result = plan(rows[1:], policy=policy, now=at(10.0))
    assert [[r.id for r in b.rows] for b in result.ready] == [[2]]
    # Nor does it overtake an earlier row of its group that waits for a retry.
    retrying = row(3, status_event("r3", "SUCCESS", group="g"), attempts=1, due=20.0)
    assert plan([retrying, rows[1]], policy=policy, now=at(10.0)).ready == []
    assert plan([rows[1]], policy=policy, now=at(10.0), busy_groups={"g"}).ready == []


# ---- what a digest says ----------------------------------------------------------------------


def chat_settings(kind: str, url: str = "https://hooks.example.org/x", **extra: Any) -> Any:
    raw: dict[str, Any] = {"name": f"t-{kind}", "type": kind, "url": url, **extra}
    return TypeAdapter(NotifierSettings).validate_python(raw)


def mixed_events(n: int) -> list[Event]:
    events = []
    for index, run in enumerate(runs(n)):
        if index % 7 == 0:
            failure = {
                "task": f"germline.align_reads (shard {index})",
                "message": "Command exited with non-zero status 137\nkilled: out of memory",
                "stderr_tail": "Killed\n" * 50,
            }
            events.append(status_event(run, "EXECUTOR_ERROR", failure=failure))
        elif index % 11 == 0:
            events.append(status_event(run, "CANCELED"))
        elif index % 5 == 0:
            events.append(status_event(run, "RUNNING", previous="QUEUED"))
        else:
            events.append(status_event(run, "SUCCESS"))
    return events


def counted(content: str) -> int:
    """Runs a rendered digest accounts for: each ``(N)`` label plus each detailed failure."""
    labels = sum(int(n) for n in re.findall(r"^> \S+ [A-Za-z ]+\((\d+)\):", content, re.M))
    return labels + len(re.findall(r"^> ❌ [0-9a-f]{8}:", content, re.M))


@pytest.mark.parametrize("n", [3, 40, 300])
async def test_every_run_is_counted_and_every_destination_limit_is_kept(n: int) -> None:
    events = mixed_events(n)
    progress = Progress(total=400, finished=350, succeeded=300, failed=40, other=10, running=50)
    digest = digest_event(events, group_by="run_group", group="rg-1", progress=progress)
    message = message_for(digest)
    assert message.title.startswith("📦 run group rg-1: 350/400 finished, 300 ✅ 40 ❌ 10 ⚠️, 50")
    assert len(message.facts) <= 10
    async with aiohttp.ClientSession() as session:
        payloads = {
            kind: build_notifier(
                chat_settings(kind), session=session, logger=structlog.get_logger()
            ).payload(  # type: ignore[attr-defined]
                digest
            )
            for kind in ("wecom", "dingtalk", "feishu", "slack", "teams", "discord")
        }
    content = payloads["wecom"]["markdown"]["content"]
    assert len(content.encode()) <= 4096
    assert counted(content) == n  # every run counted, whatever was cut
    if n == 300:
        assert "more" in content  # cut lists say so
    assert len(json_bytes(payloads["dingtalk"])) <= 20_000
    assert len(json_bytes(payloads["feishu"])) <= 20_000
    assert len(json_bytes(payloads["teams"])) <= 28_000
    slack = payloads["slack"]
    fields = [f for b in slack["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert len(fields) <= 10
    assert all(len(f["text"]) <= 2000 for f in fields)
    embed = payloads["discord"]["embeds"][0]
    levels = [message.facts, *message.compact_facts]
    values = {value for facts in levels for _, value in facts}
    assert all(f["value"] in values for f in embed["fields"])  # none clipped by the builder


def test_small_digest_lists_failures_with_reasons_and_every_run_by_id() -> None:
    events = mixed_events(12)
    lines = "\n".join(
        f"{k}: {v}"
        for k, v in message_for(
            digest_event(events, group_by="run_group", group="g", progress=None)
        ).facts
    )
    for event in events:
        assert event.run_uuid[:8] in lines
    assert "germline.align_reads (shard 0): Command exited with non-zero status 137" in lines


def test_rollup_message_counts_the_whole_group() -> None:
    data = {
        "run_group": "rg-9",
        "project_id": "prj-a",
        "labels": {RUN_GROUP_LABEL: "rg-9"},
        "progress": Progress(3, 3, 2, 1, 0, 0).to_dict(),
        "runs": [
            {"run_uuid": "a" * 8, "status": "SUCCESS", "terminal": True},
            {"run_uuid": "b" * 8, "status": "SUCCESS", "terminal": True},
            {
                "run_uuid": "c" * 8,
                "status": "EXECUTOR_ERROR",
                "terminal": True,
                "failure": {"task": "wf.call", "message": "boom", "stderr_tail": ""},
            },
        ],
    }
    message = message_for(Event(GROUP_COMPLETED, rollup_id("rg-9"), T0, data))
    assert message.title == "🏁 run group rg-9 finished: 3/3, 2 ✅ 1 ❌"
    assert ("❌ cccccccc", "EXECUTOR_ERROR · wf.call: boom") in message.facts
    assert ("✅ Succeeded (2)", "aaaaaaaa, bbbbbbbb") in message.facts


def test_lists_group_runs_by_state_and_say_how_many_were_left_out() -> None:
    lines = [RunLine(f"{i:08x}", "RUNNING" if i % 3 else "QUEUED", "running") for i in range(30)]
    assert listing(lines[:4], budget=1000, with_state=True) == (
        "QUEUED: 00000000, 00000003; RUNNING: 00000001, 00000002"
    )
    assert listing(lines[:3], budget=1000, with_state=False) == "00000000, 00000001, 00000002"
    cut = listing(lines, budget=100, with_state=True)
    assert len(cut) <= 100
    assert cut.endswith(" more")
    shown = cut.count(",") + cut.count(";") + 1
    assert cut.endswith(f" +{30 - shown} more")
    assert listing(lines, budget=0, with_state=True) == "30 runs"


# ---- a WeCom-style receiver that enforces its limit ------------------------------------------


@dataclass
class WeCom:
    """Answers like a WeCom group robot, refusing (45009) beyond ``limit`` per ``period``."""

    limit: int = 20
    period: float = 60.0
    url: str = ""
    arrivals: list[float] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    fail_digests: int = 0  # answer this many digests with HTTP 500 first
    failed: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        content = (await request.json())["markdown"]["content"]
        if sum(1 for t in self.arrivals if now - t < self.period) >= self.limit:
            self.refused += 1
            return web.json_response({"errcode": 45009, "errmsg": "api freq out of limit"})
        self.arrivals.append(now)
        self.arrived.set()
        if self.fail_digests and content.startswith("### 📦"):
            self.fail_digests -= 1
            self.failed.append(content)
            return web.Response(status=500, text="busy")
        self.accepted.append(content)
        return web.json_response({"errcode": 0, "errmsg": "ok"})


@pytest.fixture
async def wecom() -> AsyncIterator[WeCom]:
    state = WeCom()
    app = web.Application()
    app.router.add_post("/cgi-bin/webhook/send", state.handle)
    async with serve(app) as base:
        state.url = f"{base}/cgi-bin/webhook/send?key=robot-key-123"
        yield state


@dataclass
class Seen:
    """What the receiver's messages say about each run (short id -> latest category)."""

    final: dict[str, str] = field(default_factory=dict)
    titles: list[str] = field(default_factory=list)
    more: bool = False


_EMOJI_CATEGORY = {"✅": "succeeded", "❌": "failed", "⚠️": "other", "🔄": "running"}
_LABEL_CATEGORY = {
    "Succeeded": "succeeded",
    "Failed": "failed",
    "Also failed": "failed",
    "Other finished": "other",
    "Needs attention": "attention",
    "In progress": "running",
}


def parse(messages: list[str]) -> Seen:
    seen = Seen()
    for content in messages:
        title = content.splitlines()[0].removeprefix("### ")
        seen.titles.append(title)
        if title.startswith(("📦", "🏁")):
            for label, value in re.findall(r"^> (.+?): (.*)$", content, re.M):
                short = re.fullmatch(r"❌ ([0-9a-f]{8})", label)
                if short:
                    seen.final[short.group(1)] = "failed"
                    continue
                kind = re.fullmatch(r"\S+ ([A-Za-z ]+) \(\d+\)", label)
                if kind is None:
                    continue
                category = _LABEL_CATEGORY[kind.group(1)]
                listed, more, _ = value.partition(" +")
                seen.more = seen.more or bool(more)
                for segment in listed.split("; "):  # "RUNNING: id, id; QUEUED: id"
                    for short in segment.rpartition(": ")[2].split(", "):
                        seen.final[short] = category
        else:  # one event on its own: "✅ SUCCESS · run 84232c68 · prj"
            emoji, _, rest = title.partition(" ")
            short = re.search(r"run ([0-9a-f]{8})", rest)
            if short:
                seen.final[short.group(1)] = _EMOJI_CATEGORY.get(emoji, "attention")
    return seen


def wecom_notifier(
    url: str, session: aiohttp.ClientSession, clock: Callable[[], datetime]
) -> Notifier:
    return build_notifier(
        chat_settings("wecom", url), session=session, logger=structlog.get_logger(), clock=clock
    )


class Clock:
    def __call__(self) -> datetime:
        return datetime.now(UTC)


def record_events(store: Store, events: list[Event], notifiers: list[str]) -> None:
    for event in events:
        assert store.record_event(event, notifiers=notifiers)


def dispatcher(store: Store, notifiers: dict[str, Notifier], policy: Policy) -> Dispatcher:
    return Dispatcher(
        store=SqliteStore(store),
        notifiers=notifiers,
        policies=dict.fromkeys(notifiers, policy),
        logger=structlog.get_logger(),
        poll_interval=0.1,
        uniform=lambda: 0.5,
    )


# ---- the dispatcher, time-compressed ---------------------------------------------------------


async def test_96_finishing_runs_reach_a_rate_limited_receiver_as_digests_despite_a_500(
    wecom: WeCom, store: Store
) -> None:
    """WeCom's 20/min, compressed ten times: 20 per 6 s, window 0.5 s, one digest refused."""
    wecom.period, wecom.fail_digests = 6.0, 1
    policy = Policy(
        rates=(Rate(limit=20, period=6.0, burst=5),),
        digest=DigestPolicy(window=0.5, max_items=40),
    )
    group = runs(96)
    outcome = {run: ("EXECUTOR_ERROR" if i % 9 == 0 else "SUCCESS") for i, run in enumerate(group)}
    async with aiohttp.ClientSession() as session:
        target = dispatcher(store, {"wecom": wecom_notifier(wecom.url, session, Clock())}, policy)
        task = asyncio.create_task(target.run())
        # Every run reports RUNNING, then finishes: 192 events within about 3 s.
        for wave in range(6):
            chunk = group[wave * 16 : (wave + 1) * 16]
            record_events(
                store, [status_event(r, "RUNNING", previous="QUEUED") for r in chunk], ["wecom"]
            )
            record_events(store, [status_event(r, outcome[r]) for r in chunk], ["wecom"])
            target.notify()
            await asyncio.sleep(0.5)
        await until(lambda: store.outbox_stats(now=Clock()())[0] == 0, timeout=30)
        await target.stop(asyncio.get_running_loop().time() + 1)
        await task
    assert wecom.refused == 0  # never a 45009: the pace kept the limit
    assert len(wecom.failed) == 1
    seen = parse(wecom.accepted)
    failed = parse(wecom.failed)
    # The refused digest came back with every one of its runs (and possibly more).
    retried = [parse([m]).final for m in wecom.accepted]
    assert any(set(failed.final) <= set(r) for r in retried)
    assert not seen.more
    for run in group:
        assert seen.final[run[:8]] == DEFAULT_STATUSES.category(outcome[run], terminal=True), run
    assert len(wecom.accepted) < 96  # digests, not one message per event
    assert store.dead_letters() == []


async def test_a_group_of_one_is_sent_as_the_event_itself(wecom: WeCom, store: Store) -> None:
    policy = Policy(digest=DigestPolicy(window=0.0))
    event = status_event(runs(1)[0], "SUCCESS")
    record_events(store, [event], ["wecom"])
    async with aiohttp.ClientSession() as session:
        target = dispatcher(store, {"wecom": wecom_notifier(wecom.url, session, Clock())}, policy)
        task = asyncio.create_task(target.run())
        await until(lambda: len(wecom.accepted) == 1, timeout=5)
        await target.stop(asyncio.get_running_loop().time() + 5)
        await task
    assert wecom.accepted[0].startswith("### ✅ SUCCESS · run ")
    assert f"event {event.id}" in wecom.accepted[0]


async def test_every_row_of_a_delivered_digest_counts_in_the_delivery_histogram(
    wecom: WeCom, store: Store
) -> None:
    """One message, five rows: five observations of ``omics_watcher_delivery_seconds``."""
    events = [status_event(r, "SUCCESS") for r in runs(5)]
    record_events(store, events, ["wecom"])
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        target = Dispatcher(
            store=SqliteStore(store),
            notifiers={"wecom": wecom_notifier(wecom.url, session, Clock())},
            policies={"wecom": Policy(digest=DigestPolicy(window=0.0, max_items=10))},
            logger=structlog.get_logger(),
            metrics=DeliveryMetrics(metrics),
            poll_interval=0.1,
        )
        task = asyncio.create_task(target.run())
        await until(lambda: store.outbox_stats(now=Clock()())[0] == 0, timeout=10)
        await target.stop(asyncio.get_running_loop().time() + 5)
        await task
    assert len(wecom.accepted) == 1
    assert wecom.accepted[0].startswith("### 📦")
    labels = {"notifier": "wecom"}
    count = metrics.registry.get_sample_value("omics_watcher_delivery_seconds_count", labels)
    assert count == 5


async def test_a_digest_counts_its_runs_by_the_vocabulary_the_dispatcher_was_given(
    store: Store,
) -> None:
    """The digest's ``counts`` come from the injected :class:`Statuses`, not the defaults."""
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response(status=204)

    async with serve_hook(handle) as url:
        finished = [status_event(r, "DONE") for r in runs(3)]
        finished = [
            Event(type=e.type, id=e.id, timestamp=e.timestamp, data={**e.data, "terminal": True})
            for e in finished
        ]
        record_events(store, finished, ["hook"])
        done = frozenset({"DONE"})
        done_is_success = Statuses(StatusOptions(terminal=done, success=done))
        async with aiohttp.ClientSession() as session:
            hook = build_notifier(
                TypeAdapter(NotifierSettings).validate_python(
                    {"name": "hook", "type": "webhook", "url": url, "secret": SECRET}
                ),
                session=session,
                logger=structlog.get_logger(),
            )
            target = Dispatcher(
                store=SqliteStore(store),
                notifiers={"hook": hook},
                policies={"hook": Policy(digest=DigestPolicy(window=0.0))},
                logger=structlog.get_logger(),
                poll_interval=0.1,
                statuses=done_is_success,
            )
            task = asyncio.create_task(target.run())
            await until(lambda: store.outbox_stats(now=Clock()())[0] == 0, timeout=10)
            await target.stop(asyncio.get_running_loop().time() + 5)
            await task
    (digest,) = bodies
    assert digest["type"] == DIGEST
    counts = digest["data"]["counts"]
    assert (counts["succeeded"], counts["other"]) == (3, 0)  # the defaults would say (0, 3)


async def test_a_stop_in_mid_send_leaves_the_whole_digest_pending_for_the_next_start(
    store: Store,
) -> None:
    """At-least-once across a crash: a digest cut off in flight is re-sent whole."""
    release = asyncio.Event()
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        if not release.is_set():
            await release.wait()  # the first send never answers
        bodies.append(body)
        return web.Response(status=204)

    async with serve_hook(handle) as url:
        events = [status_event(r, "SUCCESS") for r in runs(5)]
        record_events(store, events, ["hook"])
        policy = Policy(digest=DigestPolicy(window=0.0, max_items=10))
        async with aiohttp.ClientSession() as session:
            hook = build_notifier(
                TypeAdapter(NotifierSettings).validate_python(
                    {"name": "hook", "type": "webhook", "url": url, "secret": SECRET}
                ),
                session=session,
                logger=structlog.get_logger(),
            )
            first = dispatcher(store, {"hook": hook}, policy)
            task = asyncio.create_task(first.run())
            await asyncio.sleep(0.5)  # the digest is in flight, unanswered
            assert await first.stop(asyncio.get_running_loop().time() + 0.2) == 1
            await task
            assert store.outbox_stats(now=Clock()())[0] == 5  # nothing acknowledged
            release.set()
            second = dispatcher(store, {"hook": hook}, policy)
            task = asyncio.create_task(second.run())
            await until(lambda: store.outbox_stats(now=Clock()())[0] == 0, timeout=10)
            await second.stop(asyncio.get_running_loop().time() + 5)
            await task
    digests = [b for b in bodies if b["type"] == DIGEST]
    assert digests
    assert sorted(digests[-1]["data"]["event_ids"]) == sorted(e.id for e in events)


async def test_webhook_receivers_get_a_signed_digest_event_with_every_event(
    store: Store,
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async with serve_hook(handle) as url:
        events = mixed_events(30)
        record_events(store, events, ["hook"])
        async with aiohttp.ClientSession() as session:
            hook = build_notifier(
                TypeAdapter(NotifierSettings).validate_python(
                    {"name": "hook", "type": "webhook", "url": url, "secret": SECRET}
                ),
                session=session,
                logger=structlog.get_logger(),
            )
            policy = Policy(digest=DigestPolicy(window=0.2, max_items=20))
            target = dispatcher(store, {"hook": hook}, policy)
            task = asyncio.create_task(target.run())
            await until(lambda: store.outbox_stats(now=Clock()())[0] == 0, timeout=10)
            await target.stop(asyncio.get_running_loop().time() + 5)
            await task
    verifier = Webhook(SECRET)
    ids: list[str] = []
    for headers, body in received:
        payload = verifier.verify(body, {k.lower(): v for k, v in headers.items()})
        assert payload["type"] == DIGEST
        assert headers["webhook-id"] == payload["id"]
        assert [e["id"] for e in payload["data"]["events"]] == payload["data"]["event_ids"]
        ids += payload["data"]["event_ids"]
    assert [len(json.loads(b)["data"]["event_ids"]) for _, b in received] == [20, 10]
    assert ids == [e.id for e in events]  # all of them, in order, once


# ---- roll-ups --------------------------------------------------------------------------------


def finish(store: Store, run: str, status: str, group: str = "rg-1") -> Event:
    now = datetime.now(UTC)
    previous = store.get_run(run)
    before = RunState(run, "prj-a", previous.status if previous else None, now)
    after = RunState(run, "prj-a", status, now, labels={RUN_GROUP_LABEL: group})
    event = detect(before, after, terminal=TERMINAL)
    assert event is not None
    assert store.record_observation(after, event, notifiers=["chat"])
    return event


def tracker(
    store: Store, targets: frozenset[str] = frozenset({"chat"}), sink: EventSink | None = None
) -> RollupTracker:
    return RollupTracker(
        store=SqliteStore(store),
        sink=sink or EventSink(store=SqliteStore(store), route=lambda event: ["chat", "hook"]),
        targets=lambda: targets,
        clock=lambda: datetime.now(UTC),
        interval=0.05,
    )


async def test_one_rollup_per_group_once_every_run_finished(store: Store) -> None:
    members = runs(3)
    store.track(TrackRequest(r, "prj-a", {RUN_GROUP_LABEL: "rg-1", "team": "g"}) for r in members)
    store.track([TrackRequest("x" * 8, "prj-a", {RUN_GROUP_LABEL: "rg-2"})])
    rollups = tracker(store)
    for run, status in zip(members[:2], ("SUCCESS", "EXECUTOR_ERROR"), strict=True):
        rollups.observe(finish(store, run, status))
        assert await rollups.check("rg-1") is None  # not yet: one run is still going
    rollups.observe(finish(store, members[2], "CANCELED"))
    event = await rollups.check("rg-1")
    assert event is not None
    assert event.id == rollup_id("rg-1")
    assert event.data["progress"] == Progress(3, 3, 1, 1, 1, 0).to_dict()
    assert event.data["labels"] == {RUN_GROUP_LABEL: "rg-1", "team": "g"}
    assert await tracker(store).check("rg-1") is None  # never twice, even from a new tracker
    rows = [d for d in store.pending_deliveries() if d.event.type == GROUP_COMPLETED]
    assert [d.notifier for d in rows] == ["chat"]  # only notifiers with rollup = true


async def test_a_restart_records_a_rollup_the_crash_missed_but_not_twice(store: Store) -> None:
    members = runs(2)
    store.track(TrackRequest(r, "prj-a", {RUN_GROUP_LABEL: "rg-1"}) for r in members)
    for run in members:
        finish(store, run, "SUCCESS")  # recorded, but the process died before any check
    assert not store.has_event(rollup_id("rg-1"))
    stop = asyncio.Event()
    stop.set()
    await tracker(store).run(stop)  # a new start: the sweep finds the group
    assert store.has_event(rollup_id("rg-1"))
    before = store.pending_deliveries()
    await tracker(store).run(stop)
    assert store.pending_deliveries() == before


async def test_a_rollup_is_counted_and_announced_like_every_event(store: Store) -> None:
    """Roll-ups go through the one event sink: the events metric and the hooks see them."""
    members = runs(2)
    store.track(TrackRequest(r, "prj-a", {RUN_GROUP_LABEL: "rg-1"}) for r in members)
    metrics = Metrics()
    seen: list[Event] = []
    woken: list[int] = []
    sink = EventSink(
        store=SqliteStore(store),
        route=lambda event: ["chat", "hook"],
        metrics=metrics,
        on_event=[seen.append],
        on_recorded=lambda: woken.append(1),
    )
    rollups = tracker(store, sink=sink)
    sink.subscribe(rollups.observe)  # as the daemon wires it; a roll-up marks nothing
    for run in members:
        rollups.observe(finish(store, run, "SUCCESS"))
    event = await rollups.check("rg-1")
    assert event is not None
    assert seen == [event]
    assert woken == [1]
    count = metrics.registry.get_sample_value(
        "omics_watcher_events_total", {"type": GROUP_COMPLETED}
    )
    assert count == 1.0
    assert await rollups.check("rg-1") is None  # recorded once, so counted once
    assert seen == [event]


async def test_no_rollup_without_a_notifier_that_wants_one(store: Store) -> None:
    run = runs(1)[0]
    store.track([TrackRequest(run, "prj-a", {RUN_GROUP_LABEL: "rg-1"})])
    finish(store, run, "SUCCESS")
    assert await tracker(store, frozenset()).check("rg-1") is None
    assert not store.has_event(rollup_id("rg-1"))


# ---- the must-show: the whole daemon, the simulator, WeCom's real pace -----------------------


async def test_96_runs_of_one_group_reach_wecom_at_20_per_minute_as_digests(
    wecom: WeCom, tmp_path: Path
) -> None:
    """96 simulated runs of one run group, all finishing within ~15 s, through the daemon.

    The receiver enforces WeCom's 20 messages per 60 s (errcode 45009 beyond) and refuses
    the first digest with a 500. Every run's outcome must arrive, in digests, followed by
    one roll-up; no message may be refused for the rate.
    """
    wecom.fail_digests = 1
    config = SimulatorConfig(
        runs=96,
        runs_per_group=96,
        seed=96,
        queued_seconds=(0.5, 2.0),
        initializing_seconds=(0.5, 2.0),
        running_seconds=(1.0, 8.0),
        rate_limit=400,
    )
    loop = asyncio.get_running_loop()
    async with running_simulator(config) as sim:
        listed = sim.call("DescribeRuns", {"ProjectId": sim.project_id, "Limit": 100})["Runs"]
        groups = {item["RunGroupId"] for item in listed}
        assert len(listed) == 96
        assert len(groups) == 1
        group = groups.pop()
        state = tmp_path / "state.db"
        with Store.open(state) as store:  # as discovery would: the RunGroupId as a label
            store.track(
                TrackRequest(item["RunUuid"], sim.project_id, {RUN_GROUP_LABEL: group})
                for item in listed
            )
        settings = Settings(
            tencentcloud={
                "endpoint": sim.endpoint,
                "secret_id": sim.secret_id,
                "secret_key": sim.secret_key,
                "project_id": sim.project_id,
            },
            polling={"interval_seconds": 0.5, "rate_per_second": 300},
            state={"path": state},
            server={"listen": "127.0.0.1:0"},
            notifiers=[
                {
                    "name": "wecom",
                    "type": "wecom",
                    "url": wecom.url,
                    "digest": {"window_seconds": 3, "group_by": "run_group", "max_items": 60},
                    "rollup": True,
                }
            ],
        )
        started = loop.time()
        async with daemon_task(settings) as daemon:
            await until(
                lambda: any(m.startswith("### 🏁") for m in wecom.accepted) or daemon.done(),
                timeout=55,
            )
        elapsed = loop.time() - started
        final = {
            uuid_[:8]: DEFAULT_STATUSES.category(sim.status(uuid_), terminal=True)
            for uuid_ in sim.run_uuids
        }
    assert wecom.refused == 0  # no 45009: never more than 20 in any minute
    assert len(wecom.failed) == 1  # the 500, retried with all of its runs
    seen = parse(wecom.accepted)
    retried = [parse([m]).final for m in wecom.accepted]
    assert any(set(parse(wecom.failed).final) <= set(r) for r in retried)
    assert not seen.more
    assert {short: seen.final.get(short) for short in final} == final  # every run, right outcome
    rollups = [t for t in seen.titles if t.startswith("🏁")]
    assert len(rollups) == 1
    assert rollups[0].startswith(f"🏁 run group {group} finished: 96/96")
    assert seen.titles.index(rollups[0]) == len(seen.titles) - 1  # after the last digest
    assert len(wecom.accepted) + len(wecom.failed) <= 20
    assert elapsed < 55
