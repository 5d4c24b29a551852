"""What ``omics-watcher run`` prints on a terminal, and that JSON logs stay as they were.

On a pseudo-terminal (the daemon as a subprocess, ``[logging] format = "auto"``): one line per
event, status first, in the demo's format; one summary line for a webhook that keeps failing
(not one per retry) and one when its deliveries are dead-lettered; every line short. Off a
terminal the same daemon writes only JSON lines, with the keys it always had.
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pty_support import PtyProcess
from support import (
    WATCHER,
    clean_env,
    daemon_config,
    free_port,
    processes,
    run_cli,
    start_daemon,
    start_simulator,
    stop,
    wait_for,
    write_config,
)

from watcher.events import Event
from watcher.service.console import REPEAT_SECONDS, ConsoleRenderer, event_line
from watcher.service.logs import StdlibBridge, configure

EVENT_LINE = re.compile(r"^\d\d:\d\d:\d\d  run [0-9a-f]{8}  +(\S+) → (\S+)", re.MULTILINE)


def _drop_bridges() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)


def test_event_line_is_the_demos_format_with_the_status_first() -> None:
    event = Event(
        type="run.status_changed",
        id="evt_1",
        timestamp=datetime(2026, 11, 27, 10, tzinfo=UTC),
        data={
            "run_uuid": "1e2e5bc8-a016-4668-b2e3-168a175d6f29",
            "previous_status": "RUNNING",
            "status": "SUCCESS",
            "terminal": True,
        },
    )
    assert event_line(event, "10:00:01") == (
        "10:00:01  run 1e2e5bc8          RUNNING → SUCCESS         ✅"
    )
    odd = Event(
        type="run.status_changed",
        id="evt_2",
        timestamp=datetime(2026, 11, 27, 10, tzinfo=UTC),
        data={"run_uuid": "1e2e5bc8-x", "previous_status": None, "status": "\x1b[2JX"},
    )
    assert event_line(odd, "10:00:01") == "10:00:01  run 1e2e5bc8                · → \\x1b[2JX"


def test_delivery_problems_are_summarised_not_a_line_per_retry() -> None:
    clock = [0.0]
    render = ConsoleRenderer(clock=lambda: clock[0])
    stamp = "2026-11-27T10:00:00.000000Z"

    def line(event: str, **fields: object) -> str | None:
        try:
            return render(None, "info", {"event": event, "timestamp": stamp, **fields})
        except structlog.DropEvent:
            return None

    shown = [
        line("notify_retry", notifier="ops", delivery_id=d, error="HTTP 503")
        for _ in range(4)
        for d in (1, 2, 3)
    ]
    assert [s for s in shown if s] == [
        "10:00:00  delivery to ops failing: HTTP 503 (1 pending, retrying)"
    ]
    clock[0] = REPEAT_SECONDS + 1
    assert line("notify_retry", notifier="ops", delivery_id=1, error="HTTP 503") == (
        "10:00:00  delivery to ops still failing: HTTP 503 (3 pending, retrying)"
    )
    assert line("notify_retry", notifier="ops", delivery_id=1, error="HTTP 502") == (
        "10:00:00  delivery to ops failing: HTTP 502 (3 pending, retrying)"
    )
    first_dead = line("notify_dead_lettered", notifier="ops", delivery_id=1, error="gave up")
    assert first_dead is not None
    assert first_dead.startswith("10:00:00  delivery to ops: 1 dead-lettered (gave up)")
    assert line("notify_dead_lettered", notifier="ops", delivery_id=2, error="gave up") is None
    assert line("notify_delivered", notifier="ops", delivery_id=3) == (
        "10:00:00  delivery to ops recovered: delivering again; 1 more dead-lettered meanwhile"
    )
    assert line("notify_delivered", notifier="ops", delivery_id=4) is None  # routine
    # Another notifier's problem is its own.
    assert line("notify_failed", notifier="chat", error="HTTP 400", permanent=True) == (
        "10:00:00  delivery to chat refused: HTTP 400 (not retried; see dead-letters)"
    )
    assert line("notify_dead_lettered", notifier="chat", delivery_id=9, error="HTTP 400") is None
    silenced = [line("notify_silenced", notifier="ops", silence_id=7, run_uuid=r) for r in "ab"]
    assert silenced == [
        "10:00:00  delivery to ops: silence 7 applies (events recorded, not sent)",
        None,
    ]
    logged = line("notify_event", notifier="log", title="✅ SUCCESS · run 1e2e5bc8", body="x" * 900)
    assert logged == "10:00:00  log: ✅ SUCCESS · run 1e2e5bc8"
    long = line("notify_retry", notifier="slow", delivery_id=1, error="e" * 500)
    assert long is not None
    assert len(long) <= 160


def test_other_lines_are_short_and_escaped() -> None:
    out = io.StringIO()
    configure(fmt="console", stream=out)
    try:
        structlog.get_logger("t").warning(
            "poll_failed", host="127.0.0.1:1", error="x" * 400, label="a\x1bb"
        )
    finally:
        structlog.reset_defaults()
        _drop_bridges()
    line = out.getvalue().rstrip("\n")
    assert "\n" not in line
    assert len(line) <= 160
    assert re.match(r"^\d\d:\d\d:\d\d  warning poll_failed host=127\.0\.0\.1:1 ", line), line
    assert "\x1b" not in line


def test_json_logs_are_unchanged_off_a_terminal() -> None:
    out = io.StringIO()  # not a TTY: "auto" means JSON
    configure(fmt="auto", stream=out)
    try:
        structlog.get_logger("t").warning("notify_retry", notifier="ops", error="HTTP 503")
    finally:
        structlog.reset_defaults()
        _drop_bridges()
    record = json.loads(out.getvalue())
    assert set(record) == {"event", "level", "timestamp", "notifier", "error"}
    assert (record["event"], record["level"], record["error"]) == (
        "notify_retry",
        "warning",
        "HTTP 503",
    )


def test_run_on_a_terminal_prints_events_and_one_line_per_delivery_problem(
    tmp_path: Path,
) -> None:
    dead_port = free_port()  # nothing listens there: every delivery fails
    with processes() as procs:
        sim = start_simulator(procs, tmp_path / "sim", "--runs", "3", "--seed", "5")
        config = daemon_config(
            tmp_path,
            sim=sim,
            port=free_port(),
            logging={"format": "auto", "level": "info"},
            notifiers=[
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": f"http://127.0.0.1:{dead_port}/hook",
                    "max_age_seconds": 3,
                }
            ],
        )
        path = write_config(tmp_path / "omics-watcher.toml", config)
        env = clean_env(tmp_path, {"OMICS_WATCHER_LOGGING__FORMAT": "auto"})
        done = run_cli("track", "-c", str(path), *sim.runs, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        shown = {run[:8] for run in sim.runs}

        daemon = PtyProcess([*WATCHER, "run", "-c", str(path)], env=env, cwd=tmp_path)
        try:
            daemon.read_until(
                lambda text: (
                    {m for m in re.findall(r"run ([0-9a-f]{8})  ", text)} >= shown
                    and "dead-lettered" in text
                ),
                timeout=90,
                what="an event line per run and a dead-letter summary",
            )
            assert daemon.stop() == 0
        finally:
            daemon.close()
        text = daemon.text
        lines = [line for line in text.splitlines() if line.strip()]
        assert not [line for line in lines if line.lstrip().startswith("{")], text
        assert all(len(line) <= 160 for line in lines), text
        events = EVENT_LINE.findall(text)
        assert {before for before, _ in events} >= {"·"}, text
        for line in lines:
            if " → " in line:
                assert line.index(" → ") < 50, line  # the status near the start
        failing = [line for line in lines if "delivery to hook failing:" in line]
        assert len(failing) == 1, text  # not one per retry
        assert re.search(r"\(\d+ pending, retrying\)", failing[0]), failing[0]
        assert "daemon_started" in text  # the other lines are still there, short

        # Off a terminal (a log file): JSON lines only, no line for people.
        plain = start_daemon(procs, path, port=free_port(), env=env, log_name="json.log")
        wait_for(
            lambda: any(r.get("event") == "notify_retry" for r in plain.logs()),
            timeout=60,
            what="a notify_retry JSON line",
        )
        assert stop(plain.proc, timeout=30) == 0
        raw = [line for line in plain.log.read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in raw]
        assert all({"event", "level", "timestamp"} <= set(r) for r in records)
        assert not [line for line in raw if "delivery to hook failing" in line]
