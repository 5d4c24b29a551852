"""``list`` for people and for scripts: its filters select exactly what ``GET /v1/runs`` selects
with the same parameters; on a terminal, times are relative ("3m ago") and control characters
in any value are escaped; piped or with ``--json``, times stay ISO 8601 as stored.

The terminal case runs the installed command with its stdout on a real pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import WATCHER, clean_env, write_config

from watcher.cli import main
from watcher.events import RunState
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.transitions import detect

TOKEN = "list-admin-token-0123456789abcdef"
RUNS = {
    "a": "84232c68-a016-4668-b2e3-168a175d6f29",
    "b": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
    "c": "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "d": "11111111-2222-4333-8444-555555555555",
}
TERMINAL = frozenset({"SUCCESS"})
EVIL = "\x1b[31mred\u202e"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state with four runs: a RUNNING 30 min ago (team=g), b SUCCESS 2 h ago (team=g),
    c RUNNING polled 20 s ago (team=x), d never polled (a label with control characters)."""
    for key in list(os.environ):
        if key.startswith(("OMICS_WATCHER_", "TENCENTCLOUD_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    now = datetime.now(UTC)
    with Store.open(tmp_path / "s.db") as store:
        labels = {"a": {"team": "g"}, "b": {"team": "g"}, "c": {"team": "x"}, "d": {"k": EVIL}}
        store.track(TrackRequest(RUNS[n], "prj", labels[n]) for n in "abcd")
        for name, status, ago in (
            ("a", "RUNNING", 1810),
            ("b", "SUCCESS", 7300),
            ("c", "RUNNING", 900),
        ):
            state = RunState(RUNS[name], "prj", status, now - timedelta(seconds=ago))
            assert store.record_observation(
                state, detect(None, state, terminal=TERMINAL), notifiers=[]
            )
        store.record_polls([(RUNS["c"], now - timedelta(seconds=20))])
    return write_config(
        tmp_path / "c.toml",
        {
            "state": {"path": str(tmp_path / "s.db")},
            "polling": {"terminal_statuses": sorted(TERMINAL)},
        },
    )


def listed(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> list[dict[str, Any]]:
    code = main(["list", "-c", str(config), "--json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


FILTERS: list[tuple[list[str], str]] = [
    ([], ""),
    (["--status", "RUNNING"], "status=RUNNING"),
    (["--label", "team=g"], "label=team%3Dg"),
    (["--label", "team=g", "--active"], "label=team%3Dg&active=true"),
    (["--active"], "active=true"),
    (["--status", "RUNNING", "--label", "team=x"], "status=RUNNING&label=team%3Dx"),
    (["--limit", "2"], "limit=2"),
    (["--status", "NOPE"], "status=NOPE"),
]


async def test_list_filters_select_what_v1_runs_selects(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    expected = {
        "": "abcd",
        "status=RUNNING": "ac",
        "label=team%3Dg": "ab",
        "label=team%3Dg&active=true": "a",
        "active=true": "acd",
        "status=RUNNING&label=team%3Dx": "c",
        "limit=2": "ab",
        "status=NOPE": "",
    }
    with Store.open(config.parent / "s.db") as store:
        app = build_app(
            store=SqliteStore(store),
            metrics=Metrics(),
            health=Health(),
            admin_token=TOKEN,
            default_project_id="",
        )
        async with TestClient(TestServer(app)) as client:
            for args, query in FILTERS:
                resp = await client.get(
                    f"/v1/runs?{query}", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                assert resp.status == 200, query
                api = (await resp.json())["runs"]
                # The CLI runs its own event loop: in a thread, beside the test's.
                cli = await asyncio.to_thread(listed, capsys, config, *args)
                assert cli == api, (args, query)
                assert [r["run_uuid"] for r in cli] == [RUNS[n] for n in expected[query]], args


def on_terminal(config: Path, *args: str) -> str:
    """``omics-watcher list ARGS`` with stdout on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [*WATCHER, "list", "-c", str(config), *args],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=clean_env(config.parent),
            cwd=config.parent,
            timeout=60,
        )
        os.close(follower)
        follower = -1
        assert done.returncode == 0, done.stderr
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side is closed and everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_list_on_a_terminal_shows_relative_times_and_escapes_control_characters(
    config: Path,
) -> None:
    out = on_terminal(config)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split() == [
        "RUN_UUID", "PROJECT", "STATUS", "TERMINAL", "LAST_POLLED", "LABELS"
    ]  # fmt: skip
    # Minutes and hours absorb a slow machine; the seconds only need to be seconds.
    assert re.search(r" 3[0-4]m ago ", rows[RUNS["a"]]), rows[RUNS["a"]]
    assert " 2h ago " in rows[RUNS["b"]]
    assert re.search(r" ([2-5][0-9]s|[1-5]m) ago ", rows[RUNS["c"]]), rows[RUNS["c"]]
    assert rows[RUNS["d"]].split()[4] == "-"
    assert rows[RUNS["d"]].endswith("k=\\x1b[31mred\\u202e")
    assert "\x1b" not in out
    assert "\u202e" not in out


def test_list_piped_keeps_iso_times_and_json_is_unchanged(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    rows = {r["run_uuid"]: r for r in listed(capsys, config)}
    assert rows[RUNS["d"]]["labels"] == {"k": EVIL}  # --json: the exact value
    assert main(["list", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(RUNS["a"]))
    assert line.split()[4] == rows[RUNS["a"]]["last_polled_at"]
    assert "ago" not in out
