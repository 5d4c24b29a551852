"""Fault injection: the real daemon (``omics-watcher run``) against the simulator, with faults.

Every test drives real processes (``omics-watcher simulate`` and ``omics-watcher run``) and
judges the daemon against independent records, never against its own opinion of itself:

- the simulator's ``/_sim/timeline`` (what each run really went through) and ``/_sim/stats``
  (requests, throttling, auth failures, faults drawn);
- the state file, read with a read-only SQLite connection of this process (the registry,
  the event log and the outbox exactly as the daemon wrote them);
- a Standard Webhooks receiver (:mod:`notify_receiver`) verifying every signature.

What each test asserts, whatever the fault:

- nothing lost: every run's final status in the registry equals the simulator's last status,
  and every recorded event reached the receiver (or, with the implied log notifier, left the
  outbox) -- no dead letter;
- nothing false: each run's events form one chain (``previous_status`` links) that is a
  subsequence of what really happened; no two event ids for one transition; every body the
  receiver got is byte-for-byte an event of the log;
- the daemon keeps running (``/healthz`` answers, SIGTERM exits 0) or, for a state file it
  cannot use, exits 3 with one ``state error: ...`` line and no traceback.

Fast subset (no mark, CI): transport faults and malformed answers at 10 % (side by side),
throttling below 20/s, SIGKILL x 5, a corrupted or partly corrupted state file (per-run
poller), a locked state file. Slow (``--run-slow``): clock skew, expired credentials, a 60 s
webhook outage, SIGKILL x 20, a full disk, the state file deleted while running, the partly
corrupted file with the batch poller. Results and runtimes: docs/faults.md.

Timings assume a slow 2-core machine; every wait is bounded and every process is killed by
its own pid in teardown.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from notify_receiver import WebhookReceiver
from prometheus_client.parser import text_string_to_metric_families
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
    tail,
    wait_for,
    write_config,
)

from watcher.store.codec import decode_body

TOKEN = "faults-admin-token-0123456789abcdef"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
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
UNKNOWN_STATUS = "SUSPENDED_BY_OPERATOR"  # a status the watcher has never heard of
GRACE = 5.0
EXIT_SLACK = 3.0
EXIT_STARTUP = 3


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def receivers() -> Iterator[list[WebhookReceiver]]:
    """Receivers appended here are closed in teardown."""
    started: list[WebhookReceiver] = []
    yield started
    for receiver in started:
        receiver.close()


class SlowReceiver(WebhookReceiver):
    """A receiver that records a request, then waits ``delay`` before answering, so a
    SIGKILL often lands while a delivery is in flight (recorded here, unknown to the
    daemon: it must deliver it again, with the same id)."""

    def __init__(self, secret: str, *, delay: float) -> None:
        super().__init__(secret)
        self.delay = delay

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        await asyncio.sleep(self.delay)
        return response


# -- the state file, read independently -----------------------------------------------------


def db_query(db: Path, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """One query on a read-only connection of our own (WAL: never blocks the daemon)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


def db_events(db: Path) -> list[dict[str, Any]]:
    """The event log, oldest first, each body exactly as notifiers get it."""
    rows = db_query(db, "SELECT body FROM events ORDER BY seq")
    return [json.loads(decode_body(body)) for (body,) in rows]


def db_registry(db: Path) -> dict[str, tuple[str | None, bool]]:
    rows = db_query(db, "SELECT run_uuid, status, terminal FROM runs WHERE tracked = 1")
    return {run: (status, bool(terminal)) for run, status, terminal in rows}


def db_outbox(db: Path) -> tuple[int, int]:
    """``(pending, dead)`` outbox rows."""
    rows = dict(db_query(db, "SELECT state, count(*) FROM outbox GROUP BY state"))
    return int(rows.get("pending", 0)), int(rows.get("dead", 0))


# -- one watch: a simulator, a config, a state file, the daemon ------------------------------


@dataclass
class Watch:
    tmp: Path
    procs: Processes
    sim: Simulator
    config: Path
    env: dict[str, str]
    port: int
    runs: list[str]
    db: Path
    receiver: WebhookReceiver | None = None
    daemon: Daemon | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self, *, listening: bool = True) -> Daemon:
        self.starts += 1
        daemon = start_daemon(
            self.procs,
            self.config,
            port=self.port,
            env=self.env,
            admin_token=TOKEN,
            log_name=f"daemon-{self.starts}.log",
        )
        self.daemon = daemon
        self.logs.append(daemon.log)
        if listening:
            daemon.wait_listening(timeout=30)
        return daemon

    def alive(self) -> Daemon:
        daemon = self.daemon
        assert daemon is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.proc.returncode}: {tail(daemon.log)}")
        return daemon

    def truth(self) -> dict[str, list[str]]:
        """Each tracked run's real status sequence (simulator timeline)."""
        seq = self.sim.statuses()
        return {run: seq[run] for run in self.runs}


