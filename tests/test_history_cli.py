"""``history``, ``dead-letters`` and ``redeliver`` through the real command line (``main``) on a
real state file: text output for people (escaped), JSON, exit codes and their messages."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import write_config

from watcher.cli import main
from watcher.events import RunState
from watcher.store import Store, TrackRequest
from watcher.transitions import detect

RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
TERMINAL = frozenset({"SUCCESS", "FAILED"})


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("OMICS_WATCHER_", "TENCENTCLOUD_", "TKE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    hook = {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/hook"}
    chat = {"name": "chat", "type": "webhook", "url": "http://127.0.0.1:9/chat"}
    return write_config(
        tmp_path / "watcher.toml",
        {"state": {"path": str(tmp_path / "state.db")}, "notifiers": [hook, chat]},
    )


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def recorded(path: Path) -> Store:
    """A state with RUN's two events: hook delivered at its second try then dead after three
    (an ESC in its error), chat pending then removed from the configuration ("old")."""
    store = Store.open(path)
    store.track([TrackRequest(RUN, "prj")])
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    prev: RunState | None = None
    for minutes, status in enumerate(["RUNNING", "FAILED"]):
        cur = RunState(RUN, "prj", status, start + timedelta(minutes=minutes))
        event = detect(prev, cur, terminal=TERMINAL)
        assert store.record_observation(cur, event, notifiers=["hook", "old"])
        prev = cur
    first, old, second, _ = store.pending_deliveries(limit=10)
    store.mark_retry(first.id, attempts=1, next_attempt_at=start, error="HTTP 503")
    store.mark_delivered(first.id)
    store.mark_dead(second.id, error="HTTP 500 \x1b[2J boom", attempts=3)
    store.mark_dead(old.id, error="notifier 'old' is no longer configured")
    return store


def test_reading_commands_need_an_existing_state_and_create_none(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    for args in (["history", RUN], ["dead-letters"], ["redeliver", "--all"]):
        code, out, err = cli(capsys, *args, "-c", str(config))
        assert (code, out) == (1, ""), args
        assert err.strip() == f"no state file at {tmp_path / 'state.db'}"
    assert not (tmp_path / "state.db").exists()


def test_history_one_line_per_event_escaped_and_json(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    recorded(tmp_path / "state.db").close()
    code, out, err = cli(capsys, "history", RUN.upper(), "-c", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2026-11-27T10:00:00.000Z  RUNNING  run.status_changed  evt_")
    assert lines[0].endswith(
        "hook delivered after 2 attempts; "
        "old dead #2 after 0 attempts: notifier 'old' is no longer configured"
    )
    assert "RUNNING -> FAILED" in lines[1]
    assert "hook dead #3 after 3 attempts: HTTP 500 \\x1b[2J boom" in lines[1]
    assert "\x1b" not in out

    code, out, _ = cli(capsys, "history", RUN, "--json", "-c", str(config))
    body = json.loads(out)
    assert [e["data"]["status"] for e in body] == ["RUNNING", "FAILED"]
    # attempts is the number of tries made, as test-notify logs it: the successful one counts
    assert body[0]["deliveries"][0] == {
        "notifier": "hook",
        "state": "delivered",
        "attempts": 2,
        "last_error": "HTTP 503",
    }
    assert body[1]["deliveries"][0] == {
        "notifier": "hook",
        "state": "dead",
        "attempts": 3,
        "last_error": "HTTP 500 \x1b[2J boom",  # JSON keeps the value as stored
    }

    code, out, err = cli(
        capsys, "history", "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "-c", str(config)
    )
    assert (code, out) == (1, "")
    assert err.strip() == "error: run 0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9 is not in the registry"
    code, _, err = cli(capsys, "history", "run-\x1b", "-c", str(config))
    assert code == 2
    assert "\x1b" not in err


def test_dead_letters_table_json_and_filter(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    recorded(tmp_path / "state.db").close()
    code, out, err = cli(capsys, "dead-letters", "-c", str(config))
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == [
        "DELIVERY_ID",
        "NOTIFIER",
        "DEAD_AT",
        "ATTEMPTS",
        "RUN_UUID",
        "TYPE",
        "ERROR",
    ]
    assert [row.split()[:2] for row in rows] == [["3", "hook"], ["2", "old"]]
    assert "\\x1b[2J" in rows[0]
    code, out, _ = cli(capsys, "dead-letters", "--notifier", "old", "--json", "-c", str(config))
    (letter,) = json.loads(out)
    assert (letter["delivery_id"], letter["run_uuid"], letter["attempts"]) == (2, RUN, 0)
    code, out, _ = cli(capsys, "dead-letters", "--notifier", "chat", "-c", str(config))
    assert (code, out) == (0, "no dead letters\n")
    code, out, _ = cli(capsys, "dead-letters", "--notifier", "chat", "--json", "-c", str(config))
    assert (code, out) == (0, "[]\n")


def test_redeliver_choices_and_what_it_says(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    recorded(tmp_path / "state.db").close()
    for args, message in (
        ([], "give exactly one of --all, --notifier N or DELIVERY_IDs"),
        (["--all", "3"], "give exactly one of"),
        (["--notifier", "old"], "no notifier named 'old'; have: hook, chat"),
        (["x1"], "not a delivery id: 'x1'"),
        (["0"], "not a delivery id: '0'"),
    ):
        code, out, err = cli(capsys, "redeliver", *args, "-c", str(config))
        assert (code, out) == (2, ""), args
        assert message in err, (args, err)
    code, out, err = cli(capsys, "redeliver", "1", "2", "3", "-c", str(config))
    assert (code, out) == (0, "redelivered 1\n")
    assert err.splitlines() == [
        "warning: not a dead letter of a configured notifier: 1",
        "warning: not a dead letter of a configured notifier: 2",
    ]
    code, out, err = cli(capsys, "redeliver", "--all", "-c", str(config))
    assert (code, out) == (0, "redelivered 0\n")
    assert err.strip() == "warning: left dead (notifier not configured): old"
    with Store.open(tmp_path / "state.db") as store:
        history = store.run_history(RUN)
        assert history is not None
        again = history[1].deliveries[0]
        assert (again.notifier, again.state, again.attempts, again.last_error) == (
            "hook",
            "pending",
            0,
            None,
        )
        assert store.state_figures(now=datetime.now(UTC)).redeliveries == {"hook": 1}
