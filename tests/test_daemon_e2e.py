"""The daemon end to end: real ``omics-watcher simulate`` and ``omics-watcher run`` processes.

What "the daemon works" means here, each checked against the simulator's own record (its
``/_sim/timeline`` and ``/_sim/stats``), never against the daemon's opinion of itself:

- 150 runs are followed to the simulator's final status within the API budget (no signature
  failure, no throttling, at most 20 GetRunStatus in any 1 s window), and the event log
  tells each run's story once, in order, as a subsequence of what really happened;
- the same after a SIGKILL midway and a restart (no transition lost or repeated);
- ``/metrics`` parses and counts exactly the polls the simulator answered;
- probes: ``/healthz``, ``/readyz`` 503 before the first poll cycle and while draining;
  SIGTERM exits 0 within the grace period;
- the admin API (auth, track/untrack codes, bad bodies) and ``omics-watcher track`` while
  the daemon runs: a new run is polled within 2 s;
- SIGTERM with deliveries failing keeps them in the outbox; the next start delivers them.

Every process is started through ``support.Processes`` and killed in teardown; every wait is
bounded. Timings assume a slow 2-core machine: the simulator's default lifecycles end within
14 s of its start, and 150 runs at 20 requests/s take 7.5 s per poll cycle.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from notify_receiver import WebhookReceiver
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook
from support import (
    Daemon,
    Processes,
    Simulator,
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

from watcher.store import Store

TOKEN = "e2e-admin-token-7f3c9e1b5d2a4c6e8f0a"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TERMINAL = {"SUCCESS", "EXECUTOR_ERROR", "CANCELED"}  # the simulator's default outcomes
GRACE = 5.0
EXIT_SLACK = 2.5  # process start-up/teardown on a slow machine, on top of the grace period

INTERFACE_FAMILIES = {
    # family name as the parser reports it (counters lose _total) -> type, label names
    "omics_watcher_polls": ("counter", {"outcome"}),
    "omics_watcher_api_request_seconds": ("histogram", set()),
    "omics_watcher_throttled": ("counter", set()),
    "omics_watcher_tracked_runs": ("gauge", {"status"}),
    "omics_watcher_transitions": ("counter", set()),
    "omics_watcher_deliveries": ("counter", {"notifier", "outcome"}),
    "omics_watcher_outbox_pending": ("gauge", set()),
    "omics_watcher_oldest_pending_delivery_seconds": ("gauge", set()),
}


def setup_watch(
    tmp_path: Path,
    procs: Processes,
    sim_args: list[str],
    **config: Any,
) -> tuple[Simulator, Path, dict[str, str], int]:
    """A simulator, a config for a daemon on a free port, and the simulator's runs tracked
    with ``omics-watcher track -`` (as a user would, before the daemon starts)."""
    sim = start_simulator(procs, tmp_path / "sim", *sim_args)
    port = free_port()
    settings = daemon_config(tmp_path, sim=sim, port=port, admin_token=TOKEN, grace=GRACE, **config)
    path = write_config(tmp_path / "watcher.toml", settings)
    env = clean_env(tmp_path / "home")
    listing = "\n".join(sim.runs) + "\n"
    done = run_cli("track", "-c", str(path), "-", env=env, cwd=tmp_path, stdin=listing)
    assert done.returncode == 0, done.stderr
    return sim, path, env, port


def launch(procs: Processes, config: Path, env: dict[str, str], port: int, log: str) -> Daemon:
    return start_daemon(procs, config, port=port, env=env, admin_token=TOKEN, log_name=log)


def sigterm(daemon: Daemon) -> float:
    """SIGTERM; asserts exit 0 within the grace period (plus slack); returns the seconds."""
    started = time.monotonic()
    code = stop(daemon.proc, signal.SIGTERM, timeout=GRACE + 30)
    took = time.monotonic() - started
    assert code == 0, daemon.log.read_text(errors="replace")[-3000:]
    assert took <= GRACE + EXIT_SLACK, f"SIGTERM took {took:.1f} s (grace {GRACE} s)"
    return took


def wait_all_terminal(config: Path, env: dict[str, str], count: int, timeout: float) -> list[Any]:
    """``omics-watcher list --json`` until every one of ``count`` runs is terminal."""

    def done() -> list[Any] | None:
        rows = list_runs(config, env=env)
        if len(rows) == count and all(row["terminal"] for row in rows):
            return rows
        return None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"{count} runs terminal")


def all_events(daemon: Daemon) -> list[dict[str, Any]]:
    """The event log through the admin API, oldest first (it answers newest first)."""
    reply = daemon.admin("GET", "/v1/events?limit=1000")
    assert reply.status == 200, reply.text
    events = reply.json()
    assert len(events) < 1000, "more events than one page: the checks would be partial"
    return list(reversed(events))


def settled_events(daemon: Daemon) -> list[dict[str, Any]]:
    """The event log once no failure waits for its details: a failure's event is recorded at
    once with ``failure`` null and completed (same id) when enrichment stores them, so a log
    read right after the last run finished may still hold one being completed."""

    def settled() -> list[dict[str, Any]] | None:
        events = all_events(daemon)
        waiting = [
            e
            for e in events
            if e["type"] == "run.status_changed"
            and e["data"]["status"] == "EXECUTOR_ERROR"
            and e["data"].get("failure") is None
        ]
        return None if waiting else events

    return wait_for(settled, timeout=30, interval=0.2, what="every failure's details stored")


def check_event_log(events: list[dict[str, Any]], truth: dict[str, list[str]]) -> None:
    """No transition twice; each run's chain links up and follows what really happened."""
    changes = [e for e in events if e["type"] == "run.status_changed"]
    assert len({e["id"] for e in events}) == len(events), "an event id appears twice"
    keys = Counter(
        (e["data"]["run_uuid"], e["data"]["previous_status"], e["data"]["status"]) for e in changes
    )
    repeated = [key for key, n in keys.items() if n > 1]
    assert not repeated, f"transitions recorded twice: {repeated[:5]}"
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in changes:
        chains[event["data"]["run_uuid"]].append(event["data"])
    assert set(chains) == set(truth)
    for run, chain in chains.items():
        assert chain[0]["previous_status"] is None, (run, chain[0])
        for before, after in itertools.pairwise(chain):
            assert after["previous_status"] == before["status"], (run, before, after)
        assert chain[-1]["terminal"] is True
        assert chain[-1]["status"] == truth[run][-1]
        assert all(not data["terminal"] for data in chain[:-1])
        # What the daemon saw is a subsequence of the run's real history (it may miss a
        # status that lasted less than a poll interval, never invent or reorder one).
        real = iter(truth[run])
        seen = [data["status"] for data in chain]
        assert all(status in real for status in seen), (run, seen, truth[run])
        # Failure details only on a transition into a failing status.
        for data in chain:
            if data["status"] == "EXECUTOR_ERROR":
                assert isinstance(data["failure"], dict), data
                assert set(data["failure"]) >= {"task", "message", "stderr_tail"}
            elif data["status"] != "CANCELED":
                assert data.get("failure") is None, data