def make_watch(
    tmp: Path,
    procs: Processes,
    *,
    seed: int,
    runs: int = 0,
    submit: Sequence[dict[str, Any]] = (),
    receiver: WebhookReceiver | None = None,
    tencent: dict[str, Any] | None = None,
    **sections: Any,
) -> Watch:
    """A simulator with ``runs`` generated runs plus ``submit``-ted ones, all tracked with
    ``omics-watcher track -`` before any daemon starts."""
    sim = start_simulator(procs, tmp / "sim", "--runs", str(runs), "--seed", str(seed))
    uuids = list(sim.runs) + [sim.post("/_sim/runs", dict(body))["run_uuid"] for body in submit]
    port = free_port()
    if receiver is not None:
        sections["notifiers"] = [
            {"name": "hook", "type": "webhook", "url": receiver.url, "secret": SECRET}
        ]
    settings = daemon_config(
        tmp,
        sim=sim,
        port=port,
        admin_token=TOKEN,
        grace=GRACE,
        credentials_in_file=tencent is None,
        **sections,
    )
    if tencent is not None:
        settings["tencentcloud"].update(tencent)
    config = write_config(tmp / "watcher.toml", settings)
    env = clean_env(tmp / "home")
    done = run_cli("track", "-c", str(config), "-", env=env, cwd=tmp, stdin="\n".join(uuids))
    assert done.returncode == 0, done.stderr
    db = Path(settings["state"]["path"])
    return Watch(tmp, procs, sim, config, env, port, uuids, db=db, receiver=receiver)


def track_new_runs(watch: Watch, bodies: Sequence[dict[str, Any]]) -> list[str]:
    """Submit runs to the simulator now and track them with ``omics-watcher track -`` beside
    the running daemon (which polls them within 2 s): their lifecycles start now, not
    before a daemon that a busy machine was slow to start."""
    uuids = [watch.sim.post("/_sim/runs", dict(body))["run_uuid"] for body in bodies]
    done = run_cli(
        "track", "-c", str(watch.config), "-", env=watch.env, cwd=watch.tmp, stdin="\n".join(uuids)
    )
    assert done.returncode == 0, done.stderr
    watch.runs.extend(uuids)
    return uuids


def sigterm(watch: Watch) -> None:
    daemon = watch.alive()
    started = time.monotonic()
    code = stop(daemon.proc, signal.SIGTERM, timeout=GRACE + 30)
    took = time.monotonic() - started
    assert code == 0, tail(daemon.log)
    assert took <= GRACE + EXIT_SLACK, f"SIGTERM took {took:.1f} s"


def log_records(paths: Sequence[Path]) -> list[dict[str, Any]]:
    found = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append(record)
    return found


def named(watch: Watch, event: str) -> list[dict[str, Any]]:
    return [r for r in log_records(watch.logs) if r.get("event") == event]


def metrics(daemon: Daemon) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(daemon.metrics())}


def metric_sum(daemon: Daemon, family: str, **labels: str) -> float:
    found = metrics(daemon).get(family)
    if found is None:
        return 0.0
    return float(
        sum(
            s.value
            for s in found.samples
            if not s.name.endswith("_created")
            and all(s.labels.get(k) == v for k, v in labels.items())
        )
    )


# -- the checks -----------------------------------------------------------------------------


def settled(watch: Watch, final: frozenset[str] = TERMINAL) -> dict[str, list[str]] | None:
    """The truth once every run reached a status it keeps (``final``) and the registry
    shows it for every run; ``None`` before."""
    watch.alive()
    truth = watch.truth()
    if any(seq[-1] not in final for seq in truth.values()):
        return None
    registry = db_registry(watch.db)
    if any(registry.get(run, (None, False))[0] != seq[-1] for run, seq in truth.items()):
        return None
    return truth


def wait_settled(
    watch: Watch, *, timeout: float, final: frozenset[str] = TERMINAL
) -> dict[str, list[str]]:
    return wait_for(
        lambda: settled(watch, final), timeout=timeout, interval=0.5, what="every final status"
    )


def check_registry(watch: Watch, truth: dict[str, list[str]]) -> None:
    """Nothing lost: ``omics-watcher list --json`` shows each run's real final status."""
    rows = {row["run_uuid"]: row for row in list_runs(watch.config, env=watch.env)}
    assert set(rows) == set(truth) == set(watch.runs)
    wrong = {
        run: (rows[run]["status"], seq)
        for run, seq in truth.items()
        if rows[run]["status"] != seq[-1] or rows[run]["terminal"] != (seq[-1] in TERMINAL)
    }
    assert not wrong, f"registry differs from the simulator: {wrong}"


def check_events(
    events: list[dict[str, Any]],
    truth: dict[str, list[str]],
    *,
    complete: bool = True,
    types: frozenset[str] = frozenset({"run.status_changed"}),
) -> None:
    """Nothing false: one id per event, one event per transition, chains that link up and
    follow what really happened. ``complete``: each chain ends at the run's real status."""
    assert {e["type"] for e in events} <= types, Counter(e["type"] for e in events)
    ids = Counter(e["id"] for e in events)
    assert max(ids.values(), default=1) == 1, [i for i, n in ids.items() if n > 1]
    changes = [e["data"] for e in events if e["type"] == "run.status_changed"]
    keys = Counter((d["run_uuid"], d["previous_status"], d["status"]) for d in changes)
    twice = [key for key, n in keys.items() if n > 1]
    assert not twice, f"two event ids for one transition: {twice[:5]}"
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for data in changes:
        chains[data["run_uuid"]].append(data)
    assert set(chains) <= set(truth), set(chains) - set(truth)
    if complete:
        assert set(chains) == set(truth), set(truth) - set(chains)
    for run, chain in chains.items():
        assert chain[0]["previous_status"] is None, (run, chain[0])
        for before, after in itertools.pairwise(chain):
            assert after["previous_status"] == before["status"], (run, before, after)
        for data in chain:
            assert data["terminal"] == (data["status"] in TERMINAL), data
        real = iter(truth[run])
        seen = [data["status"] for data in chain]
        assert all(status in real for status in seen), f"{run}: saw {seen}, real {truth[run]}"
        if complete:
            assert seen[-1] == truth[run][-1], (run, seen, truth[run])


