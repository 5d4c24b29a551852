"""Silences end to end: ``omics-watcher simulate``, ``omics-watcher run`` as a subprocess, a
webhook receiver, and the silence added by ``omics-watcher silence add`` beside the daemon.

What a user sees: a silence on a label, added while the daemon runs, withholds the events of
the matching runs (recorded, listed by ``history`` as ``silenced``, counted in
``omics_watcher_deliveries_total{outcome="silenced"}``, never posted) while another run's events
are posted; once expired through the admin API, a matching run's events are posted again.

The 2 s rule is asserted as behaviour: the runs start only after the contract's 2 s have
passed since the command returned, and then none of the matching run's events may be sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from notify_receiver import WebhookReceiver
from prometheus_client.parser import text_string_to_metric_families
from support import (
    Daemon,
    Processes,
    Simulator,
    clean_env,
    daemon_config,
    free_port,
    run_cli,
    start_daemon,
    start_simulator,
    wait_for,
    write_config,
)

TOKEN = "e2e-silences-token-5d2a4c6e8f0a7f3c9e1b"
APPLY_BOUND = 2.0  # interface.md: a running daemon applies a silence change within 2 s
SHORT_RUN = {"durations": [0.5, 0.5, 1.0], "outcome": "SUCCESS"}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook endpoint (no signing secret) answering 204."""
    with WebhookReceiver(None) as hook:
        yield hook


def posted_runs(receiver: WebhookReceiver) -> list[str]:
    """The ``run_uuid`` of every event posted to ``receiver``, in arrival order."""
    return [hit.json()["data"].get("run_uuid", "") for hit in receiver.hits()]


def posted_statuses(receiver: WebhookReceiver, run_uuid: str) -> list[str]:
    """The statuses posted for ``run_uuid``, in arrival order."""
    events = [hit.json()["data"] for hit in receiver.hits()]
    return [data["status"] for data in events if data["run_uuid"] == run_uuid]


class Cli:
    """``omics-watcher COMMAND ... -c CONFIG`` as a user types it."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.config = config
        self.env = env

    def __call__(self, *args: str) -> str:
        done = run_cli(*args, "-c", str(self.config), env=self.env, cwd=self.config.parent)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def history(self, run_uuid: str) -> list[dict[str, Any]]:
        found = json.loads(self("history", run_uuid, "--json"))
        assert isinstance(found, list)
        return found


def start_run(sim: Simulator, cli: Cli, team: str) -> str:
    """A new short run in the simulator, tracked with the label ``team``."""
    run_uuid = str(sim.post("/_sim/runs", SHORT_RUN)["run_uuid"])
    cli("track", "--label", f"team={team}", run_uuid)
    return run_uuid


def settled(cli: Cli, run_uuid: str) -> list[dict[str, Any]] | None:
    """The run's history once it reached SUCCESS and none of its deliveries is pending."""
    history = cli.history(run_uuid)
    states = [d["state"] for event in history for d in event["deliveries"]]
    reached = any(event["data"].get("status") == "SUCCESS" for event in history)
    return history if reached and "pending" not in states else None


def silenced_count(daemon: Daemon) -> float:
    for family in text_string_to_metric_families(daemon.metrics()):
        for sample in family.samples:
            if sample.name == "omics_watcher_deliveries_total" and sample.labels == {
                "notifier": "hook",
                "outcome": "silenced",
            }:
                return sample.value
    return 0.0


def wait_past_the_bound(since: float) -> None:
    wait_for(
        lambda: time.monotonic() - since > APPLY_BOUND + 0.5,
        timeout=10,
        what="the 2 s a silence change takes to apply",
    )


def test_a_label_silence_added_by_the_cli_withholds_matching_runs_until_expired(
    tmp_path: Path, procs: Processes, receiver: WebhookReceiver
) -> None:
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "1")
    port = free_port()
    notifier = {"name": "hook", "type": "webhook", "url": receiver.url}
    settings = daemon_config(tmp_path, sim=sim, port=port, admin_token=TOKEN, notifiers=[notifier])
    config = write_config(tmp_path / "watcher.toml", settings)
    env = clean_env(tmp_path / "home")
    cli = Cli(config, env)
    daemon = start_daemon(procs, config, port=port, env=env, admin_token=TOKEN)
    daemon.wait_ready(timeout=30)

    silence_id = int(cli("silence", "add", "--match", "label.team=quiet", "--for", "1h"))
    wait_past_the_bound(time.monotonic())
    quiet = start_run(sim, cli, "quiet")
    loud = start_run(sim, cli, "loud")

    wait_for(
        lambda: "SUCCESS" in posted_statuses(receiver, loud), timeout=30, what="loud run posted"
    )
    history = wait_for(lambda: settled(cli, quiet), timeout=30, what="the quiet run settled")
    assert quiet not in posted_runs(receiver)  # never sent ...
    assert [event["data"]["status"] for event in history][-1] == "SUCCESS"  # ... but recorded
    for event in history:
        assert [(d["notifier"], d["state"]) for d in event["deliveries"]] == [("hook", "silenced")]
    events = daemon.admin("GET", f"/v1/events?run_uuid={quiet}").json()
    assert {e["id"] for e in events} == {e["id"] for e in history}
    assert silenced_count(daemon) == len(history)

    reply = daemon.admin("DELETE", f"/v1/silences/{silence_id}")
    assert reply.status == 204
    listed = json.loads(cli("silence", "list", "--json"))
    assert [(s["id"], s["state"]) for s in listed] == [(silence_id, "expired")]
    wait_past_the_bound(time.monotonic())
    again = start_run(sim, cli, "quiet")
    wait_for(lambda: "SUCCESS" in posted_statuses(receiver, again), timeout=30, what="posted again")
    history = wait_for(lambda: settled(cli, again), timeout=30, what="the run settled")
    states = {d["state"] for event in history for d in event["deliveries"]}
    assert states == {"delivered"}
    assert quiet not in posted_runs(receiver)
