"""What the README's PostgreSQL deployment sections promise, against a real PostgreSQL 15:
the role from ``deploy/postgresql/omics-watcher-role.sql`` (run with psql, as its header says)
is enough for the daemon's store and lease and for nothing more, and the URL's ``sslmode``
does what libpq's does (``disable``, ``require``, ``verify-full`` with ``sslrootcert``,
refusing a certificate for another host or from another CA), errors naming the database
and never the URL."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from notify_receiver import WebhookReceiver
from pg import Cluster, server_program
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
    tail,
    wait_for,
    write_config,
)

from watcher.store.api import open_async_store
from watcher.store.db import StateError
from watcher.store.models import TrackRequest
from watcher.store.pg import lease
from watcher.store.pg.claim import LeaseClaim

ROOT = Path(__file__).resolve().parents[1]
ROLE_SQL = ROOT / "deploy" / "postgresql" / "omics-watcher-role.sql"
ROLE = "omics_watcher"
PASSWORD = "role-pass-Zq81"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _psql_file(cluster: Cluster, path: Path, database: str, **variables: str) -> None:
    argv = [server_program("psql"), "-X", "-q", "-h", cluster.socket_dir, "-p", str(cluster.port)]
    argv += ["-U", "postgres", "-d", database, "-f", str(path)]
    for name, value in variables.items():
        argv += ["-v", f"{name}={value}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def role_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database prepared by the role file; the role's URL to it."""
    with pg_cluster.database() as admin_url:
        database = admin_url.rsplit("/", 1)[1]
        _psql_file(pg_cluster, ROLE_SQL, database, password=PASSWORD)
        try:
            yield (
                f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@127.0.0.1:"
                f"{pg_cluster.port}/{database}"
            )
        finally:
            pg_cluster.psql(f"DROP OWNED BY {ROLE} CASCADE", database)
            pg_cluster.drop_database(database)
            pg_cluster.psql(f"DROP ROLE {ROLE}")


async def test_the_role_runs_the_store_and_the_lease_and_nothing_more(role_url: str) -> None:
    store = await open_async_store(url=role_url, lease_seconds=3)  # creates the schema
    claim = LeaseClaim(role_url, lease_seconds=3, holder="daemon-a")
    claim.start()
    try:
        await store.track([TrackRequest(run_uuid="r1", project_id="p")])
        term = await claim.next_term()
        store.bind(claim.grant)  # type: ignore[attr-defined]
        await store.record_polls([("r1", datetime.now(UTC))])  # a fenced write
        assert (await store.get_run("r1")) is not None
    finally:
        await claim.aclose()
        await store.close()
    conn = await asyncpg.connect(role_url)
    try:
        assert (await lease.state(conn)).epoch == term.epoch
        # The tables are in the role's own schema, not in public.
        schemas = await conn.fetch(
            "SELECT DISTINCT table_schema FROM information_schema.tables "
            "WHERE table_name IN ('runs', 'events', 'outbox', 'lease')"
        )
        assert [r["table_schema"] for r in schemas] == [ROLE]
        for refused in (
            "CREATE TABLE public.intruder (x int)",
            "CREATE DATABASE another",
            "CREATE ROLE another",
            "ALTER SYSTEM SET work_mem = '1GB'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(refused)
    finally:
        await conn.close()
    # A second start (a replica, a restart) finds the schema current and changes nothing.
    again = await open_async_store(url=role_url, lease_seconds=3)
    await again.close()


# -- TLS ------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr


def _certificates(folder: Path) -> None:
    """A CA, a server certificate for ``localhost`` signed by it, and a second, unrelated CA."""
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            cwd=folder,
        )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr", cwd=folder,
    )  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
        cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[tuple[Cluster, Path]]:
    """A cluster of its own with TLS on (server certificate for localhost)."""
    cluster = Cluster.start()
    try:
        certs = cluster.folder / "tls"
        certs.mkdir()
        _certificates(certs)
        if cluster.run_as is not None:
            subprocess.run(["chown", "-R", cluster.run_as, str(certs)], check=True)
        (certs / "server.key").chmod(0o600)
        cluster.psql(f"ALTER SYSTEM SET ssl_cert_file = '{certs / 'server.pem'}'")
        cluster.psql(f"ALTER SYSTEM SET ssl_key_file = '{certs / 'server.key'}'")
        cluster.psql("ALTER SYSTEM SET ssl = on")
        cluster.psql("SELECT pg_reload_conf()")
        yield cluster, certs
    finally:
        cluster.stop()