def check_deliveries(
    receiver: WebhookReceiver, events: list[dict[str, Any]], *, exactly_once: bool
) -> None:
    """Every event accepted by the receiver, signed, byte-for-byte as logged; nothing else.

    ``exactly_once``: without a crash no event may be accepted twice; with crashes the same
    id may come again (at-least-once), never another id for it."""
    hits = receiver.hits()
    assert all(hit.verified for hit in hits), [hit.error for hit in hits if not hit.verified]
    by_id = {e["id"]: e for e in events}
    for hit in hits:
        assert hit.webhook_id in by_id, f"delivered an event that is not in the log: {hit.body!r}"
        assert hit.json() == by_id[hit.webhook_id], "a body differs from the logged event"
    accepted = Counter(hit.webhook_id for hit in hits if hit.ok)
    missing = set(by_id) - set(accepted)
    assert not missing, f"{len(missing)} recorded events never delivered"
    if exactly_once:
        assert max(accepted.values(), default=1) == 1, accepted.most_common(3)
    # Per run, first acceptances follow the event log's order.
    first: dict[str, int] = {}
    for index, hit in enumerate(hits):
        if hit.ok:
            first.setdefault(hit.webhook_id, index)
    per_run: dict[str, list[str]] = defaultdict(list)
    for event in events:
        per_run[event["data"]["run_uuid"]].append(event["id"])
    for run, ids in per_run.items():
        order = [first[i] for i in ids]
        assert order == sorted(order), f"{run}: delivered out of order"


def wait_delivered(watch: Watch, *, timeout: float) -> list[dict[str, Any]]:
    """Until every logged event was accepted and the outbox is empty; the event log."""
    receiver = watch.receiver
    assert receiver is not None

    def done() -> list[dict[str, Any]] | None:
        watch.alive()
        events = db_events(watch.db)
        accepted = {hit.webhook_id for hit in receiver.accepted()}
        if {e["id"] for e in events} <= accepted and db_outbox(watch.db) == (0, 0):
            return events
        return None

    return wait_for(done, timeout=timeout, interval=0.5, what="every event delivered")


def wait_outbox_empty(watch: Watch, *, timeout: float) -> None:
    def empty() -> bool:
        watch.alive()
        return db_outbox(watch.db) == (0, 0)

    wait_for(empty, timeout=timeout, interval=0.5, what="an empty outbox")


def no_traceback(watch: Watch) -> None:
    for path in watch.logs:
        text = path.read_text(errors="replace")
        assert "Traceback" not in text, f"a traceback in {path.name}: {tail(path)}"


# -- API faults -----------------------------------------------------------------------------