def check_budget(sim: Simulator) -> dict[str, Any]:
    stats = sim.stats()
    assert stats["signature_failures"] == 0
    assert stats["auth_failures"] == 0
    assert stats["throttled_total"] == 0
    assert stats["max_window_arrivals"]["GetRunStatus"] <= 20, stats["max_window_arrivals"]
    return stats


def metric_families(daemon: Daemon) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(daemon.metrics())}


def metric_value(daemon: Daemon, name: str) -> float:
    family = metric_families(daemon)[name]
    return float(sum(sample.value for sample in family.samples))


def polls_counted(families: dict[str, Any]) -> float:
    return float(
        sum(s.value for s in families["omics_watcher_polls"].samples if s.name.endswith("_total"))
    )


def check_final_statuses(sim: Simulator, rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Every run ended where the simulator says it did; returns the simulator's histories."""
    truth = sim.statuses()
    assert {row["run_uuid"] for row in rows} == set(sim.runs) == set(truth)
    wrong = {
        row["run_uuid"]: (row["status"], truth[row["run_uuid"]])
        for row in rows
        if row["status"] != truth[row["run_uuid"]][-1]
    }
    assert not wrong, wrong
    assert all(row["last_polled_at"] is not None for row in rows)
    return truth


def check_metrics(daemon: Daemon, sim: Simulator, truth: dict[str, list[str]]) -> None:
    """Every family of interface.md, with its labels; the counts agree with the simulator.

    Call once every run is terminal: nothing is in flight then, so the daemon's poll count
    must equal the GetRunStatus requests the simulator saw exactly (tolerance 0). While runs
    are active the simulator may be ahead by the polls in flight, never behind.
    """
    stats = sim.stats()
    families = metric_families(daemon)
    for name, (kind, labels) in INTERFACE_FAMILIES.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, (name, families[name].type)
        for sample in families[name].samples:
            assert labels <= set(sample.labels), (name, sample)
    assert polls_counted(families) == stats["requests"]["GetRunStatus"]
    outcomes = {s.labels["outcome"] for s in families["omics_watcher_polls"].samples}
    assert outcomes <= {"ok", "changed"}, outcomes  # no fault was injected
    runs_gauge = {
        s.labels["status"]: s.value for s in families["omics_watcher_tracked_runs"].samples
    }
    assert runs_gauge == dict(Counter(history[-1] for history in truth.values()))
    status_requests = [
        s.value
        for s in families["omics_watcher_api_request_seconds"].samples
        if s.name.endswith("_count") and s.labels.get("action") == "GetRunStatus"
    ]
    assert status_requests == [stats["requests"]["GetRunStatus"]]
    assert metric_value(daemon, "omics_watcher_throttled") == 0


def test_150_runs_reach_the_simulators_final_status_with_and_without_a_sigkill_midway(
    tmp_path: Path, procs: Processes
) -> None:
    """Two independent watches side by side (each its own simulator, daemon and state),
    since both wait on the same 14 s lifecycles: "plain" runs undisturbed and is checked
    against /metrics too; "crash" is SIGKILLed midway and restarted on the same state."""
    plain_sim, plain_config, plain_env, plain_port = setup_watch(
        tmp_path / "plain", procs, ["--runs", "150", "--seed", "11"]
    )
    crash_sim, crash_config, crash_env, crash_port = setup_watch(
        tmp_path / "crash", procs, ["--runs", "150", "--seed", "12"]
    )
    plain = launch(procs, plain_config, plain_env, plain_port, "daemon.log")
    crash = launch(procs, crash_config, crash_env, crash_port, "daemon-1.log")
    plain.wait_ready(timeout=30)
    crash.wait_ready(timeout=30)

    # Midway: every run seen once and some have moved on; then SIGKILL, and start again.
    # (A count, not a time: on a loaded machine the first cycle alone may take 20 s.)
    recorded = wait_for(
        lambda: (n := len(crash.admin("GET", "/v1/events?limit=1000").json())) >= 170 and n,
        timeout=60,
        what="170 events recorded",
    )
    crash.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert crash.proc.wait(timeout=10) == -signal.SIGKILL
    terminal_before = sum(r["terminal"] for r in list_runs(crash_config, env=crash_env))
    assert terminal_before < 150, "the kill came too late to test anything"
    # A new process cannot know what the killed one sent in its last second; restarting
    # at least 1 s later (systemd's RestartSec, a pod's restart) keeps the budget checkable.
    time.sleep(max(0.0, killed_at + 1.0 - time.monotonic()))
    crash = launch(procs, crash_config, crash_env, crash_port, "daemon-2.log")
    crash.wait_ready(timeout=30)

    # A poll is counted after its answer arrived, so mid-run the daemon's count can never
    # be ahead of the simulator's (ours read first, then theirs).
    mid_polls = polls_counted(metric_families(plain))
    assert 0 < mid_polls <= plain_sim.stats()["requests"]["GetRunStatus"]

    plain_truth = check_final_statuses(
        plain_sim, wait_all_terminal(plain_config, plain_env, 150, timeout=60)
    )
    crash_truth = check_final_statuses(
        crash_sim, wait_all_terminal(crash_config, crash_env, 150, timeout=60)
    )
    for sim in (plain_sim, crash_sim):
        check_budget(sim)
    check_metrics(plain, plain_sim, plain_truth)
    check_event_log(settled_events(plain), plain_truth)
    crash_events = settled_events(crash)
    assert len(crash_events) >= recorded
    check_event_log(crash_events, crash_truth)
    sigterm(plain)
    sigterm(crash)


def test_probes_readiness_and_sigterm_drain(tmp_path: Path, procs: Processes) -> None:
    # Slow answers make the first poll cycle (and later, in-flight polls at SIGTERM) last
    # a request timeout: long enough to watch /readyz say 503 without racing it.
    sim, config, env, port = setup_watch(
        tmp_path,
        procs,
        ["--runs", "10", "--seed", "13"],
        polling={"interval_seconds": 1, "request_timeout_seconds": 3},
    )
    sim.post("/_sim/faults", {"rate": 1.0, "kinds": ["slow"]})
    daemon = launch(procs, config, env, port, "daemon.log")
    health = daemon.wait_listening()
    assert health.status == 200
    assert health.json() == {"status": "ok"}
    ready = daemon.probe("/readyz")
    assert ready is not None
    assert ready.status == 503, ready.text
    assert ready.json()["reason"] == "starting"

    sim.post("/_sim/faults", {"rate": 0.0})
    daemon.wait_ready(timeout=20)
    healthz = daemon.probe("/healthz")
    assert healthz is not None
    assert healthz.status == 200

    # Drain: put a slow poll in flight for every run, then SIGTERM and watch the probes.
    slow_before = sim.stats()["faults"].get("slow", 0)
    sim.post("/_sim/faults", {"rate": 1.0, "kinds": ["slow"]})
    wait_for(
        lambda: sim.stats()["faults"].get("slow", 0) >= slow_before + 5,
        timeout=10,
        what="slow polls in flight",
    )
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    answers = []
    while daemon.proc.poll() is None and time.monotonic() - started < GRACE + 10:
        reply = daemon.probe("/readyz")
        if reply is not None:
            answers.append((reply.status, reply.json().get("reason")))
        time.sleep(0.05)
    code = daemon.proc.wait(timeout=30)
    took = time.monotonic() - started
    assert code == 0, daemon.log.read_text(errors="replace")[-3000:]
    assert took <= GRACE + EXIT_SLACK, took
    # The very first probe may beat the signal handler; once 503, never ready again.
    after = answers[next((i for i, a in enumerate(answers) if a[0] == 503), len(answers)) :]
    assert after, f"no 503 while draining; answers: {answers}"
    assert all(a == (503, "draining") for a in after), answers
    names = [record.get("event") for record in daemon.logs()]
    assert "daemon_stopping" in names
    assert "daemon_stopped" in names


def test_admin_api_and_runs_tracked_while_running_are_polled_within_2s(
    tmp_path: Path, procs: Processes
) -> None:
    sim, config, env, port = setup_watch(tmp_path, procs, ["--runs", "2", "--seed", "14"])
    daemon = launch(procs, config, env, port, "daemon.log")
    daemon.wait_ready(timeout=30)
    long_run = {"durations": [60, 60, 60]}

    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
        for method, path in (("GET", "/v1/runs"), ("GET", "/v1/events"), ("POST", "/v1/runs")):
            reply = daemon.request(
                method, path, headers=headers, body={} if method == "POST" else None
            )
            assert reply.status == 401, (method, path, headers, reply.status)
            assert TOKEN not in reply.text

    # POST /v1/runs: 201, polled within 2 s, then 200 when already tracked.
    new = sim.post("/_sim/runs", long_run)["run_uuid"]
    body = {"run_uuid": new.upper(), "labels": {"team": "genomics"}}
    reply = daemon.admin("POST", "/v1/runs", body=body)
    tracked_at = time.monotonic()
    assert reply.status == 201, reply.text
    assert reply.json()["run_uuid"] == new
    wait_for(lambda: sim.stats()["polls"].get(new, 0) >= 1, timeout=5, interval=0.05, what="poll")
    assert time.monotonic() - tracked_at <= 2.0
    reply = daemon.admin("POST", "/v1/runs", body={"run_uuid": new})
    assert reply.status == 200, reply.text
    listed = {r["run_uuid"]: r for r in daemon.admin("GET", "/v1/runs?limit=1000").json()["runs"]}
    assert listed[new]["labels"] == {"team": "genomics"}
    assert set(sim.runs) <= set(listed)

    bad: bytes | dict[str, Any]
    for bad in (
        b"not json",
        b"[]",
        {"run_uuid": "not-a-uuid"},
        {"labels": {}},
        {"run_uuid": new, "labels": {"team": 7}},
        {"run_uuid": new, "surprise": True},
    ):
        reply = daemon.admin("POST", "/v1/runs", body=bad)
        assert reply.status == 400, (bad, reply.status, reply.text)
        assert reply.json()["error"]

    # DELETE: 204, then 404; the run is no longer polled.
    reply = daemon.admin("DELETE", f"/v1/runs/{new}")
    assert reply.status == 204, reply.text
    assert daemon.admin("DELETE", f"/v1/runs/{new}").status == 404
    listed_after = daemon.admin("GET", "/v1/runs?limit=1000").json()["runs"]
    assert new not in {r["run_uuid"] for r in listed_after}
    # The scheduler reads registry changes every second; a poll already due may still land.
    time.sleep(1.5)
    polls_after_delete = sim.stats()["polls"].get(new, 0)
    deleted_at = time.monotonic()

    # `omics-watcher track` from another process while the daemon runs.
    other = sim.post("/_sim/runs", long_run)["run_uuid"]
    done = run_cli("track", "-c", str(config), other, env=env, cwd=tmp_path)
    tracked_at = time.monotonic()
    assert done.returncode == 0, done.stderr
    wait_for(lambda: sim.stats()["polls"].get(other, 0) >= 1, timeout=5, interval=0.05, what="poll")
    assert time.monotonic() - tracked_at <= 2.0
    row = wait_for(
        lambda: next(
            (r for r in list_runs(config, env=env) if r["run_uuid"] == other and r["status"]), None
        ),
        timeout=10,
        what="its first status in the registry",
    )
    assert row["status"] == "QUEUED"

    # With an interval of 1 s the untracked run would have had 2 more polls by now.
    wait_for(lambda: time.monotonic() - deleted_at >= 2.5, timeout=5, what="2.5 s")
    assert sim.stats()["polls"].get(new, 0) == polls_after_delete
    sigterm(daemon)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A signed-webhook receiver refusing every delivery (503) until told otherwise."""
    with WebhookReceiver(WEBHOOK_SECRET, status=503) as hook:
        yield hook


def test_sigterm_keeps_failing_deliveries_and_the_next_start_delivers_them(
    tmp_path: Path, procs: Processes, receiver: WebhookReceiver
) -> None:
    notifier = {"name": "hook", "type": "webhook", "url": receiver.url, "secret": WEBHOOK_SECRET}
    _sim, config, env, port = setup_watch(
        tmp_path, procs, ["--runs", "4", "--seed", "15"], notifiers=[notifier]
    )
    daemon = launch(procs, config, env, port, "daemon-1.log")
    daemon.wait_ready(timeout=30)

    def retried() -> bool:
        ids = Counter(hit.webhook_id for hit in receiver.hits())
        return len(ids) >= 4 and max(ids.values()) >= 2

    wait_for(retried, timeout=20, what="4 events sent, one of them retried")
    pending_seen = metric_value(daemon, "omics_watcher_outbox_pending")
    assert pending_seen >= 4
    assert metric_value(daemon, "omics_watcher_oldest_pending_delivery_seconds") > 0
    sigterm(daemon)

    with Store.open(tmp_path / "state.db") as store:
        pending = store.pending_deliveries(limit=1000)
    assert len(pending) >= pending_seen
    assert {d.notifier for d in pending} == {"hook"}
    kept = {d.event.id for d in pending}
    assert all(hit.answered == 503 for hit in receiver.hits())

    receiver.set_status(204)
    daemon = launch(procs, config, env, port, "daemon-2.log")
    daemon.wait_ready(timeout=30)

    def delivered() -> set[str]:
        return {hit.webhook_id for hit in receiver.hits() if hit.answered == 204}

    wait_for(lambda: kept <= delivered(), timeout=40, what="the kept deliveries to arrive")
    for hit in receiver.hits():
        event = hit.json()
        assert hit.webhook_id == event["id"]
        Webhook(WEBHOOK_SECRET).verify(hit.body, dict(hit.headers))  # signed, signature holds
        assert event["type"] == "run.status_changed"
    wait_for(
        lambda: metric_value(daemon, "omics_watcher_outbox_pending") == 0 or None,
        timeout=40,
        what="an empty outbox",
    )
    sigterm(daemon)
    with Store.open(tmp_path / "state.db") as store:
        assert not {d.event.id for d in store.pending_deliveries(limit=1000)} & kept
