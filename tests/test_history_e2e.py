"""History, dead letters and redelivery end to end: the real daemon (a subprocess) against the
simulator, delivering to signed webhook receivers, driven through the real CLI and admin API.

What issue 14 asks to see: a webhook receiver down long enough for its deliveries to be
dead-lettered (``max_age_seconds = 1``), then ``redeliver --all`` delivers every one with its
original event id (the receiver sees the same ``webhook-id``s it refused); ``history --json``
shows delivered, dead and pending deliveries; the admin endpoints' shapes and their 401
without the token.
"""

from __future__ import annotations

import base64
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
    clean_env,
    daemon_config,
    free_port,
    http,
    run_cli,
    start_daemon,
    start_simulator,
    tail,
    wait_for,
    write_config,
)

TOKEN = "admin-token-for-history-tests-0123"
SECRET = "whsec_" + base64.b64encode(bytes(range(41, 73))).decode()
RUNS = 3
QUICK = {"durations": [1.5, 1.5, 1.5], "kind": "finishing", "outcome": "SUCCESS"}


@pytest.fixture
def receivers() -> Iterator[list[WebhookReceiver]]:
    started: list[WebhookReceiver] = []
    yield started
    for receiver in started:
        receiver.close()


def cli_json(config: Path, env: dict[str, str], *args: str) -> Any:
    done = run_cli(*args, "--json", "-c", str(config), env=env, cwd=config.parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def redeliveries(daemon: Daemon) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(daemon.metrics()):
        for sample in family.samples:
            if sample.name == "omics_watcher_redeliveries_total":
                found[sample.labels["notifier"]] = sample.value
    return found


def test_dead_letters_are_redelivered_with_their_original_ids(
    tmp_path: Path, procs: Processes, receivers: list[WebhookReceiver]
) -> None:
    down = WebhookReceiver(SECRET).start()  # "hook": down until told otherwise
    down.set_status(503)
    never = WebhookReceiver(SECRET).start()  # "later": down all along, a long max_age
    never.set_status(503)
    receivers.extend([down, never])
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "0", "--seed", "14")
    runs = [sim.post("/_sim/runs", QUICK)["run_uuid"] for _ in range(RUNS)]
    port = free_port()
    hook = {"name": "hook", "type": "webhook", "url": down.url, "secret": SECRET}
    later = {"name": "later", "type": "webhook", "url": never.url, "secret": SECRET}
    config = write_config(
        tmp_path / "watcher.toml",
        daemon_config(
            tmp_path,
            sim=sim,
            port=port,
            admin_token=TOKEN,
            notifiers=[{**hook, "max_age_seconds": 1}, {**later, "max_age_seconds": 3600}],
        ),
    )
    env = clean_env(tmp_path)
    done = run_cli("track", "-c", str(config), *runs, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    daemon = start_daemon(procs, config, port=port, env=env, admin_token=TOKEN)
    daemon.wait_listening()

    def every_hook_delivery_dead() -> list[dict[str, Any]] | None:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited: {tail(daemon.log)}")
        histories = [cli_json(config, env, "history", run) for run in runs]
        finished = all(h and h[-1]["data"].get("terminal") for h in histories)
        events = [e for h in histories for e in h]
        hook = [d["state"] for e in events for d in e["deliveries"] if d["notifier"] == "hook"]
        return events if finished and set(hook) == {"dead"} else None

    events = wait_for(every_hook_delivery_dead, timeout=60, interval=0.5, what="dead letters")
    refused = {hit.webhook_id for hit in down.hits()}
    assert refused == {e["id"] for e in events}  # every event was tried, and refused

    # history --json: the events as delivered, each with its deliveries' states.
    first = cli_json(config, env, "history", runs[0])
    assert [e["data"]["run_uuid"] for e in first] == [runs[0]] * len(first)
    stamps = [e["timestamp"] for e in first]
    assert stamps == sorted(stamps)  # oldest first
    for event in first:
        assert set(event) == {"type", "id", "timestamp", "data", "deliveries"}
        by_name = {d["notifier"]: d for d in event["deliveries"]}
        assert set(by_name) == {"hook", "later"}
        assert set(by_name["hook"]) == {"notifier", "state", "attempts", "last_error"}
        assert by_name["hook"]["state"] == "dead"
        assert by_name["hook"]["attempts"] >= 1
        assert "503" in by_name["hook"]["last_error"]
        assert by_name["later"]["state"] == "pending"
    # The same history from the admin API; 404 for a run the registry does not have.
    reply = daemon.admin("GET", f"/v1/runs/{runs[0]}/events")
    assert reply.status == 200
    assert [e["id"] for e in reply.json()] == [e["id"] for e in first]
    unknown = "00000000-0000-4000-8000-000000000000"
    assert daemon.admin("GET", f"/v1/runs/{unknown}/events").status == 404
    missing = run_cli("history", "-c", str(config), unknown, env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert unknown in missing.stderr

    # dead-letters: the CLI and the admin API give the same array, in interface.md's keys.
    letters = cli_json(config, env, "dead-letters")
    assert daemon.admin("GET", "/v1/dead-letters?limit=1000").json() == letters
    assert cli_json(config, env, "dead-letters", "--notifier", "later") == []
    assert {letter["event_id"] for letter in letters} == refused
    assert {letter["notifier"] for letter in letters} == {"hook"}
    for letter in letters:
        assert set(letter) == {
            "delivery_id",
            "notifier",
            "event_id",
            "run_uuid",
            "type",
            "dead_at",
            "attempts",
            "last_error",
        }
    for method, path in (
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/redeliver"),
        ("GET", f"/v1/runs/{runs[0]}/events"),
    ):
        body = {"all": True} if method == "POST" else None
        assert http(method, daemon.url + path, body=body).status == 401

    # The receiver is back. One letter through the admin API, the rest with `redeliver --all`.
    down.set_status(204)
    one, *rest = letters
    reply = daemon.admin("POST", "/v1/dead-letters/redeliver", body={"ids": [one["delivery_id"]]})
    assert reply.status == 200
    assert reply.json() == {"redelivered": 1, "ids": [one["delivery_id"]]}
    wait_for(
        lambda: one["event_id"] in {hit.webhook_id for hit in down.accepted()},
        timeout=30,
        what="the letter redelivered through the admin API",
    )
    began = time.monotonic()
    done = run_cli("redeliver", "--all", "-c", str(config), env=env, cwd=tmp_path)
    ended = time.monotonic()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"redelivered {len(rest)}"

    def all_accepted() -> set[str] | None:
        accepted = {hit.webhook_id for hit in down.accepted()}
        return accepted if accepted >= refused else None

    accepted = wait_for(all_accepted, timeout=30, what="every dead letter delivered")
    times = sorted(h.at - began for h in down.accepted() if h.webhook_id != one["event_id"])
    print(
        f"redeliver --all: {len(rest)} letters; first delivered {times[0]:.2f} s, last "
        f"{times[-1]:.2f} s after the command started ({ended - began:.2f} s to run it)"
    )
    assert accepted == refused  # the same ids, nothing new
    assert all(hit.verified for hit in down.hits())

    after = cli_json(config, env, "history", runs[0])
    assert [e["id"] for e in after] == [e["id"] for e in first]
    for event in after:
        by_name = {d["notifier"]: d for d in event["deliveries"]}
        assert by_name["hook"]["state"] == "delivered"
        assert by_name["hook"]["last_error"] is None
        assert by_name["later"]["state"] == "pending"
    assert cli_json(config, env, "dead-letters") == []
    assert redeliveries(daemon) == {"hook": float(len(letters))}
    nothing = run_cli("redeliver", "--notifier", "hook", "-c", str(config), env=env, cwd=tmp_path)
    assert (nothing.returncode, nothing.stdout.strip()) == (0, "redelivered 0")