def test_transport_faults_and_malformed_answers_at_10_percent(
    tmp_path: Path, procs: Processes, receivers: list[WebhookReceiver]
) -> None:
    """Two watches side by side (they wait on the same lifecycles):

    - "transport": 10 % of answers are InternalError, HTTP 502 (HTML), slow (past the
      request timeout) or a dropped connection; a signed webhook receives the events;
    - "malformed": 10 % are not JSON, lack ``Response``, lack ``Metadata``, carry wrong
      types or a 1 MB string.

    In both, six runs end in a status the watcher has never heard of.
    """
    receiver = WebhookReceiver(SECRET).start()
    receivers.append(receiver)
    polling = {"interval_seconds": 1, "request_timeout_seconds": 2}
    rng = random.Random(20)

    def lifecycles(count: int) -> list[dict[str, Any]]:  # each run ends within 9 s
        return [
            {"durations": [rng.uniform(0.5, 2), rng.uniform(0.5, 2), rng.uniform(1, 5)]}
            for _ in range(count)
        ]

    # Six runs per watch end in a status the watcher has never heard of: reported as it is,
    # never terminal, so they are polled for as long as the test runs.
    odd = [{"durations": [1, 1, 4], "outcome": UNKNOWN_STATUS} for _ in range(6)]
    transport = make_watch(
        tmp_path / "transport",
        procs,
        seed=21,
        submit=lifecycles(40) + odd,
        receiver=receiver,
        polling=polling,
    )
    malformed = make_watch(
        tmp_path / "malformed", procs, seed=22, submit=lifecycles(30) + odd, polling=polling
    )
    transport.sim.post("/_sim/faults", {"rate": 0.1, "kinds": ["transport"]})
    malformed.sim.post("/_sim/faults", {"rate": 0.1, "kinds": ["malformed"]})
    for watch in (transport, malformed):
        watch.start()
    kinds = {
        transport.tmp.name: {"internal_error", "bad_gateway", "slow", "drop"},
        malformed.tmp.name: {
            "malformed_non_json",
            "malformed_no_response",
            "malformed_no_payload",
            "malformed_wrong_types",
            "malformed_huge",
        },
    }

    final = TERMINAL | {UNKNOWN_STATUS}
    for watch in (transport, malformed):
        wait_settled(watch, timeout=90, final=final)

        # Every kind of fault was drawn at least once (the odd runs keep polls coming).
        def all_kinds(w: Watch = watch) -> bool:
            w.alive()
            return set(w.sim.stats()["faults"]) == kinds[w.tmp.name]

        wait_for(all_kinds, timeout=90, what=f"every {watch.tmp.name} fault kind drawn")

    for watch in (transport, malformed):
        truth = wait_settled(watch, timeout=30, final=final)
        check_registry(watch, truth)
        check_events(db_events(watch.db), truth)
        odd_runs = watch.runs[-len(odd) :]
        odd_events = [e for e in db_events(watch.db) if e["data"]["status"] == UNKNOWN_STATUS]
        assert {e["data"]["run_uuid"] for e in odd_events} == set(odd_runs)
        assert all(e["data"]["terminal"] is False for e in odd_events)
        polls_then = {run: watch.sim.stats()["polls"].get(run, 0) for run in odd_runs}

        def polled_again(w: Watch = watch, then: dict[str, int] = polls_then) -> bool:
            return all(w.sim.stats()["polls"].get(r, 0) > n for r, n in then.items())

        wait_for(polled_again, timeout=30, what="runs in an unknown status still polled")
    events = wait_delivered(transport, timeout=60)
    check_deliveries(receiver, events, exactly_once=True)
    wait_outbox_empty(malformed, timeout=30)

    for watch in (transport, malformed):
        stats = watch.sim.stats()
        daemon = watch.alive()
        transient = metric_sum(daemon, "omics_watcher_polls", outcome="transient")
        assert transient > 0
        assert stats["signature_failures"] == 0
        health = daemon.probe("/healthz")
        assert health is not None
        assert health.status == 200
        logged = named(watch, "poll_failed")
        assert logged, "faults were not logged"
        assert all(r.get("level") in ("warning", "debug") for r in logged)
        assert all(len(json.dumps(r)) < 4096 for r in log_records(watch.logs)), "a huge log line"
        sigterm(watch)
        no_traceback(watch)


# -- throttling -----------------------------------------------------------------------------


def _histogram(sim: Simulator) -> dict[int, tuple[int, int]]:
    rows = sim.stats()["histogram"]["GetRunStatus"]
    return {int(second): (int(arrived), int(throttled)) for second, arrived, throttled in rows}


def _wait_second_with(sim: Simulator, arrivals: int, *, after: int, what: str) -> int:
    """The first whole second of simulator uptime later than ``after`` in which at least
    ``arrivals`` GetRunStatus requests arrived, waited for (up to 20 s)."""

    def found() -> int | None:
        stats = sim.stats()
        now = int(stats["uptime_seconds"])
        rows = stats["histogram"]["GetRunStatus"]
        done = sorted(int(s) for s, a, _ in rows if after < int(s) < now and int(a) >= arrivals)
        return done[0] if done else None

    second: int = wait_for(found, timeout=20, interval=0.25, what=what)
    return second


def test_throttling_below_20_per_second_backs_off_and_recovers(
    tmp_path: Path, procs: Processes
) -> None:
    """60 runs polled every second want 60 requests/s; the daemon keeps to 20/s. Then the
    simulator's GetRunStatus limit drops to 5/s (other tools share the account) for 7 s and
    comes back: the daemon slows down (no tight loop of refused requests) and speeds up.

    The runs start once the daemon is ready and outlast both phases, and the recovery is
    awaited rather than measured in a fixed window: runs submitted before the daemon
    started had ended during that window when a busy machine was slow to start it."""
    watch = make_watch(tmp_path, procs, seed=31, polling={"interval_seconds": 1})
    daemon = watch.start()
    daemon.wait_ready(timeout=30)
    track_new_runs(watch, [{"durations": [2, 2, 28]} for _ in range(60)])
    _wait_second_with(watch.sim, 15, after=0, what="the daemon polling near its 20/s")
    limited = 5
    watch.sim.post("/_sim/rate-limit", {"limit": limited, "action": "GetRunStatus"})
    low_from = int(watch.sim.stats()["uptime_seconds"]) + 1
    time.sleep(7)
    watch.sim.post("/_sim/rate-limit", {"limit": 20, "action": "GetRunStatus"})
    low_to = int(watch.sim.stats()["uptime_seconds"]) - 1
    high_to = _wait_second_with(
        watch.sim, 15, after=low_to + 1, what="GetRunStatus back near 20/s (runs still active)"
    )
    hist = _histogram(watch.sim)

    low = [hist.get(s, (0, 0)) for s in range(low_from, low_to + 1)]
    arrived = sum(a for a, _ in low)
    throttled = sum(t for _, t in low)
    print(
        f"throttling: per second (arrivals, throttled) {sorted(hist.items())}; limit 5/s "
        f"in seconds {low_from}..{low_to}: {arrived} arrivals, {throttled} throttled"
    )
    # Backed off: most requests in the low phase were admitted (a tight loop would be
    # nearly all refused), and arrivals stayed near the limit, far under the 20/s before.
    assert throttled <= 0.35 * arrived, (arrived, throttled, low)
    steady = low[3:]  # after the first reaction
    assert sum(a for a, _ in steady) / len(steady) <= 2 * limited, steady
    # Recovered: back to nearly the full 20/s once the limit is lifted.
    high = [hist.get(s, (0, 0))[0] for s in range(low_to + 2, high_to + 1)]
    assert max(high) >= 15, high
    assert all(t == 0 for s, (_, t) in hist.items() if s > low_to + 2), hist

    truth = wait_settled(watch, timeout=60)
    check_registry(watch, truth)
    check_events(db_events(watch.db), truth)
    wait_outbox_empty(watch, timeout=20)
    stats = watch.sim.stats()
    daemon = watch.alive()
    # Every throttled answer was seen and counted as such (and only those).
    assert metric_sum(daemon, "omics_watcher_throttled") == stats["throttled"]["GetRunStatus"]
    assert stats["throttled"]["GetRunStatus"] > 0
    assert stats["throttled"]["GetRunStatus"] <= 0.1 * stats["requests"]["GetRunStatus"], stats
    sigterm(watch)
    no_traceback(watch)


