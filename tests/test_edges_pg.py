"""The edges on PostgreSQL (issue 15): every state command of the CLI, the admin API, /metrics
and the status page against a real PostgreSQL 15 (``tests/pg.py``), chosen by ``[state] url``
in a config file, as a user sets it up.

The CLI walk runs on both backends and must print the same things. Reading commands on a
database without our schema exit 1 naming the database and create nothing; unreachable or
refused databases exit 3. The admin API, /metrics and the status page are served from a
store bound as a *standby* (no lease): they read and change the state all the same. The
test cluster's password never appears in any output, error or page.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pg import Cluster
from prometheus_client.parser import text_string_to_metric_families
from support import write_config

from watcher.cli import main
from watcher.config import load_settings
from watcher.events import RunState
from watcher.options import state_options
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.service.state_metrics import StateGauges
from watcher.statuses import Statuses
from watcher.store.api import AsyncStore, open_async_store
from watcher.transitions import detect
from watcher.ui import guard
from watcher.ui.options import UiOptions
from watcher.ui.pages import StatusPage

RUN_A = "84232c68-a016-4668-b2e3-168a175d6f29"
RUN_B = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
TERMINAL = frozenset({"SUCCESS", "FAILED"})
TOKEN = "adm-pg-edges-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOTIFIERS = [
    {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/ops"},
    {"name": "chat", "type": "webhook", "url": "http://127.0.0.1:9/chat"},
]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("OMICS_WATCHER_", "TENCENTCLOUD_", "TKE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def state_config(tmp_path: Path, *, path: Path | None = None, url: str | None = None) -> Path:
    state = {"url": url} if url is not None else {"path": str(path)}
    return write_config(tmp_path / "watcher.toml", {"state": state, "notifiers": NOTIFIERS})


class Cli:
    """``main`` with one config file; every output kept, to look for the password."""

    def __init__(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        self._capsys = capsys
        self._config = str(config)
        self.seen: list[str] = []

    def __call__(self, *args: str) -> tuple[int, str, str]:
        verb = 2 if args[0] == "silence" else 1  # -c goes after the (sub)command
        code = main([*args[:verb], "-c", self._config, *args[verb:]])
        out, err = self._capsys.readouterr()
        self.seen += [out, err]
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, (args, err)
        return out


async def record_failure(store: AsyncStore) -> None:
    """RUN_A went RUNNING then FAILED, each event owed to ops and chat (as the active daemon
    records it); the FAILED event's ops delivery is dead, the rest delivered."""
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    prev: RunState | None = None
    for minutes, status in enumerate(["RUNNING", "FAILED"]):
        cur = RunState(RUN_A, "prj", status, start + timedelta(minutes=minutes))
        event = detect(prev, cur, terminal=TERMINAL)
        assert await store.record_observation(cur, event, notifiers=["ops", "chat"])
        prev = cur
    rows = await store.pending_deliveries(limit=10)
    for row in rows[:-2]:
        await store.mark_delivered(row.id)
    dead, last = rows[-2:]
    await store.mark_dead(dead.id, error="HTTP 500", attempts=3)
    await store.mark_delivered(last.id)


async def with_store(where: dict[str, Any], work: Any) -> None:
    store = await open_async_store(**where)
    try:
        await work(store)
    finally:
        await store.close()