def _url(cluster: Cluster, host: str, query: str) -> str:
    return (
        f"postgresql://postgres:{quote(cluster.password, safe='')}@{host}:{cluster.port}"
        f"/postgres?{query}"
    )


async def _uses_tls(url: str) -> bool:
    store = await open_async_store(url=url, create=True, lease_seconds=3)
    try:
        conn = await asyncpg.connect(url)
        try:
            return bool(
                await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            )
        finally:
            await conn.close()
    finally:
        await store.close()


async def test_sslmode_in_the_url(tls_cluster: tuple[Cluster, Path]) -> None:
    cluster, certs = tls_cluster
    ca = certs / "ca.pem"
    assert not await _uses_tls(_url(cluster, "127.0.0.1", "sslmode=disable"))
    assert await _uses_tls(_url(cluster, "127.0.0.1", "sslmode=require"))
    assert await _uses_tls(_url(cluster, "localhost", f"sslmode=verify-full&sslrootcert={ca}"))
    # The claim's own connection takes the same URL.
    claim = LeaseClaim(
        _url(cluster, "localhost", f"sslmode=verify-full&sslrootcert={ca}"),
        lease_seconds=3,
        holder="tls",
    )
    claim.start()
    try:
        await claim.next_term()
    finally:
        await claim.aclose()


@pytest.mark.parametrize(
    ("host", "ca"),
    [("127.0.0.1", "ca.pem"), ("localhost", "other-ca.pem")],
    ids=["certificate-for-another-host", "another-ca"],
)
async def test_verify_full_refuses_what_it_cannot_verify(
    tls_cluster: tuple[Cluster, Path], host: str, ca: str
) -> None:
    cluster, certs = tls_cluster
    url = _url(cluster, host, f"sslmode=verify-full&sslrootcert={certs / ca}")
    with pytest.raises(StateError) as caught:
        await open_async_store(url=url, lease_seconds=3)
    message = str(caught.value)
    assert "certificate" in message.lower() or "hostname" in message.lower(), message
    assert message.startswith("database postgres")
    assert cluster.password not in message
    assert "postgresql://" not in message


def test_the_daemon_and_the_cli_run_as_the_role(
    role_url: str, tmp_path: Path, procs: Processes
) -> None:
    """``track`` creates the schema in the role's own schema, ``run`` polls every run to its
    end and delivers to a signed webhook, ``list`` reads it back, SIGTERM exits 0, all as the
    role the SQL file makes."""
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "5", "--run-seconds", "4")
    port = free_port()
    with WebhookReceiver(SECRET) as hook:
        settings = daemon_config(tmp_path, sim=sim, port=port, grace=5)
        settings["state"] = {"url": role_url, "lease_seconds": 3}
        settings["notifiers"] = [
            {"name": "hook", "type": "webhook", "url": hook.url, "secret": SECRET}
        ]
        config = write_config(tmp_path / "watcher.toml", settings)
        env = clean_env(tmp_path / "home")
        done = run_cli(
            "track", "-c", str(config), "-", env=env, cwd=tmp_path, stdin="\n".join(sim.runs)
        )
        assert done.returncode == 0, done.stderr
        daemon = start_daemon(procs, config, port=port, env=env)
        daemon.wait_ready(timeout=60)

        def finished() -> list[dict[str, Any]] | None:
            rows = list_runs(config, env=env)
            return rows if all(row["terminal"] for row in rows) else None

        rows = wait_for(finished, timeout=120, interval=0.5, what="every run finished")
        assert sorted(row["run_uuid"] for row in rows) == sorted(sim.runs)
        wait_for(
            lambda: len(hook.accepted()) >= len(sim.runs) or None, timeout=60, what="deliveries"
        )
        assert all(hit.verified for hit in hook.hits())
        assert stop(daemon.proc, signal.SIGTERM, timeout=40) == 0, tail(daemon.log)
    assert not [r for r in daemon.logs() if r.get("level") in ("error", "critical")]