# -- clock skew and credentials -------------------------------------------------------------


@pytest.mark.slow
def test_clock_skew_beyond_5_minutes_pauses_polling_clearly_and_resumes(
    tmp_path: Path, procs: Processes
) -> None:
    """The simulator's clock moves 600 s ahead: every request is refused with
    AuthFailure.SignatureExpire (its Date header does not help re-syncing). The daemon logs
    one ``polling_paused`` naming clock skew, exports ``omics_watcher_polling_paused 1``,
    records nothing, probes slowly; once the clocks agree again it resumes on its own."""
    runs = [{"durations": [1, 1, 12]} for _ in range(8)]
    watch = make_watch(tmp_path, procs, seed=41, submit=runs, polling={"interval_seconds": 1})
    daemon = watch.start()
    daemon.wait_ready(timeout=30)
    time.sleep(1.5)
    watch.sim.post("/_sim/clock", {"offset_seconds": 600})
    skewed_at = time.monotonic()
    wait_for(
        lambda: named(watch, "polling_paused") or None, timeout=10, what="polling_paused logged"
    )
    events_at_pause = len(db_events(watch.db))
    registry_at_pause = db_registry(watch.db)
    failures_at_pause = watch.sim.stats()["auth_failures"]
    time.sleep(max(0.0, skewed_at + 10 - time.monotonic()))

    paused = named(watch, "polling_paused")
    assert len(paused) == 1, paused  # one line per episode, not one per request
    assert "clock skew" in paused[0]["reason"], paused[0]
    assert "SignatureExpire" in paused[0]["reason"], paused[0]
    assert paused[0]["level"] == "error"
    assert metric_sum(watch.alive(), "omics_watcher_polling_paused") == 1
    assert metric_sum(watch.alive(), "omics_watcher_polls", outcome="auth") >= 1
    # The client re-estimated the server clock from the Date header (exported as a gauge).
    # The simulator's Date is not shifted (only its signature check is), so the estimate is
    # about 0 and the re-signed retry fails too: the unrecoverable path, hence the pause.
    skew = metric_sum(watch.alive(), "omics_watcher_clock_skew_seconds")
    assert skew != 0.0, "omics_watcher_clock_skew_seconds never set"
    assert abs(skew) < 2, skew
    assert named(watch, "clock_skew_detected"), "no clock_skew_detected line"
    assert len(db_events(watch.db)) == events_at_pause, "recorded something while skewed"
    assert db_registry(watch.db) == registry_at_pause, "a run was marked while skewed"
    stats = watch.sim.stats()
    assert stats["errors"].get("AuthFailure.SignatureExpire", 0) >= 1
    # No tight loop: a handful of probes in 10 s (a loop at 20/s would be 200).
    assert stats["auth_failures"] - failures_at_pause <= 20, stats["auth_failures"]
    print(f"clock skew: {stats['auth_failures'] - failures_at_pause} refused requests in 10 s")

    watch.sim.post("/_sim/clock", {"offset_seconds": 0})
    wait_for(lambda: named(watch, "polling_resumed") or None, timeout=45, what="polling_resumed")
    assert metric_sum(watch.alive(), "omics_watcher_polling_paused") == 0
    truth = wait_settled(watch, timeout=60)
    check_registry(watch, truth)
    check_events(db_events(watch.db), truth)
    wait_outbox_empty(watch, timeout=20)
    sigterm(watch)
    no_traceback(watch)