def cli_walk(cli: Cli, where: dict[str, Any]) -> list[Any]:
    """track, list, history, dead-letters, redeliver, silence add/list/expire, untrack; what
    each printed, with the ids and times that differ between runs left out."""
    said: list[Any] = []
    said.append(cli.ok("track", "--label", "team=g", RUN_A, RUN_B))
    code, out, err = cli("track", "--label", "team=h", RUN_A)
    said.append((code, out, err))
    listed = json.loads(cli.ok("list", "--json"))
    said.append([(r["run_uuid"], r["labels"], r["status"]) for r in listed])
    said.append(cli.ok("list", "--label", "team=h").split("\n")[1].split()[:3])
    asyncio.run(with_store(where, record_failure))
    history = json.loads(cli.ok("history", RUN_A, "--json"))
    said.append([(e["data"]["status"], e["deliveries"]) for e in history])
    letters = json.loads(cli.ok("dead-letters", "--json"))
    said.append([(d["notifier"], d["run_uuid"], d["attempts"], d["last_error"]) for d in letters])
    said.append(cli.ok("redeliver", "--all"))
    said.append(cli.ok("dead-letters"))
    silence_id = cli.ok(
        "silence", "add", "--match", "label.team=h", "--for", "2h", "--notifier", "ops"
    ).strip()
    assert silence_id.isdigit()
    silences = json.loads(cli.ok("silence", "list", "--json"))
    said.append([(s["id"] == int(silence_id), s["state"], s["matchers"]) for s in silences])
    said.append(cli.ok("silence", "expire", silence_id).replace(silence_id, "ID"))
    said.append(cli("untrack", RUN_B, "9" * 8)[1:])
    said.append([r["run_uuid"] for r in json.loads(cli.ok("list", "--json"))])
    return said


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_state_command_prints_the_same_on_both_backends(
    backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if backend == "postgres":
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        url: str = request.getfixturevalue("pg_url")
        where: dict[str, Any] = {"url": url}
        config = state_config(tmp_path, url=url)
    else:
        where = {"path": tmp_path / "state.db"}
        config = state_config(tmp_path, path=tmp_path / "state.db")
    cli = Cli(capsys, config)
    said = cli_walk(cli, where)
    delivered = {"state": "delivered", "attempts": 1, "last_error": None}
    relabelled = f"run {RUN_A}: labels changed {{team=g}} → {{team=h}}\n"
    assert said == [
        "tracked 2 new, 0 already tracked\n",
        (0, "tracked 0 new, 1 already tracked\n", relabelled),
        [(RUN_A, {"team": "h"}, None), (RUN_B, {"team": "g"}, None)],
        [RUN_A, "-", "-"],  # the one run labelled team=h: project and status not known yet
        [
            ("RUNNING", [{"notifier": "ops", **delivered}, {"notifier": "chat", **delivered}]),
            (
                "FAILED",
                [
                    {"notifier": "ops", "state": "dead", "attempts": 3, "last_error": "HTTP 500"},
                    {"notifier": "chat", **delivered},
                ],
            ),
        ],
        [("ops", RUN_A, 3, "HTTP 500")],
        "redelivered 1\n",
        "no dead letters\n",
        [(True, "active", {"label.team": "h"})],
        "expired silence ID\n",
        ("untracked 1\n", f"warning: not tracked: {'9' * 8}\n"),
        [RUN_A],
    ]
    if backend == "postgres":
        assert all(cluster.password not in text for text in cli.seen)


READING = [
    ["list"],
    ["list", "--json"],
    ["history", RUN_A],
    ["untrack", RUN_A],
    ["dead-letters"],
    ["redeliver", "--all"],
    ["silence", "list"],
    ["silence", "expire", "1"],
    ["silence", "add", "--match", "status=FAILED", "--for", "1h"],
]


async def our_tables(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        return sorted(row["table_name"] for row in rows)
    finally:
        await conn.close()


def test_reading_commands_on_an_empty_database_exit_1_and_create_nothing(
    pg_cluster: Cluster, pg_empty_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli = Cli(capsys, state_config(tmp_path, url=pg_empty_url))
    name = pg_empty_url.rsplit("/", 1)[1]
    for args in READING:
        code, out, err = cli(*args)
        assert (code, out) == (1, ""), args
        assert err == (
            f"database {name} holds no omics-watcher state yet (the daemon or 'track' creates it)\n"
        ), args
    assert asyncio.run(our_tables(pg_empty_url)) == []  # nothing was created
    assert cli.ok("track", RUN_A) == "tracked 1 new, 0 already tracked\n"  # track creates it
    assert "runs" in asyncio.run(our_tables(pg_empty_url))
    assert [r["run_uuid"] for r in json.loads(cli.ok("list", "--json"))] == [RUN_A]
    assert all(pg_cluster.password not in text for text in cli.seen)


def test_a_database_that_refuses_or_does_not_answer_is_exit_3_without_the_password(
    pg_cluster: Cluster, pg_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    name = pg_url.rsplit("/", 1)[1]
    wrong = pg_url.replace(pg_cluster.password, "Wr0ng-pa55word")
    closed = f"postgresql://postgres:{pg_cluster.password}@127.0.0.1:1/{name}"
    for url in (wrong, closed):
        cli = Cli(capsys, state_config(tmp_path, url=url))
        for args in (["list"], ["track", RUN_A], ["silence", "list"]):
            code, out, err = cli(*args)
            assert (code, out) == (3, ""), (args, err)
            assert err.startswith(f"state error: database {name} "), err
            assert err.count("\n") == 1
        assert all(pg_cluster.password not in text for text in cli.seen)
        assert all("Wr0ng-pa55word" not in text for text in cli.seen)
    cli = Cli(capsys, state_config(tmp_path, url=pg_url))
    assert json.loads(cli.ok("list", "--json")) == []  # nothing was tracked on the way


class Served:
    """The admin API and the status page of a standby replica, and the active daemon's store
    (which records what the runs do) on the same database."""

    def __init__(self, client: TestClient[web.Request, web.Application], active: AsyncStore):
        self.client = client
        self.active = active
        self.seen: list[str] = []

    async def call(
        self, method: str, path: str, *, status: int, body: Any = None, **kwargs: Any
    ) -> Any:
        resp = await self.client.request(method, path, headers=AUTH, json=body, **kwargs)
        text = await resp.text()
        self.seen += [text, json.dumps(dict(resp.headers))]
        assert resp.status == status, (method, path, text)
        return json.loads(text) if text and resp.content_type == "application/json" else text

    async def page(self, path: str, cookie: str) -> str:
        resp = await self.client.get(path, cookies={guard.SESSION_COOKIE: cookie})
        text = await resp.text()
        self.seen.append(text)
        assert resp.status == 200, (path, text[:300])
        return text

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = await self.call("GET", "/metrics", status=200)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
async def served(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Served, StatusPage]]:
    from watcher.store.pg.store import PgStore

    settings = load_settings(str(state_config(tmp_path, url=pg_url)))
    store = await state_options(settings).open()
    assert isinstance(store, PgStore)
    store.bind(lambda: None)  # a standby: it holds no lease
    active = await open_async_store(url=pg_url)
    metrics = Metrics()
    StateGauges(store).install(metrics)
    page = StatusPage(
        UiOptions(admin_token=TOKEN),
        store=store,
        metrics=metrics,
        statuses=Statuses(),
        not_ready_reason=lambda: "standby",
    )
    app = build_app(
        store=store,
        metrics=metrics,
        health=Health(standby=lambda: True),
        admin_token=TOKEN,
        default_project_id="prj-default",
        notifier_names=lambda: ["ops", "chat"],
        ui=page.install,
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Served(client, active), page
    finally:
        await client.close()
        await active.close()
        await store.close()


async def first_feed_event(served: Served, cookie: str) -> dict[str, Any]:
    """The first event the live feed replays to a browser that saw none yet."""
    headers = {"Last-Event-ID": "0"}
    cookies = {guard.SESSION_COOKIE: cookie}
    async with served.client.get("/ui/events", headers=headers, cookies=cookies) as resp:
        assert resp.status == 200
        seen = b""
        async with asyncio.timeout(30):
            while b"\n\n" not in seen.partition(b"event: run-event")[2]:
                seen += await resp.content.readany()
    data = seen.partition(b"event: run-event\ndata: ")[2].partition(b"\n")[0]
    found: dict[str, Any] = json.loads(data)
    return found


async def test_the_admin_api_metrics_and_status_page_of_a_standby(
    served: tuple[Served, StatusPage], pg_cluster: Cluster
) -> None:
    api, page = served
    assert (await api.client.get("/healthz")).status == 200
    assert (await (await api.client.get("/readyz")).json())["reason"] == "standby"

    made = await api.call("POST", "/v1/runs", status=201, body={"run_uuid": RUN_A})
    assert (made["run_uuid"], made["project_id"]) == (RUN_A, "prj-default")
    body = {"run_uuid": RUN_B, "labels": {"team": "g"}}
    assert (await api.call("POST", "/v1/runs", status=201, body=body))["labels"] == {"team": "g"}
    again = await api.call("POST", "/v1/runs", status=200, body={**body, "labels": {"team": "h"}})
    assert again["previous"] == {"labels": {"team": "g"}}
    first = await api.call("GET", "/v1/runs?limit=1", status=200)
    assert [r["run_uuid"] for r in first["runs"]] == [RUN_A]
    rest = await api.call("GET", f"/v1/runs?cursor={first['next_cursor']}", status=200)
    assert ([r["run_uuid"] for r in rest["runs"]], rest["next_cursor"]) == ([RUN_B], None)
    labelled = await api.call("GET", "/v1/runs?label=team%3Dh", status=200)
    assert [r["run_uuid"] for r in labelled["runs"]] == [RUN_B]

    await record_failure(api.active)  # the active daemon saw RUN_A run and fail
    events = await api.call("GET", f"/v1/events?run_uuid={RUN_A}", status=200)
    assert [e["data"]["status"] for e in events] == ["FAILED", "RUNNING"]
    typed = await api.call("GET", "/v1/events?type=run.status_changed&limit=1", status=200)
    assert [e["id"] for e in typed] == [events[0]["id"]]
    history = await api.call("GET", f"/v1/runs/{RUN_A}/events", status=200)
    assert [[d["state"] for d in e["deliveries"]] for e in history] == [
        ["delivered", "delivered"],
        ["dead", "delivered"],
    ]
    letters = await api.call("GET", "/v1/dead-letters", status=200)
    assert [(d["notifier"], d["last_error"]) for d in letters] == [("ops", "HTTP 500")]
    before = await api.metrics()
    assert before[("omics_watcher_tracked_runs", (("status", "FAILED"),))] == 1
    assert before[("omics_watcher_tracked_runs", (("status", "unknown"),))] == 1
    assert before[("omics_watcher_outbox_pending", ())] == 0

    done = await api.call("POST", "/v1/dead-letters/redeliver", status=200, body={"all": True})
    assert (done["redelivered"], done["ids"]) == (1, [letters[0]["delivery_id"]])
    assert await api.call("GET", "/v1/dead-letters", status=200) == []
    after = await api.metrics()
    assert after[("omics_watcher_redeliveries_total", (("notifier", "ops"),))] == 1
    assert after[("omics_watcher_outbox_pending", ())] == 1

    silence = {"matchers": {"label.team": "h"}, "duration": "2h", "notifiers": ["ops"]}
    made = await api.call("POST", "/v1/silences", status=201, body=silence)
    listed = await api.call("GET", "/v1/silences", status=200)
    assert [(s["id"], s["state"]) for s in listed] == [(made["id"], "active")]
    await api.call("DELETE", f"/v1/silences/{made['id']}", status=204)
    assert (await api.call("GET", f"/v1/silences/{made['id']}", status=200))["state"] == "expired"

    cookie, _ = page.sessions.create("viewer")
    overview = await api.page("/ui/", cookie)
    assert "FAILED" in overview
    assert RUN_A in await api.page("/ui/runs?status=FAILED", cookie)
    run_page = await api.page(f"/ui/runs/{RUN_A}", cookie)
    assert "FAILED" in run_page
    assert "RUNNING" in run_page
    assert (await first_feed_event(api, cookie))["status"] == "RUNNING"

    await api.call("DELETE", f"/v1/runs/{RUN_B}", status=204)
    await api.call("DELETE", f"/v1/runs/{RUN_B}", status=404)
    assert [r["run_uuid"] for r in (await api.call("GET", "/v1/runs", status=200))["runs"]] == [
        RUN_A
    ]
    assert all(pg_cluster.password not in text for text in api.seen)


async def test_metrics_still_answer_when_the_database_does_not(
    served: tuple[Served, StatusPage], pg_cluster: Cluster, pg_url: str
) -> None:
    api, _ = served
    await api.call("POST", "/v1/runs", status=201, body={"run_uuid": RUN_A})
    assert (await api.metrics())[("omics_watcher_tracked_runs", (("status", "unknown"),))] == 1
    name = pg_url.rsplit("/", 1)[1]
    # Every connection to the database ends (as when the server restarts or a link drops);
    # the pool's next connections are refused while the database does not allow them.
    pg_cluster.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    pg_cluster.psql(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )
    try:
        down = await api.metrics()
    finally:
        pg_cluster.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    names = {metric for metric, _ in down}
    assert "omics_watcher_transitions_total" in names  # the in-memory families still answer
    assert "omics_watcher_tracked_runs" not in names  # the state's: left out, not stale
    assert "omics_watcher_outbox_pending" not in names
    assert (await api.client.get("/healthz")).status == 200
    assert (await api.metrics())[("omics_watcher_tracked_runs", (("status", "unknown"),))] == 1
    assert all(pg_cluster.password not in text for text in api.seen)
