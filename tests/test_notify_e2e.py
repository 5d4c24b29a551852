"""Notifications end to end: the real daemon (a subprocess) against the simulator, delivering
to signed webhook receivers in this process.

What issue 4 asks to see, checked against the simulator's own timeline (the truth) and the
watcher's own record (``GET /v1/events``):

- 150 runs, a signed webhook whose receiver answers 503 for its first 10 s: every run's
  terminal status arrives; every request verifies with ``standardwebhooks``; one body per
  event id; one id per transition; only transitions that happened, in order per run; the
  outage is bridged (retries seen, everything delivered well within a minute of its end);
- the same with the daemon SIGKILLed midway and restarted on the same state file (the same
  id may arrive twice, at-least-once; never two ids for one transition);
- SIGHUP adds a notifier without losing the deliveries queued for the old one; a broken
  config on SIGHUP logs ``reload_failed`` and the daemon keeps delivering;
- ``omics-watcher test-notify NAME``: 0 once delivered (signed), 1 on a 4xx, 2 for an
  unknown name.

Everything listens on 127.0.0.1; every wait is bounded; every process is killed in teardown.
Receivers run in a thread (:mod:`notify_receiver`) because these tests are synchronous.
"""

from __future__ import annotations

import base64
import itertools
import json
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from notify_receiver import Hit, WebhookReceiver
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
    stop,
    tail,
    wait_for,
    write_config,
)

RUNS = 150
OUTAGE_SECONDS = 10.0
BRIDGE_BOUND_SECONDS = 60.0  # generous: the schedule bridges a 10 s outage in about 20 s
TOKEN = "admin-token-for-tests-0123456789"
SECRET = "whsec_" + base64.b64encode(bytes(range(7, 39))).decode()
SECRET_B = "whsec_" + base64.b64encode(bytes(range(101, 133))).decode()
TERMINAL = frozenset(
    {
        "SUCCESS",
        "COMPLETE",
        "EXECUTOR_ERROR",
        "SYSTEM_ERROR",
        "COMPLETE_ERROR",
        "CANCELED",
        "FAILED",
        "PREEMPTED",
    }
)

T = TypeVar("T")
Transition = tuple[str, str | None, str]  # (run_uuid, previous_status, status)


# -- fixtures and small helpers -------------------------------------------------------------


@pytest.fixture
def receivers() -> Iterator[list[WebhookReceiver]]:
    """Receivers appended here are closed in teardown."""
    started: list[WebhookReceiver] = []
    yield started
    for receiver in started:
        receiver.close()


def webhook(name: str, receiver: WebhookReceiver, secret: str) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": receiver.url, "secret": secret}