@pytest.mark.slow
def test_expired_temporary_credentials_pause_polling_and_resume(
    tmp_path: Path, procs: Processes
) -> None:
    """Temporary credentials (SecretId, SecretKey and a token read from ``token_file``).

    1. The simulator expires them mid-run: AuthFailure.TokenFailure. The daemon refreshes
       once (the static provider has nothing newer), then pauses with one clear log line;
       no run is marked, nothing recorded.
    2. The same credentials become valid again: polling resumes on its own (no restart).
    3. The token is rotated: the old one fails again. The static provider does not re-read
       ``token_file`` (nor does SIGHUP, which reloads notifiers only), so the documented
       remedy is a restart: SIGTERM (exit 0 while paused), new token in the file, start.
    """
    watch = make_watch(
        tmp_path,
        procs,
        seed=51,
        submit=[{"durations": [1, 1, 40]} for _ in range(6)],
        polling={"interval_seconds": 1},
        tencent={},
    )
    cred = watch.sim.post("/_sim/credentials", {"token": True})
    token_file = tmp_path / "token"
    token_file.write_text(cred["token"] + "\n")
    settings = daemon_config(
        tmp_path,
        sim=watch.sim,
        port=watch.port,
        admin_token=TOKEN,
        grace=GRACE,
        credentials_in_file=False,
        polling={"interval_seconds": 1},
    )
    settings["tencentcloud"].update(
        secret_id=cred["secret_id"], secret_key=cred["secret_key"], token_file=str(token_file)
    )
    write_config(watch.config, settings)
    daemon = watch.start()
    daemon.wait_ready(timeout=30)
    wait_for(
        lambda: all(s for s, _ in db_registry(watch.db).values()), timeout=15, what="first polls"
    )

    def episode(expect_code: str) -> None:
        wait_for(
            lambda: len(named(watch, "polling_paused")) > len(paused_before) or None,
            timeout=15,
            what="polling_paused",
        )
        events_at = len(db_events(watch.db))
        registry_at = db_registry(watch.db)
        failures_at = watch.sim.stats()["auth_failures"]
        time.sleep(6)
        fresh = named(watch, "polling_paused")[len(paused_before) :]
        assert len(fresh) == 1, fresh
        assert fresh[0]["reason"] == expect_code, fresh[0]
        assert fresh[0]["level"] == "error"
        assert metric_sum(watch.alive(), "omics_watcher_polling_paused") == 1
        assert len(db_events(watch.db)) == events_at, "recorded something while paused"
        assert db_registry(watch.db) == registry_at, "a run was marked while paused"
        assert watch.sim.stats()["auth_failures"] - failures_at <= 15, "probing too fast"

    # 1. expired
    paused_before = named(watch, "polling_paused")
    watch.sim.post("/_sim/credentials/expire", {"secret_id": cred["secret_id"]})
    episode("AuthFailure.TokenFailure")
    assert named(watch, "credentials_refreshed"), "no refresh was tried"

    # 2. valid again: resumes without a restart
    watch.sim.post(
        "/_sim/credentials/expire", {"secret_id": cred["secret_id"], "at": time.time() + 10**6}
    )
    wait_for(lambda: named(watch, "polling_resumed") or None, timeout=45, what="resumed")
    assert metric_sum(watch.alive(), "omics_watcher_polling_paused") == 0
    polls = watch.sim.stats()["requests"]["GetRunStatus"]
    wait_for(
        lambda: watch.sim.stats()["requests"]["GetRunStatus"] >= polls + 6,
        timeout=10,
        what="polling again",
    )

    # 3. rotated: a restart with the new token in token_file
    paused_before = named(watch, "polling_paused")
    rotated = watch.sim.post("/_sim/credentials/rotate-token", {"secret_id": cred["secret_id"]})
    episode("AuthFailure.TokenFailure")
    token_file.write_text(rotated["token"] + "\n")
    sigterm(watch)
    watch.start().wait_ready(timeout=30)
    truth = wait_settled(watch, timeout=90)
    check_registry(watch, truth)
    check_events(db_events(watch.db), truth)
    wait_outbox_empty(watch, timeout=20)
    assert len(named(watch, "polling_paused")) == 2
    sigterm(watch)
    no_traceback(watch)
    for path in watch.logs:
        text = path.read_text(errors="replace")
        for secret in (cred["secret_key"], cred["token"], rotated["token"]):
            assert secret not in text, f"a credential in {path.name}"


# -- webhook outage -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_webhook_receiver_down_for_60s_then_back(
    tmp_path: Path, procs: Processes, receivers: list[WebhookReceiver]
) -> None:
    """The receiver answers 503 for its first 60 s. Every event is retried with the same id
    and body, and all arrive once it is back: exactly once each, in order per run, none
    dead-lettered, promptly (the backoff doubles, so the next try after a 60 s outage comes
    within about another 60 s)."""
    outage = 60.0
    receiver = WebhookReceiver(SECRET, outage_seconds=outage).start()
    receivers.append(receiver)
    watch = make_watch(tmp_path, procs, seed=61, runs=20, receiver=receiver)
    watch.start().wait_ready(timeout=30)
    truth = wait_settled(watch, timeout=60)
    assert time.monotonic() < receiver.outage_ends_at, "the runs outlasted the outage"
    events = db_events(watch.db)
    pending, dead = db_outbox(watch.db)
    assert pending == len(events)
    assert dead == 0
    assert metric_sum(watch.alive(), "omics_watcher_outbox_pending") == len(events)

    events = wait_delivered(watch, timeout=outage + 150)
    took = max(hit.at for hit in receiver.accepted()) - receiver.outage_ends_at
    print(f"webhook outage: {len(events)} events, last delivered {took:.1f} s after it ended")
    assert took <= 75, f"last delivery {took:.0f} s after the outage ended"
    check_registry(watch, truth)
    check_events(events, truth)
    check_deliveries(receiver, events, exactly_once=True)
    # During the outage each run's oldest event was tried (and retried); its later events
    # wait behind it (one delivery per run at a time keeps them in order).
    refused = {hit.webhook_id for hit in receiver.hits() if not hit.ok}
    by_id = {e["id"]: e["data"]["run_uuid"] for e in events}
    assert {by_id[i] for i in refused} == set(truth), "a run was not tried during the outage"
    retried = Counter(hit.webhook_id for hit in receiver.hits() if not hit.ok)
    assert max(retried.values()) >= 4, retried  # 1, 2, 4, 8, 16, 32 s: several tries in 60 s
    assert all(hit.answered == 503 for hit in receiver.hits() if not hit.ok)
    assert metric_sum(watch.alive(), "omics_watcher_outbox_pending") == 0
    sigterm(watch)
    no_traceback(watch)


