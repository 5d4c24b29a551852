"""The real daemon on PostgreSQL (issue 15): ``[state] url`` end to end.

A ``omics-watcher run`` process keeps its state in a fresh database of the test cluster
(``pg_url``), polls the simulator and delivers to a signed webhook receiver; runs are
tracked with ``omics-watcher track -`` against the same database. Checked against the
simulator's own record and the receiver's, never the daemon's opinion of itself: every run
reaches its real final status, every transition is recorded once (the event log's chains
follow what really happened), every event arrives once with one body and a valid signature,
the GetRunStatus budget holds, and no state file appears beside the config.
"""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from notify_receiver import WebhookReceiver
from support import (
    Processes,
    clean_env,
    daemon_config,
    free_port,
    list_runs,
    run_cli,
    start_daemon,
    start_simulator,
    stop,
    wait_for,
    write_config,
)
from test_daemon_e2e import all_events, check_budget, check_event_log, check_final_statuses

TOKEN = "pg-e2e-admin-token-3b9d7f1a5c2e4d6f8a0b"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RUNS = 30


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as receiver:
        yield receiver


def test_the_daemon_on_postgresql_records_each_transition_once_and_delivers_it(
    tmp_path: Path, procs: Processes, pg_url: str, hook: WebhookReceiver
) -> None:
    sim = start_simulator(procs, tmp_path / "sim", "--runs", str(RUNS), "--seed", "31")
    port = free_port()
    config = daemon_config(
        tmp_path,
        sim=sim,
        port=port,
        admin_token=TOKEN,
        notifiers=[{"name": "hook", "type": "webhook", "url": hook.url, "secret": SECRET}],
    )
    url_file = tmp_path / "state-url"
    url_file.write_text(pg_url + "\n", encoding="utf-8")
    config["state"] = {"url_file": str(url_file), "lease_seconds": 5}
    path = write_config(tmp_path / "watcher.toml", config)
    env = clean_env(tmp_path / "home")
    listing = "\n".join(sim.runs) + "\n"
    done = run_cli("track", "-c", str(path), "-", env=env, cwd=tmp_path, stdin=listing)
    assert done.returncode == 0, done.stderr

    daemon = start_daemon(procs, path, port=port, env=env, admin_token=TOKEN)
    daemon.wait_ready(timeout=60)

    def all_terminal() -> list[dict[str, object]] | None:
        rows = list_runs(path, env=env)
        return rows if len(rows) == RUNS and all(row["terminal"] for row in rows) else None

    rows = wait_for(all_terminal, timeout=90, interval=0.5, what=f"{RUNS} runs terminal")
    truth = check_final_statuses(sim, rows)

    # A failure's event is held (``failure`` still null) until its details are stored, and
    # only then delivered: read the log once everything in it has been delivered.
    def delivered() -> list[dict[str, Any]] | None:
        events = all_events(daemon)
        sent = {hit.webhook_id for hit in hook.accepted()}
        return events if {event["id"] for event in events} <= sent else None

    events = wait_for(delivered, timeout=60, interval=0.2, what="every recorded event delivered")
    check_event_log(events, truth)
    recorded = {event["id"] for event in events}
    assert stop(daemon.proc, signal.SIGTERM, timeout=60) == 0, daemon.log.read_text()[-3000:]

    bodies: dict[str, set[bytes]] = defaultdict(set)
    for hit in hook.hits():
        assert hit.verified, hit.error  # signed, and the signature holds
        bodies[hit.webhook_id].add(hit.body)
    assert set(bodies) == recorded  # nothing delivered that was not recorded
    assert all(len(sent) == 1 for sent in bodies.values()), "an event id with two bodies"
    assert {json.loads(next(iter(sent)))["id"] for sent in bodies.values()} == recorded
    check_budget(sim)
    assert not (tmp_path / "state.db").exists()
    assert pg_url not in daemon.log.read_text(errors="replace")
