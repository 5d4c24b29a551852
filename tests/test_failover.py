"""Failover, end to end: two real daemons (``omics-watcher run``) on one PostgreSQL database,
against the simulator, each delivering to its own Standard Webhooks receiver.

300 runs change over 20 s; midway the active daemon is SIGKILLed, cut off from the database
(its connections ended with ``pg_terminate_backend`` and none let in again until it lost
its lease), or frozen (SIGSTOP) past its lease and thawed. What is judged, from independent
records (the simulator's timeline and per-second arrivals, the database read by this
process, the receivers):

- the standby takes over within ``lease_seconds`` + one poll interval of the disruption;
- every run's final status is in the registry and every recorded event was delivered (a
  redelivery after a takeover keeps the event id and body: no event id with two bodies);
- no transition recorded twice, every chain follows what really happened;
- at most 20 GetRunStatus arrived in any 1 s window over the whole test, across both;
- the daemon that lost its lease wrote nothing after the takeover (an audit trigger
  records the database role of every write to runs, events and outbox: each daemon has its
  own role) and began no send after it: nothing reached its receiver after the takeover,
  except, from the frozen one, sends it had begun before SIGSTOP (by their signed
  ``webhook-timestamp``), which leave at the thaw and which the new active daemon delivered
  too; thawed or reconnected, it is a standby (``/readyz`` 503 ``standby``) and stays one;
- the standby serves meanwhile (``/healthz``, ``/metrics`` saying standby, the admin API);
- SIGTERM on the active daemon releases the lease after draining, and the standby takes
  over from the release, not from an expiry.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from notify_receiver import Hit, WebhookReceiver
from pg import Cluster
from support import (
    Daemon,
    Processes,
    Simulator,
    clean_env,
    daemon_config,
    free_port,
    start_daemon,
    start_simulator,
    stop,
    tail,
    wait_for,
    write_config,
)
from test_faults import TERMINAL, check_deliveries, check_events

from watcher.store.codec import decode_body
from watcher.store.models import TrackRequest
from watcher.store.pg.store import PgStore

TOKEN = "failover-admin-token-0123456789abcdef"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LEASE = 3.0
INTERVAL = 5.0  # [polling] interval_seconds; 300 runs at 20/s take 15 s a round anyway
RUNS = 300
RUN_SECONDS = 20
GRACE = 5.0
ROLES = ("watcher_a", "watcher_b")
PASSWORD = "failover-role-pass"

AUDIT_SQL = """
CREATE TABLE audit (who text, tbl text, op text, at double precision, epoch bigint);
CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit VALUES (current_user, TG_TABLE_NAME, TG_OP,
                              extract(epoch FROM clock_timestamp()), NULL);
    RETURN NULL;
END $$;
CREATE FUNCTION audit_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.epoch IS DISTINCT FROM OLD.epoch THEN
        INSERT INTO audit VALUES (current_user, 'lease', 'takeover',
                                  extract(epoch FROM clock_timestamp()), NEW.epoch);
    ELSIF NEW.holder IS NULL AND OLD.holder IS NOT NULL THEN
        INSERT INTO audit VALUES (current_user, 'lease', 'release',
                                  extract(epoch FROM clock_timestamp()), NEW.epoch);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER audit_runs AFTER INSERT OR UPDATE OR DELETE ON runs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit_events AFTER INSERT OR UPDATE OR DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit_outbox AFTER INSERT OR UPDATE OR DELETE ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit_lease AFTER UPDATE ON lease
    FOR EACH ROW EXECUTE FUNCTION audit_lease();