# -- SIGKILL --------------------------------------------------------------------------------


def _sigkill_cycles(
    tmp_path: Path,
    procs: Processes,
    receivers: list[WebhookReceiver],
    *,
    cycles: int,
    runs: int,
    seed: int,
) -> None:
    """Kill the daemon with SIGKILL ``cycles`` times at random moments, restarting it each
    time on the same state file, while runs change status and deliveries are in flight
    (the receiver takes 0.2 s to answer). Then let it finish and check everything."""
    rng = random.Random(seed)
    span = 3.0 * cycles  # the runs keep changing status over about the whole test
    submit = [{"durations": [rng.uniform(0.5, span / 3) for _ in range(3)]} for _ in range(runs)]
    receiver = SlowReceiver(SECRET, delay=0.2)
    receiver.start()
    receivers.append(receiver)
    watch = make_watch(tmp_path, procs, seed=seed, submit=submit, receiver=receiver)
    moments: Counter[str] = Counter()
    for cycle in range(cycles):
        if cycle % 4 == 3:
            # During start-up: opening and migrating the state, the first poll cycle.
            daemon = watch.start(listening=False)
            time.sleep(rng.uniform(0.1, 1.2))
        else:
            daemon = watch.start()
            time.sleep(rng.uniform(0.05, 2.5))
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.proc.returncode}: {tail(daemon.log)}")
        killed_at = time.monotonic()
        daemon.proc.send_signal(signal.SIGKILL)
        assert daemon.proc.wait(timeout=10) == -signal.SIGKILL
        ready = daemon.probe("/readyz")  # nothing answers: it is gone
        assert ready is None
        in_flight = [h for h in receiver.hits() if killed_at - receiver.delay < h.at <= killed_at]
        moments["delivering" if in_flight else "other"] += 1
    print(f"SIGKILL moments over {cycles} cycles: {dict(moments)}")

    watch.start().wait_ready(timeout=30)
    truth = wait_settled(watch, timeout=span + 60)
    events = wait_delivered(watch, timeout=90)
    check_registry(watch, truth)
    check_events(events, truth)
    check_deliveries(receiver, events, exactly_once=False)
    assert db_query(watch.db, "PRAGMA integrity_check") == [("ok",)]
    sigterm(watch)
    no_traceback(watch)


def test_sigkill_at_random_moments_5_cycles(
    tmp_path: Path, procs: Processes, receivers: list[WebhookReceiver]
) -> None:
    _sigkill_cycles(tmp_path, procs, receivers, cycles=5, runs=40, seed=71)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_at_random_moments_20_cycles(
    tmp_path: Path, procs: Processes, receivers: list[WebhookReceiver]
) -> None:
    _sigkill_cycles(tmp_path, procs, receivers, cycles=20, runs=80, seed=72)


# -- the state file -------------------------------------------------------------------------


def expect_state_exit(watch: Watch, *, timeout: float, phrase: str) -> str:
    """The daemon exits 3 with one ``state error: ...`` line naming the file and ``phrase``,
    and no traceback; returns that line."""
    daemon = watch.daemon
    assert daemon is not None
    try:
        code = daemon.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout} s: {tail(daemon.log)}") from None
    assert code == EXIT_STARTUP, tail(daemon.log)
    lines = [
        line
        for line in daemon.log.read_text(errors="replace").splitlines()
        if line.startswith("state error:")
    ]
    assert len(lines) == 1, tail(daemon.log)
    assert str(watch.db) in lines[0], lines[0]
    assert phrase in lines[0], lines[0]
    no_traceback(watch)
    return lines[0]