def config_for(
    tmp_path: Path, sim: Simulator | None, port: int, notifiers: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    return daemon_config(
        tmp_path,
        sim=sim,
        port=port,
        admin_token=TOKEN,
        interval_seconds=1,
        notifiers=list(notifiers),
    )


def track(config: Path, env: dict[str, str], uuids: Sequence[str]) -> None:
    done = run_cli(
        "track", "-c", str(config), "-", env=env, cwd=config.parent, stdin="\n".join(uuids)
    )
    assert done.returncode == 0, done.stderr


def launch(procs: Processes, config: Path, port: int, env: dict[str, str], log: str) -> Daemon:
    daemon = start_daemon(procs, config, port=port, env=env, admin_token=TOKEN, log_name=log)
    daemon.wait_listening()
    return daemon


def outbox_pending(daemon: Daemon) -> int | None:
    """``omics_watcher_outbox_pending`` from /metrics, ``None`` when it does not answer."""
    reply = daemon.probe("/metrics")
    if reply is None or reply.status != 200:
        return None
    for line in reply.text.splitlines():
        if line.startswith("omics_watcher_outbox_pending "):
            return int(float(line.split()[1]))
    raise AssertionError("/metrics has no omics_watcher_outbox_pending")


def delivery_seconds_count(daemon: Daemon, notifier: str) -> float:
    """How many rows ``omics_watcher_delivery_seconds`` observed for ``notifier``."""
    reply = daemon.probe("/metrics")
    assert reply is not None
    assert reply.status == 200
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if (
                sample.name == "omics_watcher_delivery_seconds_count"
                and sample.labels.get("notifier") == notifier
            ):
                return sample.value
    raise AssertionError(f"/metrics has no omics_watcher_delivery_seconds for {notifier}")


def recorded_events(daemon: Daemon) -> list[dict[str, Any]]:
    """Every event the watcher recorded (its own journal), oldest first."""
    reply = daemon.admin("GET", "/v1/events?limit=1000")
    assert reply.status == 200, reply.text
    events = list(reversed(reply.json()))
    assert len(events) < 1000, "more events than one page: raise the limit"
    return events


def dead_letters(daemon: Daemon) -> list[Any]:
    reply = daemon.admin("GET", "/v1/dead-letters?limit=1000")
    assert reply.status == 200, reply.text
    return list(reply.json())


def log_lines(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    return [record for record in daemon.logs() if record.get("event") == event]


def alive(daemon: Daemon) -> None:
    if daemon.proc.poll() is not None:
        raise AssertionError(f"daemon exited {daemon.proc.returncode}: {tail(daemon.log)}")


def watching(daemon: Daemon, probe: Callable[[], T]) -> Callable[[], T | None]:
    """``probe`` for :func:`wait_for`, failing at once if the daemon died; falsy is "not yet"."""

    def check() -> T | None:
        alive(daemon)
        return probe() or None

    return check


def assert_no_secret_logged(*logs: Path) -> None:
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in (SECRET, SECRET_B):
            assert secret.removeprefix("whsec_") not in text, f"a signing secret is in {log}"


def final_statuses(sim: Simulator) -> dict[str, list[str]] | None:
    """Every run's status sequence once all runs are terminal, else ``None``."""
    sequences = sim.statuses()
    if len(sequences) < len(sim.runs) or any(s[-1] not in TERMINAL for s in sequences.values()):
        return None
    return sequences


def wait_all_delivered(
    daemon: Daemon, sim: Simulator, receiver: WebhookReceiver, *, timeout: float
) -> dict[str, list[str]]:
    """Until every run is terminal, its terminal status was accepted by ``receiver`` and the
    outbox is empty; returns the simulator's status sequences."""

    def done() -> dict[str, list[str]] | None:
        alive(daemon)
        sequences = final_statuses(sim)
        if sequences is None:
            return None
        got = {
            (hit.json()["data"]["run_uuid"], hit.json()["data"]["status"])
            for hit in receiver.accepted()
        }
        if any((run, seq[-1]) not in got for run, seq in sequences.items()):
            return None
        return sequences if outbox_pending(daemon) == 0 else None

    return wait_for(done, timeout=timeout, interval=0.5, what="every terminal status delivered")


def is_subsequence(part: Sequence[Any], whole: Sequence[Any]) -> bool:
    items = iter(whole)
    return all(any(x == y for y in items) for x in part)


def check_deliveries(
    receiver: WebhookReceiver,
    truth: dict[str, list[str]],
    recorded: list[dict[str, Any]],
    *,
    repeats_allowed: bool,
) -> dict[str, Any]:
    """The delivery guarantees, for one receiver that got every event (no routes).

    ``truth`` is each run's status sequence from the simulator; ``recorded`` the watcher's
    journal. Returns a few numbers for the test to report.
    """
    hits = receiver.hits()
    unverified = [(h.webhook_id, h.error) for h in hits if not h.verified]
    assert not unverified, f"requests that failed standardwebhooks verification: {unverified[:5]}"

    bodies: dict[str, set[bytes]] = defaultdict(set)
    ids_of: dict[Transition, set[str]] = defaultdict(set)
    for hit in hits:
        event = hit.json()
        assert hit.webhook_id == event["id"], "webhook-id header differs from the body's id"
        assert event["type"] == "run.status_changed", event["type"]
        bodies[hit.webhook_id].add(hit.body)
        data = event["data"]
        ids_of[(data["run_uuid"], data["previous_status"], data["status"])].add(event["id"])
    two_bodies = {i: len(b) for i, b in bodies.items() if len(b) > 1}
    assert not two_bodies, f"event ids sent with different bodies: {two_bodies}"
    two_ids = {t: sorted(i) for t, i in ids_of.items() if len(i) > 1}
    assert not two_ids, f"one transition delivered under several ids: {two_ids}"

    accepted = receiver.accepted()
    times: dict[str, int] = defaultdict(int)
    for hit in accepted:
        times[hit.webhook_id] += 1
    repeated = {i: n for i, n in times.items() if n > 1}
    if not repeats_allowed:
        assert not repeated, f"delivered more than once without a crash: {repeated}"

    recorded_ids = [e["id"] for e in recorded]
    assert len(recorded_ids) == len(set(recorded_ids))
    lost = set(recorded_ids) - set(times)
    assert not lost, f"{len(lost)} recorded events never delivered: {sorted(lost)[:5]}"
    invented = set(times) - set(recorded_ids)
    assert not invented, f"delivered events the watcher never recorded: {sorted(invented)[:5]}"

    per_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for hit in accepted:
        event = hit.json()
        per_run[event["data"]["run_uuid"]].append(event)
    assert set(per_run) == set(truth), "runs with no delivery, or deliveries for unknown runs"
    for run, events in per_run.items():
        # Repeats (at-least-once) only ever repeat the latest delivery: collapse them, then
        # each id appears once, in arrival order.
        ordered = [e for k, e in enumerate(events) if k == 0 or events[k - 1]["id"] != e["id"]]
        ids = [e["id"] for e in ordered]
        assert len(ids) == len(set(ids)), f"run {run}: an earlier event re-sent after a later one"
        chain = [(e["data"]["previous_status"], e["data"]["status"]) for e in ordered]
        statuses = [status for _, status in chain]
        assert chain[0][0] is None, f"run {run}: first delivery is not the first observation"
        for (_, before), (previous, _) in itertools.pairwise(chain):
            assert previous == before, f"run {run}: out of order or a gap: {chain}"
        assert is_subsequence(statuses, truth[run]), (
            f"run {run}: delivered {statuses}, but the run went {truth[run]}"
        )
        assert statuses[-1] == truth[run][-1], f"run {run}: terminal {truth[run][-1]} missing"
        assert ordered[-1]["data"]["terminal"] is True
        assert all(not e["data"]["terminal"] for e in ordered[:-1])
    return {
        "requests": len(hits),
        "refused": sum(1 for h in hits if h.answered == 503),
        "events": len(recorded_ids),
        "repeated": len(repeated),
    }


def check_outage_bridged(receiver: WebhookReceiver) -> dict[str, float]:
    """Retries happened, and the outage was bridged within the generous bound."""
    hits = receiver.hits()
    end = receiver.outage_ends_at
    refused = {h.webhook_id for h in hits if h.answered == 503}
    assert refused, "the receiver never answered 503: the outage was not exercised"
    first_ok: dict[str, float] = {}
    for hit in receiver.accepted():
        first_ok.setdefault(hit.webhook_id, hit.at)
    retried = [i for i in refused if i in first_ok]
    assert retried, "nothing refused during the outage was delivered afterwards"
    bridged = max(first_ok[i] for i in refused) - end
    last = max(first_ok.values()) - end
    assert bridged <= BRIDGE_BOUND_SECONDS, f"outage bridged only {bridged:.1f} s after its end"
    assert last <= BRIDGE_BOUND_SECONDS, f"last delivery {last:.1f} s after the outage ended"
    waits = sorted(first_ok[i] - end for i in retried)
    return {
        "median_after_s": round(waits[len(waits) // 2], 1),
        "bridged_after_s": round(bridged, 1),
        "last_after_s": round(last, 1),
    }


def start_sim(procs: Processes, tmp_path: Path, runs: int, seed: int) -> Simulator:
    return start_simulator(procs, tmp_path / "sim", "--runs", str(runs), "--seed", str(seed))


# -- 1. 150 runs through a 10 s outage --------------------------------------------------------


def test_every_terminal_status_arrives_through_a_receiver_outage(
    tmp_path: Path, procs: Processes, receivers: list[WebhookReceiver]
) -> None:
    started = time.monotonic()
    sim = start_sim(procs, tmp_path, RUNS, seed=41)
    env = clean_env(tmp_path)
    receiver = WebhookReceiver(SECRET, outage_seconds=OUTAGE_SECONDS)
    receivers.append(receiver)
    receiver.start()
    port = free_port()
    config = write_config(
        tmp_path / "watcher.toml",
        config_for(tmp_path, sim, port, [webhook("ops", receiver, SECRET)]),
    )
    track(config, env, sim.runs)
    daemon = launch(procs, config, port, env, "daemon.log")

    truth = wait_all_delivered(daemon, sim, receiver, timeout=OUTAGE_SECONDS + 90)
    recorded = recorded_events(daemon)
    stats = check_deliveries(receiver, truth, recorded, repeats_allowed=False)
    timing = check_outage_bridged(receiver)
    assert dead_letters(daemon) == []
    assert delivery_seconds_count(daemon, "ops") == len(recorded)  # each delivered row, once
    assert stop(daemon.proc, timeout=15) == 0
    assert_no_secret_logged(daemon.log)
    print(f"outage e2e: {stats} {timing} in {time.monotonic() - started:.1f} s")


# -- 2. the same, with the daemon SIGKILLed midway ---------------------------------------------


def test_sigkill_midway_and_restart_loses_nothing_and_invents_nothing(
    tmp_path: Path, procs: Processes, receivers: list[WebhookReceiver]
) -> None:
    started = time.monotonic()
    sim = start_sim(procs, tmp_path, RUNS, seed=42)
    env = clean_env(tmp_path)
    receiver = WebhookReceiver(SECRET, outage_seconds=OUTAGE_SECONDS)
    receivers.append(receiver)
    receiver.start()
    port = free_port()
    notifiers = [webhook("ops", receiver, SECRET)]
    config = write_config(tmp_path / "watcher.toml", config_for(tmp_path, sim, port, notifiers))
    track(config, env, sim.runs)
    first = launch(procs, config, port, env, "daemon.log")

    # Midway: some deliveries made, others still pending in the outbox.
    def midway() -> int | None:
        alive(first)
        if len(receiver.accepted()) < 20:
            return None
        pending = outbox_pending(first)
        return pending if pending is not None and pending >= 5 else None

    pending_at_kill = wait_for(
        midway, timeout=OUTAGE_SECONDS + 40, interval=0.05, what="deliveries under way"
    )
    first.proc.send_signal(signal.SIGKILL)
    killed_wall = time.time()
    assert first.proc.wait(timeout=10) == -signal.SIGKILL
    delivered_before = {h.webhook_id for h in receiver.accepted()}

    # Same state file; a fresh port so the restart never races the old socket.
    port = free_port()
    write_config(config, config_for(tmp_path, sim, port, notifiers))
    second = launch(procs, config, port, env, "daemon-restarted.log")
    truth = wait_all_delivered(second, sim, receiver, timeout=90)

    stats = check_deliveries(receiver, truth, recorded_events(second), repeats_allowed=True)
    # The restart sent what was owed from before the kill (not only what it observed itself).
    owed = {
        h.webhook_id
        for h in receiver.accepted()
        if h.webhook_id not in delivered_before
        and datetime.fromisoformat(h.json()["timestamp"].replace("Z", "+00:00")).timestamp()
        < killed_wall
    }
    assert owed, "no delivery pending at the kill was sent after the restart"
    timing = check_outage_bridged(receiver)
    assert dead_letters(second) == []
    assert stop(second.proc, timeout=15) == 0
    assert_no_secret_logged(first.log, second.log)
    print(
        f"sigkill e2e: pending at kill {pending_at_kill}, sent after restart {len(owed)}, "
        f"{stats} {timing} in {time.monotonic() - started:.1f} s"
    )


# -- 3. SIGHUP: add a notifier, keep what is queued; a broken config is refused ------------------


def new_runs(sim: Simulator, count: int) -> list[str]:
    """Runs submitted now that finish quickly (QUEUED 0.5 s, INITIALIZING 0.5 s, RUNNING 1.5 s)."""
    return [
        sim.post("/_sim/runs", {"durations": [0.5, 0.5, 1.5], "outcome": "SUCCESS"})["run_uuid"]
        for _ in range(count)
    ]


def chains(receiver: WebhookReceiver, runs: Sequence[str]) -> dict[str, list[Hit]]:
    found: dict[str, list[Hit]] = {run: [] for run in runs}
    for hit in receiver.accepted():
        run = hit.json()["data"]["run_uuid"]
        if run in found:
            found[run].append(hit)
    return found


def terminal_reached(receiver: WebhookReceiver, runs: Sequence[str]) -> bool:
    return all(
        any(h.json()["data"]["terminal"] for h in hits) for hits in chains(receiver, runs).values()
    )


def test_sighup_adds_a_notifier_keeps_queued_deliveries_and_survives_a_bad_config(
    tmp_path: Path, procs: Processes, receivers: list[WebhookReceiver]
) -> None:
    started = time.monotonic()
    sim = start_sim(procs, tmp_path, 10, seed=43)
    env = clean_env(tmp_path)
    a = WebhookReceiver(SECRET)
    b = WebhookReceiver(SECRET_B)
    receivers.extend([a, b])
    a.start()
    b.start()
    a.set_status(503)  # A is down: what the daemon records for it queues in the outbox
    port = free_port()
    config = write_config(
        tmp_path / "watcher.toml", config_for(tmp_path, sim, port, [webhook("a", a, SECRET)])
    )
    track(config, env, sim.runs)
    daemon = launch(procs, config, port, env, "daemon.log")

    def queued_for_a() -> bool:
        alive(daemon)
        return len(a.hits()) >= 3 and (outbox_pending(daemon) or 0) >= 3

    wait_for(queued_for_a, timeout=30, what="deliveries for A queued behind its outage")
    refused_before_reload = {h.webhook_id for h in a.hits()}

    # Add B, remove nothing, SIGHUP.
    both = [webhook("a", a, SECRET), webhook("b", b, SECRET_B)]
    write_config(config, config_for(tmp_path, sim, port, both))
    daemon.proc.send_signal(signal.SIGHUP)
    reloaded = wait_for(
        watching(daemon, lambda: log_lines(daemon, "reloaded")),
        timeout=15,
        what="the daemon to log 'reloaded' after SIGHUP",
    )
    assert reloaded[-1].get("notifiers") == ["a", "b"], reloaded[-1]
    a.set_status(None)  # A is back

    # New transitions reach B (runs submitted and tracked after the reload).
    fresh = new_runs(sim, 3)
    track(config, env, fresh)
    wait_for(
        watching(daemon, lambda: terminal_reached(b, fresh)),
        timeout=30,
        what="B to get the new runs' terminal statuses",
    )
    # Nothing queued for A was lost: every run's terminal status and every event the
    # watcher recorded (check_deliveries) reach A, including those refused before the reload.
    truth = wait_all_delivered(daemon, sim, a, timeout=60)
    assert refused_before_reload <= {h.webhook_id for h in a.accepted()}
    check_deliveries(a, truth, recorded_events(daemon), repeats_allowed=False)
    for run, hits in chains(b, fresh).items():
        events = [h.json() for h in hits]
        chain = [(e["data"]["previous_status"], e["data"]["status"]) for e in events]
        assert chain[0][0] is None, (run, chain)
        assert chain[-1][1] == "SUCCESS", (run, chain)
        for (_, before), (previous, _) in itertools.pairwise(chain):
            assert previous == before, (run, chain)
        assert is_subsequence([s for _, s in chain], truth[run]), (run, chain, truth[run])
        # The same event, same id and body, to both notifiers.
        a_bodies = {h.webhook_id: h.body for h in chains(a, [run])[run]}
        assert {h.webhook_id: h.body for h in hits} == a_bodies
    assert b.hits()
    assert all(h.verified for h in b.hits()), [h.error for h in b.hits() if not h.verified]

    # A broken config on SIGHUP: logged, refused, the old notifiers keep working.
    broken = [webhook("a", a, SECRET), {**webhook("b", b, SECRET_B), "url": "not a url"}]
    write_config(config, config_for(tmp_path, sim, port, broken))
    daemon.proc.send_signal(signal.SIGHUP)
    failed = wait_for(
        watching(daemon, lambda: log_lines(daemon, "reload_failed")),
        timeout=15,
        what="the daemon to log 'reload_failed'",
    )
    assert "notifiers[1].url" in json.dumps(failed[-1]), failed[-1]
    later = new_runs(sim, 1)
    # The file is broken now, so track through the running daemon's admin API.
    reply = daemon.admin("POST", "/v1/runs", body={"run_uuid": later[0]})
    assert reply.status == 201, reply.text
    wait_for(
        watching(daemon, lambda: terminal_reached(a, later) and terminal_reached(b, later)),
        timeout=30,
        what="both notifiers to keep delivering after the failed reload",
    )
    assert daemon.probe("/healthz") is not None
    assert_no_secret_logged(daemon.log)
    assert stop(daemon.proc, timeout=15) == 0
    print(f"sighup e2e in {time.monotonic() - started:.1f} s")


# -- 4. test-notify ---------------------------------------------------------------------------


def test_test_notify_exit_codes(tmp_path: Path, receivers: list[WebhookReceiver]) -> None:
    env = clean_env(tmp_path)
    ok = WebhookReceiver(SECRET)
    flaky = WebhookReceiver(SECRET, fail_first=2)
    refusing = WebhookReceiver(SECRET, status=400)
    receivers.extend([ok, flaky, refusing])
    for receiver in receivers:
        receiver.start()
    config = write_config(
        tmp_path / "watcher.toml",
        config_for(
            tmp_path,
            None,
            free_port(),
            [
                webhook("ok", ok, SECRET),
                webhook("flaky", flaky, SECRET),
                webhook("refusing", refusing, SECRET),
            ],
        ),
    )

    def notify(name: str) -> Any:
        return run_cli("test-notify", "-c", str(config), name, env=env, cwd=tmp_path, timeout=90)

    done = notify("ok")
    assert done.returncode == 0, done.stderr
    [hit] = ok.hits()
    assert hit.verified, hit.error
    assert hit.ok
    event = hit.json()
    assert event["type"] == "run.status_changed"
    assert event["id"] == hit.webhook_id
    assert event["id"].startswith("evt_")
    assert event["data"]["status"]
    assert event["data"]["run_uuid"]

    done = notify("flaky")  # 503, 503, then 204: retried, then exit 0
    assert done.returncode == 0, done.stderr
    hits = flaky.hits()
    assert [h.answered for h in hits] == [503, 503, 204]
    assert len({h.webhook_id for h in hits}) == 1
    assert len({h.body for h in hits}) == 1
    assert all(h.verified for h in hits)

    done = notify("refusing")  # a 4xx other than 408/429 is permanent: one attempt, exit 1
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert [h.answered for h in refusing.hits()] == [400]
    assert "test_notify_failed" in done.stderr

    done = notify("nobody")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "nobody" in done.stderr
    for output in (done.stdout, done.stderr):
        assert SECRET.removeprefix("whsec_") not in output