"""


def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on a connection of this process (the test is synchronous)."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@dataclass
class Pair:
    """The simulator, the database, two daemons (each with its role and receiver)."""

    tmp: Path
    procs: Processes
    cluster: Cluster
    admin_url: str
    sim: Simulator
    runs: list[str]
    receivers: dict[str, WebhookReceiver]
    configs: dict[str, Path] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    daemons: dict[str, Daemon] = field(default_factory=dict)
    disrupted_at: float = 0.0  # time.time() of the disruption

    def role_url(self, role: str) -> str:
        return self.admin_url.replace(
            f"postgres:{self.cluster.password}@", f"{role}:{PASSWORD}@", 1
        )

    def start(self, role: str) -> Daemon:
        env = clean_env(self.tmp / f"home-{role}")
        daemon = start_daemon(
            self.procs,
            self.configs[role],
            port=self.ports[role],
            env=env,
            admin_token=TOKEN,
            log_name=f"{role}-{len(self.daemons)}.log",
        )
        self.daemons[role] = daemon
        daemon.wait_listening(timeout=60)
        return daemon

    def logged(self, role: str, event: str) -> list[dict[str, Any]]:
        return [r for r in self.daemons[role].logs() if r.get("event") == event]

    def readiness(self, role: str) -> str | None:
        reply = self.daemons[role].probe("/readyz")
        if reply is None:
            return None
        return "ready" if reply.status == 200 else str(reply.json().get("reason"))

    def takeovers(self) -> list[tuple[str, float, int]]:
        rows = query(
            self.admin_url,
            "SELECT who, at, epoch FROM audit WHERE tbl = 'lease' AND op = 'takeover' ORDER BY at",
        )
        return [(r["who"], float(r["at"]), int(r["epoch"])) for r in rows]

    def writes_after(self, role: str, since: float) -> list[tuple[str, str, float]]:
        rows = query(
            self.admin_url,
            "SELECT tbl, op, at FROM audit WHERE who = $1 AND tbl <> 'lease' AND at > $2",
            role,
            since,
        )
        return [(r["tbl"], r["op"], float(r["at"])) for r in rows]

    def truth(self) -> dict[str, list[str]]:
        seq = self.sim.statuses()
        return {run: seq[run] for run in self.runs}

    def registry(self) -> dict[str, str | None]:
        rows = query(self.admin_url, "SELECT run_uuid, status FROM runs WHERE tracked")
        return {r["run_uuid"]: r["status"] for r in rows}

    def events(self) -> list[dict[str, Any]]:
        rows = query(self.admin_url, "SELECT body FROM events ORDER BY seq")
        return [json.loads(decode_body(bytes(r["body"]))) for r in rows]

    def outbox_left(self) -> int:
        rows = query(self.admin_url, "SELECT count(*) AS n FROM outbox WHERE state <> 'delivered'")
        return int(rows[0]["n"])


class BothReceivers:
    """The two receivers as one, for :func:`test_faults.check_deliveries`."""

    def __init__(self, receivers: dict[str, WebhookReceiver]) -> None:
        self._receivers = receivers

    def hits(self) -> list[Hit]:
        merged = [hit for r in self._receivers.values() for hit in r.hits()]
        return sorted(merged, key=lambda hit: hit.at)

    def accepted(self) -> list[Hit]:
        return [hit for hit in self.hits() if hit.ok]


def _roles(cluster: Cluster, database: str) -> None:
    for role in ROLES:
        cluster.psql(
            f"DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        cluster.psql(f"ALTER ROLE {role} CONNECTION LIMIT -1")
        cluster.psql(
            f"GRANT USAGE, CREATE ON SCHEMA public TO {role}; "
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}; "
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
            database,
        )


@pytest.fixture
def pair(tmp_path: Path, procs: Processes, pg_cluster: Cluster) -> Iterator[Pair]:
    with (
        pg_cluster.database(pg_cluster.migrated_template()) as admin_url,
        WebhookReceiver(SECRET) as hook_a,
        WebhookReceiver(SECRET) as hook_b,
    ):
        database = admin_url.rsplit("/", 1)[1]
        pg_cluster.psql(AUDIT_SQL, database)
        _roles(pg_cluster, database)
        sim = start_simulator(
            procs, tmp_path / "sim", "--runs", str(RUNS), "--run-seconds", str(RUN_SECONDS),
            "--seed", "15",
        )  # fmt: skip
        pair = Pair(
            tmp_path,
            procs,
            pg_cluster,
            admin_url,
            sim,
            sim.runs,
            {"watcher_a": hook_a, "watcher_b": hook_b},
        )
        _track(admin_url, sim.runs)
        for role, hook in pair.receivers.items():
            port = free_port()
            settings = daemon_config(
                tmp_path / role, sim=sim, port=port, admin_token=TOKEN, grace=GRACE,
                interval_seconds=INTERVAL,
            )  # fmt: skip
            settings["state"] = {"url": pair.role_url(role), "lease_seconds": LEASE}
            settings["notifiers"] = [
                {"name": "hook", "type": "webhook", "url": hook.url, "secret": SECRET}
            ]
            pair.configs[role] = write_config(tmp_path / role / "watcher.toml", settings)
            pair.ports[role] = port
        try:
            yield pair
        finally:
            for role in ROLES:
                pg_cluster.psql(f"ALTER ROLE {role} CONNECTION LIMIT -1")
            for daemon in pair.daemons.values():
                if daemon.proc.poll() is None:
                    daemon.proc.send_signal(signal.SIGCONT)


def _track(url: str, runs: list[str]) -> None:
    async def track() -> None:
        store = await PgStore.open(url)
        try:
            await store.track([TrackRequest(run_uuid=run) for run in runs])
        finally:
            await store.close()

    asyncio.run(track())


def _active_then_standby(pair: Pair) -> None:
    """A starts first and becomes active; B starts and is a standby."""
    pair.start("watcher_a")
    wait_for(lambda: pair.logged("watcher_a", "lease_active") or None, timeout=60, what="A active")
    pair.start("watcher_b")
    wait_for(lambda: pair.readiness("watcher_b") == "standby", timeout=60, what="B a standby")
    assert pair.readiness("watcher_a") in ("starting", "ready")
    # The standby serves: health, metrics (saying standby), the admin API from the database.
    standby = pair.daemons["watcher_b"]
    assert standby.request("GET", "/healthz").status == 200
    assert 'omics_watcher_polling_state{state="standby"} 1.0' in standby.metrics()
    page = standby.admin("GET", "/v1/runs?limit=5")
    assert page.status == 200
    assert len(page.json()["runs"]) == 5


def _takeover_by(pair: Pair, role: str, after: float) -> float:
    """The database time at which ``role`` took the lease over after ``after``."""

    def found() -> float | None:
        for who, at, _epoch in pair.takeovers():
            if who == role and at > after:
                return at
        return None

    return wait_for(found, timeout=60, interval=0.2, what=f"{role} to take over")


def _begun_at(hit: Hit) -> int:
    """When the daemon began this send, to the second: its signed ``webhook-timestamp``.

    The webhook notifier signs in the same step of the event loop as the lease gate
    (:func:`watcher.replica.lease_trace`, aiohttp's request-start hook) lets the request
    start: nothing between them awaits."""
    return int(hit.headers["webhook-timestamp"])


def _settle_and_check(
    pair: Pair, *, lost: str, lost_at: float, stopped_at: float | None = None
) -> None:
    """Wait until every final status is recorded and every event delivered, then judge.

    ``stopped_at``: when the daemon that lost the lease was frozen (SIGSTOP), if it was. A
    request the lease gate let start before then is not recalled: its bytes may leave at
    the thaw, after the takeover (its mark is fenced out, so the new active daemon sends
    the event too). Anything begun later fails the test.
    """

    def settled() -> dict[str, list[str]] | None:
        truth = pair.truth()
        if any(seq[-1] not in TERMINAL for seq in truth.values()):
            return None
        registry = pair.registry()
        if any(registry.get(run) != seq[-1] for run, seq in truth.items()):
            return None
        return truth

    truth = wait_for(settled, timeout=180, interval=0.5, what="every final status recorded")
    both = BothReceivers(pair.receivers)

    def delivered() -> list[dict[str, Any]] | None:
        events = pair.events()
        accepted = {hit.webhook_id for hit in both.accepted()}
        if {e["id"] for e in events} <= accepted and pair.outbox_left() == 0:
            return events
        return None

    events = wait_for(delivered, timeout=120, interval=0.5, what="every event delivered")
    check_events(events, truth)
    check_deliveries(both, events, exactly_once=False)  # type: ignore[arg-type]
    stats = pair.sim.stats()
    print(  # the figures for the report (pytest -s)
        f"failover: {len(events)} events, {len(both.accepted())} accepted deliveries, "
        f"max GetRunStatus in 1 s {stats['max_window_arrivals']['GetRunStatus']}, "
        f"takeover {lost_at - pair.disrupted_at:.2f} s after the disruption"
    )
    assert stats["max_window_arrivals"]["GetRunStatus"] <= 20, stats["max_window_arrivals"]
    assert stats["throttled_total"] == 0
    # The daemon that lost the lease wrote nothing after the takeover, began no send after.
    assert pair.writes_after(lost, lost_at) == []
    late = [hit for hit in pair.receivers[lost].hits() if hit.wall > lost_at]
    print(f"failover: {len(late)} sends from {lost} reached its receiver after the takeover")
    begun_late = [hit for hit in late if stopped_at is None or _begun_at(hit) >= stopped_at]
    assert begun_late == [], [
        (hit.webhook_id, _begun_at(hit), round(hit.wall - lost_at, 3)) for hit in begun_late
    ]
    # Begun before the freeze: the new active daemon delivered each of them too.
    (taker,) = (role for role in ROLES if role != lost)
    again = {hit.webhook_id for hit in pair.receivers[taker].accepted()}
    assert {hit.webhook_id for hit in late} <= again


def _stop_all(pair: Pair) -> None:
    for role, daemon in pair.daemons.items():
        if daemon.proc.poll() is None:
            code = stop(daemon.proc, signal.SIGTERM, timeout=GRACE + 30)
            assert code == 0, f"{role}: {tail(daemon.log)}"


def test_sigkill_of_the_active_daemon(pair: Pair) -> None:
    _active_then_standby(pair)
    time.sleep(8)
    killed_at = pair.disrupted_at = time.time()
    pair.daemons["watcher_a"].proc.send_signal(signal.SIGKILL)
    pair.daemons["watcher_a"].proc.wait(timeout=30)
    took = _takeover_by(pair, "watcher_b", killed_at) - killed_at
    assert took <= LEASE + INTERVAL, f"the standby took {took:.1f} s to take over"
    _settle_and_check(pair, lost="watcher_a", lost_at=killed_at + took)
    _stop_all(pair)


def test_the_active_daemon_cut_off_from_the_database(pair: Pair) -> None:
    _active_then_standby(pair)
    time.sleep(8)
    cut_at = pair.disrupted_at = time.time()
    # No new connection for watcher_a, and every one it has ended: a network cut, as the
    # database sees it.
    pair.cluster.psql("ALTER ROLE watcher_a CONNECTION LIMIT 0")
    pair.cluster.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'watcher_a'"
    )
    taken = _takeover_by(pair, "watcher_b", cut_at)
    assert taken - cut_at <= LEASE + INTERVAL, f"took {taken - cut_at:.1f} s"
    wait_for(lambda: pair.readiness("watcher_a") == "standby", timeout=60, what="A a standby")
    pair.cluster.psql("ALTER ROLE watcher_a CONNECTION LIMIT -1")
    _settle_and_check(pair, lost="watcher_a", lost_at=taken)
    assert pair.readiness("watcher_a") == "standby"  # it rejoined as a standby and stays one
    assert pair.logged("watcher_a", "lease_lost")
    _stop_all(pair)


def _stopped(pid: int) -> float:
    """The time by which the process ``pid``, sent SIGSTOP, is stopped (``T`` in
    ``/proc/PID/stat``): it runs no code from then until SIGCONT."""

    def state() -> str:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]

    wait_for(lambda: state() == "T", timeout=30, interval=0.01, what="the daemon stopped")
    return time.time()


def test_the_active_daemon_frozen_past_its_lease(pair: Pair) -> None:
    _active_then_standby(pair)
    time.sleep(8)
    frozen = pair.daemons["watcher_a"].proc
    frozen_at = pair.disrupted_at = time.time()
    frozen.send_signal(signal.SIGSTOP)
    try:
        stopped_at = _stopped(frozen.pid)
        taken = _takeover_by(pair, "watcher_b", frozen_at)
        assert taken - frozen_at <= LEASE + INTERVAL, f"took {taken - frozen_at:.1f} s"
        time.sleep(LEASE)  # well past its lease, with the new active daemon at work
    finally:
        frozen.send_signal(signal.SIGCONT)
    wait_for(lambda: pair.readiness("watcher_a") == "standby", timeout=60, what="A a standby")
    # Frozen for more than LEASE seconds: one-second timestamps tell its sides apart.
    _settle_and_check(pair, lost="watcher_a", lost_at=taken, stopped_at=stopped_at)
    assert pair.readiness("watcher_a") == "standby"
    assert pair.logged("watcher_a", "lease_lost")
    # SIGTERM on the active daemon drains, then releases the lease: the thawed standby
    # takes over at its next try, without waiting for the lease to run out.
    active = pair.daemons["watcher_b"]
    assert stop(active.proc, signal.SIGTERM, timeout=GRACE + 30) == 0, tail(active.log)
    assert pair.logged("watcher_b", "lease_released")
    (released,) = query(
        pair.admin_url, "SELECT at FROM audit WHERE op = 'release' AND who = 'watcher_b'"
    )
    handed = _takeover_by(pair, "watcher_a", taken) - float(released["at"])
    assert handed < LEASE, f"took {handed:.1f} s after the release"  # no expiry waited out
    wait_for(
        lambda: pair.readiness("watcher_a") in ("starting", "ready") or None,
        timeout=60,
        what="A active again",
    )
    _stop_all(pair)
