"""Silences in one process: matching, the stored silences, the dispatcher's planning step, the
admin API (real aiohttp app on a real state file) and the ``silence`` commands (real CLI).

The cross-process rule (a silence added beside a running daemon applies within 2 s) and the
whole path from the simulator to a webhook receiver are in ``test_silences_e2e.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import TypeAdapter
from support import clean_env, run_cli, serve, until, write_config

from watcher.delivery.dispatcher import DeliveryOutcome, Dispatcher
from watcher.delivery.silencer import LiveSilences
from watcher.delivery.silencing import (
    Silence,
    SilenceError,
    check_matchers,
    parse_duration,
    parse_matcher,
    parse_time,
)
from watcher.events import Event, new_event_id
from watcher.notifiers.base import Notifier
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore

RUN_A = "84232c68-a016-4668-b2e3-168a175d6f29"
RUN_B = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
TOKEN = "adm-silences-3c9e1b5d2a4c6e8f0a1b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def event(
    run_uuid: str = RUN_A,
    *,
    status: str = "SUCCESS",
    labels: dict[str, str] | None = None,
    type_: str = "run.status_changed",
    project_id: str = "prj-a",
) -> Event:
    now = datetime.now(UTC)
    data = {"run_uuid": run_uuid, "project_id": project_id, "status": status}
    return Event(type_, new_event_id(now), now, {**data, "labels": labels or {}})


def silence(matchers: dict[str, str], notifiers: tuple[str, ...] = (), **span: Any) -> Silence:
    now = datetime.now(UTC)
    return Silence(
        id=1,
        matchers=check_matchers(matchers.items()),
        notifiers=notifiers,
        starts_at=span.get("starts_at", now - timedelta(minutes=1)),
        ends_at=span.get("ends_at", now + timedelta(hours=1)),
    )


# -- matching -------------------------------------------------------------------------------


def test_every_key_matches_the_event_as_delivered_and_all_must_hold() -> None:
    quiet = event(labels={"team": "genomics", "run_group": "g1"})
    assert silence({"label.team": "genomics"}).matches(quiet)
    assert silence({"run_uuid": RUN_A.upper()}).matches(quiet)  # UUIDs compare lower-case
    assert silence({"project_id": "prj-a", "status": "SUCCESS"}).matches(quiet)
    assert silence({"type": "run.status_changed", "label.run_group": "g1"}).matches(quiet)
    assert not silence({"label.team": "genomics", "status": "FAILED"}).matches(quiet)
    assert not silence({"label.team": "Genomics"}).matches(quiet)  # values are exact
    assert not silence({"label.owner": "genomics"}).matches(quiet)  # no such label
    assert not silence({"type": "run.stuck"}).matches(quiet)
    assert not silence({"run_uuid": RUN_B}).matches(quiet)


def test_a_silence_applies_to_its_notifiers_between_its_start_and_end() -> None:
    now = datetime.now(UTC)
    only_ops = silence({"status": "SUCCESS"}, ("ops",))
    assert only_ops.applies_to("ops")
    assert not only_ops.applies_to("chat")
    assert silence({"status": "SUCCESS"}).applies_to("anything")
    later = silence({"status": "SUCCESS"}, starts_at=now + timedelta(hours=1))
    ended = silence({"status": "SUCCESS"}, ends_at=now - timedelta(seconds=1))
    assert (later.state(now), ended.state(now), only_ops.state(now)) == (
        "pending",
        "expired",
        "active",
    )


@pytest.mark.parametrize(
    ("pairs", "problem"),
    [
        ([("lable.team", "x")], "unknown key 'lable.team'"),
        ([("label.", "x")], "unknown key 'label.'"),
        ([("status", "")], "status: the value must be 1 to 256 printable characters"),
        ([("status", "A"), ("status", "B")], "key 'status' given twice"),
        ([], "at least one matcher"),
    ],
)
def test_bad_matchers_are_refused_naming_them(pairs: list[tuple[str, str]], problem: str) -> None:
    with pytest.raises(SilenceError, match=problem):
        check_matchers(pairs)


def test_durations_and_times() -> None:
    assert [parse_duration(t) for t in ("30s", "90m", "2h", "1d")] == [
        timedelta(seconds=30),
        timedelta(minutes=90),
        timedelta(hours=2),
        timedelta(days=1),
    ]
    for bad in ("0s", "2w", "1h30m", "-5m", "soon", "3651d"):
        with pytest.raises(SilenceError, match="duration"):
            parse_duration(bad)
    # A well-formed duration that is too long says so, however many digits it has.
    for long in ("3651d", "10000000d", "9" * 5000 + "s"):
        with pytest.raises(SilenceError) as raised:
            parse_duration(long)
        assert str(raised.value).endswith(": too long, at most 3650d"), str(raised.value)[-80:]
    with pytest.raises(SilenceError, match="'0s': must be more than 0"):
        parse_duration("0s")
    assert parse_time("2026-11-27T18:00:00Z") == datetime(2026, 11, 27, 18, tzinfo=UTC)
    assert parse_time("2026-11-28T02:00+08:00") == datetime(2026, 11, 27, 18, tzinfo=UTC)
    with pytest.raises(SilenceError, match="add Z or a UTC offset"):
        parse_time("2026-11-27T18:00:00")
    with pytest.raises(SilenceError, match="expected ISO 8601"):
        parse_time("tomorrow")
    assert parse_matcher("label.team=a=b") == ("label.team", "a=b")


# -- the store ------------------------------------------------------------------------------


# -- the dispatcher's planning step -----------------------------------------------------------


@dataclass
class Hook:
    """A webhook receiver: answers ``status`` and records the run of every event it gets."""

    url: str = ""
    status: int = 204
    runs: list[str] = field(default_factory=list)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    state = Hook()

    async def handle(request: web.Request) -> web.Response:
        state.runs.append(json.loads(await request.read())["data"]["run_uuid"])
        return web.Response(status=state.status)

    app = web.Application()
    app.router.add_post("/{name}", handle)
    async with serve(app) as state.url:
        yield state


def webhook(name: str, hook: Hook, session: aiohttp.ClientSession) -> Notifier:
    raw = {"name": name, "type": "webhook", "url": f"{hook.url}/{name}"}
    settings = TypeAdapter(NotifierSettings).validate_python(raw)
    return build_notifier(settings, session=session, logger=structlog.get_logger())


@dataclass
class Outcomes:
    seen: list[tuple[str, DeliveryOutcome]] = field(default_factory=list)

    def delivery(self, *, notifier: str, outcome: DeliveryOutcome, latency: float | None) -> None:
        self.seen.append((notifier, outcome))


def states(store: Store, run_uuid: str) -> list[tuple[str, str]]:
    history = store.run_history(run_uuid) or []
    return sorted((d.notifier, d.state) for entry in history for d in entry.deliveries)


async def run_dispatcher(
    store: Store, notifiers: dict[str, Notifier], outcomes: Outcomes, done: Callable[[], bool]
) -> None:
    dispatcher = Dispatcher(
        store=SqliteStore(store),
        notifiers=notifiers,
        logger=structlog.get_logger(),
        metrics=outcomes,
        poll_interval=0.05,
        uniform=lambda: 0.0,
        silences=LiveSilences(SqliteStore(store), logger=structlog.get_logger(), check_every=0.0),
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        await until(done)
    finally:
        await dispatcher.stop(asyncio.get_running_loop().time() + 1.0)
        await task


async def test_matching_rows_are_settled_silenced_and_the_rest_sent(
    store: Store, hook: Hook, session: aiohttp.ClientSession
) -> None:
    store.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    store.add_silence(
        matchers={"label.team": "quiet"},
        notifiers=["ops"],
        ends_at=datetime.now(UTC) + timedelta(hours=1),
    )
    for status in ("RUNNING", "SUCCESS"):
        quiet = event(RUN_A, status=status, labels={"team": "quiet"})
        assert store.record_event(quiet, notifiers=["ops", "chat"])
        loud = event(RUN_B, status=status, labels={"team": "loud"})
        assert store.record_event(loud, notifiers=["ops", "chat"])
    outcomes = Outcomes()
    notifiers = {name: webhook(name, hook, session) for name in ("ops", "chat")}
    with structlog.testing.capture_logs() as logs:
        await run_dispatcher(store, notifiers, outcomes, lambda: not store.pending_deliveries())
    # The silence names "ops" only: RUN_A's events still go to "chat".
    assert sorted(hook.runs) == sorted([RUN_A] * 2 + [RUN_B] * 4)
    assert states(store, RUN_A) == [("chat", "delivered")] * 2 + [("ops", "silenced")] * 2
    assert states(store, RUN_B) == [("chat", "delivered")] * 2 + [("ops", "delivered")] * 2
    assert outcomes.seen.count(("ops", "silenced")) == 2
    silenced = [line for line in logs if line["event"] == "notify_silenced"]
    assert {line["run_uuid"] for line in silenced} == {RUN_A}


async def test_a_row_waiting_for_a_retry_is_silenced_at_its_next_attempt(
    store: Store, hook: Hook, session: aiohttp.ClientSession
) -> None:
    hook.status = 503
    store.track([TrackRequest(RUN_A)])
    assert store.record_event(event(RUN_A, labels={"team": "quiet"}), notifiers=["ops"])
    outcomes = Outcomes()
    notifiers = {"ops": webhook("ops", hook, session)}
    await run_dispatcher(store, notifiers, outcomes, lambda: ("ops", "retry") in outcomes.seen)
    assert hook.runs == [RUN_A]
    store.add_silence(matchers={"run_uuid": RUN_A}, ends_at=datetime.now(UTC) + timedelta(hours=1))
    hook.status = 204
    await run_dispatcher(store, notifiers, outcomes, lambda: not store.pending_deliveries())
    assert hook.runs == [RUN_A]  # the one failed attempt; never sent again
    assert states(store, RUN_A) == [("ops", "silenced")]


# -- the admin API --------------------------------------------------------------------------


@pytest.fixture
async def api(store: Store) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(
        store=SqliteStore(store),
        metrics=Metrics(),
        health=Health(),
        admin_token=TOKEN,
        default_project_id="",
        notifier_names=lambda: {"ops", "chat"},
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_admin_api_adds_lists_and_expires_silences(
    api: TestClient[web.Request, web.Application], store: Store
) -> None:
    body = {"matchers": {"label.team": "quiet"}, "duration": "2h", "notifiers": ["ops"]}
    resp = await api.post("/v1/silences", json={**body, "comment": "rerun"}, headers=AUTH)
    assert resp.status == 201
    made = await resp.json()
    assert resp.headers["Location"] == f"/v1/silences/{made['id']}"
    assert made["matchers"] == {"label.team": "quiet"}
    assert (made["notifiers"], made["comment"], made["state"]) == (["ops"], "rerun", "active")
    ends = datetime.fromisoformat(made["ends_at"].replace("Z", "+00:00"))
    starts = datetime.fromisoformat(made["starts_at"].replace("Z", "+00:00"))
    assert ends - starts == timedelta(hours=2)
    assert [s.id for s in store.current_silences()] == [made["id"]]

    until = {"matchers": {"type": "run.stuck"}, "ends_at": "2999-01-01T00:00:00Z"}
    resp = await api.post("/v1/silences", json=until, headers=AUTH)
    assert resp.status == 201
    other = await resp.json()
    assert other["ends_at"] == "2999-01-01T00:00:00.000Z"
    assert other["notifiers"] == []

    resp = await api.get("/v1/silences", headers=AUTH)
    assert [s["id"] for s in await resp.json()] == [made["id"], other["id"]]
    resp = await api.delete(f"/v1/silences/{made['id']}", headers=AUTH)
    assert resp.status == 204
    resp = await api.get(f"/v1/silences/{made['id']}", headers=AUTH)
    assert (await resp.json())["state"] == "expired"
    assert [s.id for s in store.current_silences()] == [other["id"]]
    for path in ("/v1/silences/9999", "/v1/silences/abc"):
        resp = await api.delete(path, headers=AUTH)
        assert resp.status == 404
    resp = await api.get("/v1/silences")
    assert resp.status == 401


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"matchers": {"labels.team": "x"}, "duration": "1h"}, "unknown key 'labels.team'"),
        ({"matchers": {"status": "X"}, "duration": "2 weeks"}, "duration '2 weeks'"),
        ({"matchers": {"status": "X"}}, "exactly one of duration and ends_at"),
        (
            {"matchers": {"status": "X"}, "duration": "1h", "ends_at": "2999-01-01T00:00Z"},
            "exactly one of duration and ends_at",
        ),
        ({"matchers": {"status": "X"}, "ends_at": "2000-01-01T00:00Z"}, "in the future"),
        ({"matchers": {"status": "X"}, "ends_at": "2999-01-01T00:00"}, "add Z or a UTC offset"),
        ({"matchers": {"status": "X"}, "duration": "1h", "notifiers": ["pager"]}, "1 unknown"),
        ({"matchers": {}, "duration": "1h"}, "at least one matcher"),
        ({"matchers": {"status": 3}, "duration": "1h"}, "matchers.status"),
        ({"matchers": {"status": "X"}, "duration": "1h", "until": "x"}, "until: Extra inputs"),
    ],
)
async def test_admin_api_refuses_a_bad_silence_with_the_reason(
    api: TestClient[web.Request, web.Application], store: Store, body: Any, reason: str
) -> None:
    resp = await api.post("/v1/silences", json=body, headers=AUTH)
    assert resp.status == 400
    assert reason in (await resp.json())["error"]
    assert store.silences() == []


# -- the command line -----------------------------------------------------------------------


def test_silence_commands(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "home")
    config = write_config(
        tmp_path / "watcher.toml",
        {
            "state": {"path": str(tmp_path / "state.db")},
            "notifiers": [{"name": "ops", "type": "log"}, {"name": "chat", "type": "log"}],
        },
    )

    def cli(*args: str) -> Any:
        return run_cli("silence", *args, "-c", str(config), env=env, cwd=tmp_path)

    done = cli("list")
    assert done.returncode == 1
    assert f"no state file at {tmp_path / 'state.db'}" in done.stderr
    assert not (tmp_path / "state.db").exists()
    Store.open(tmp_path / "state.db").close()

    done = cli("add", "--match", "label.team=quiet", "--for", "90m", "--notifier", "ops")
    assert done.returncode == 0, done.stderr
    first = int(done.stdout)
    comment = "rerun \x1b[31mred\x1b[0m"
    done = cli(
        "add", "--match", "type=run.stuck", "--until", "2999-01-01T00:00Z", "--comment", comment
    )
    assert done.returncode == 0, done.stderr
    second = int(done.stdout)

    usage = [
        (("--match", "lable.team=x", "--for", "1h"), "--match: unknown key 'lable.team'"),
        (("--match", "status", "--for", "1h"), "expected KEY=VALUE"),
        (("--match", "status=X", "--for", "1w"), "--for: duration '1w'"),
        (
            ("--match", "status=X", "--for", "10000000d"),
            "error: --for: duration '10000000d': too long, at most 3650d",
        ),
        (("--match", "status=X", "--until", "2999-01-01T00:00"), "--until: time"),
        (("--match", "status=X", "--until", "2001-01-01T00:00Z"), "is not in the future"),
        (
            ("--match", "status=X", "--for", "1h", "--notifier", "pager"),
            "no notifier named 'pager'",
        ),
        (("--match", "status=X"), "one of the arguments --for --until is required"),
    ]
    for args, message in usage:
        done = cli("add", *args)
        assert (done.returncode, message in done.stderr) == (2, True), (args, done.stderr)

    done = cli("list", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [(s["id"], s["state"]) for s in listed] == [(first, "active"), (second, "active")]
    assert listed[0]["matchers"] == {"label.team": "quiet"}
    assert listed[0]["notifiers"] == ["ops"]
    assert listed[1]["comment"] == comment  # JSON keeps the exact value

    done = cli("expire", str(first))
    assert (done.returncode, done.stdout.strip()) == (0, f"expired silence {first}")
    done = cli("expire", "4242")
    assert done.returncode == 1
    assert "no silence with id 4242" in done.stderr
    done = cli("list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "STARTS", "ENDS", "NOTIFIERS", "MATCHERS", "COMMENT"]
    assert lines[1].split()[:2] == [str(first), "expired"]
    assert "\x1b" not in done.stdout
    assert "rerun \\x1b[31mred\\x1b[0m" in lines[2]