def _garbage(path: Path, offset: int, size: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(random.Random(offset).randbytes(size))


def test_state_file_corrupted_before_start_exits_3(tmp_path: Path, procs: Processes) -> None:
    """Garbage over the header: ``run`` and ``list`` exit 3 naming the file; the file is
    left as it was (never silently replaced by an empty one)."""
    watch = make_watch(tmp_path, procs, seed=81, runs=3)
    _garbage(watch.db, 0, 4096)
    before = watch.db.read_bytes()
    watch.start(listening=False)
    line = expect_state_exit(watch, timeout=20, phrase="not an SQLite database")
    assert "corrupted" in line
    done = run_cli("list", "--json", "-c", str(watch.config), env=watch.env, cwd=tmp_path)
    assert done.returncode == EXIT_STARTUP
    assert done.stderr.startswith("state error:"), done.stderr
    assert "Traceback" not in done.stderr
    assert watch.db.read_bytes() == before


@pytest.mark.parametrize("strategy", ["per-run", pytest.param("batch", marks=pytest.mark.slow)])
def test_state_file_partly_corrupted_is_not_a_silent_stall(
    tmp_path: Path, procs: Processes, strategy: str
) -> None:
    """A valid header but a corrupted event-log page: the registry reads fine, recording a
    transition fails. The daemon must not keep running while silently dropping the runs
    whose transitions it cannot record (it did: ``poll_crashed``, then never polled them
    again); it exits 3 with a clear message. Both pollers (GetRunStatus, DescribeRuns)."""
    watch = make_watch(
        tmp_path,
        procs,
        seed=82,
        submit=[{"durations": [2, 2, 8]}] * 6,
        polling={"interval_seconds": 1, "strategy": strategy},
    )
    watch.start().wait_ready(timeout=30)
    sigterm(watch)
    conn = sqlite3.connect(watch.db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'events'"
        ).fetchone()
        (page,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    _garbage(watch.db, (root - 1) * page, page)
    watch.start(listening=False)
    expect_state_exit(watch, timeout=30, phrase="corrupted")


def _hold_exclusive(db: Path, seconds: float, daemon: Daemon) -> float:
    """Hold SQLite's write lock for up to ``seconds`` (or until the daemon exits)."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        while time.monotonic() - started < seconds and daemon.proc.poll() is None:
            time.sleep(0.1)
        conn.execute("ROLLBACK")
        return time.monotonic() - started
    finally:
        conn.close()


def test_state_file_locked_by_another_process_exits_3_then_recovers(
    tmp_path: Path, procs: Processes
) -> None:
    """Another process holds the write lock (BEGIN EXCLUSIVE) longer than the daemon's 5 s
    busy_timeout: the daemon exits 3 naming the lock (documented: a supervisor restarts
    it); started again once the lock is gone, it catches up with every run.

    The runs start once the daemon is ready, and the lock is taken once it has recorded
    one of them as still active: its next poll of that run must write (a transition or
    the poll time). Runs submitted before the daemon started could all be over by the time
    a busy machine had it ready; it then had nothing to write and never met the lock."""
    watch = make_watch(tmp_path, procs, seed=83)
    daemon = watch.start()
    daemon.wait_ready(timeout=30)
    track_new_runs(watch, [{"durations": [1, 1, 6]}] * 10)
    wait_for(
        lambda: (
            db_query(watch.db, "SELECT 1 FROM runs WHERE status IS NOT NULL AND terminal = 0")
            or None
        ),
        timeout=30,
        what="a run recorded as active",
    )
    held = _hold_exclusive(watch.db, 20, daemon)
    assert held >= 5, f"gave up after {held:.1f} s, before its busy_timeout"
    expect_state_exit(watch, timeout=5, phrase="locked by another process")
    watch.start().wait_ready(timeout=30)
    truth = wait_settled(watch, timeout=60)
    check_registry(watch, truth)
    check_events(db_events(watch.db), truth)
    wait_outbox_empty(watch, timeout=20)
    sigterm(watch)


@pytest.mark.slow
def test_state_file_deleted_while_running_is_reported(tmp_path: Path, procs: Processes) -> None:
    """The state file (and its -wal/-shm) deleted under a running daemon: it must not go on
    writing into a file nobody can see again (a silent loss of every later event and of the
    registry); it exits 3 naming the file."""
    watch = make_watch(tmp_path, procs, seed=84, submit=[{"durations": [1, 2, 10]}] * 6)
    watch.start().wait_ready(timeout=30)
    time.sleep(1)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{watch.db}{suffix}").unlink(missing_ok=True)
    expect_state_exit(watch, timeout=20, phrase="deleted")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs at ``tmp_path/full`` (needs root and mount permission: else skip)."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_disk_full_exits_3_then_recovers(
    tmp_path: Path, procs: Processes, small_tmpfs: Path
) -> None:
    """The state file on a 4 MiB tmpfs that fills up while the daemon runs: it exits 3
    ("database or disk is full"), and once space is freed a restart catches up."""
    watch = make_watch(
        tmp_path,
        procs,
        seed=85,
        submit=[{"durations": [1, 2, 10]}] * 10,
        state={"path": str(small_tmpfs / "state.db")},
    )
    assert watch.db.parent == small_tmpfs
    try:
        watch.start().wait_ready(timeout=30)
        time.sleep(1)
        filler = _fill(small_tmpfs)
        expect_state_exit(watch, timeout=20, phrase="disk is full")
        filler.unlink()
        watch.start().wait_ready(timeout=30)
        truth = wait_settled(watch, timeout=60)
        check_registry(watch, truth)
        check_events(db_events(watch.db), truth)
        wait_outbox_empty(watch, timeout=20)
        sigterm(watch)
    finally:
        if watch.daemon is not None and watch.daemon.proc.poll() is None:
            watch.daemon.proc.kill()
            watch.daemon.proc.wait(timeout=10)
