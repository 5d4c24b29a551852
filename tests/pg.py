"""A throwaway PostgreSQL 15 cluster for the tests (and benchmarks) of the PostgreSQL backend.

Why a real server: the PostgreSQL backend's whole point is what the database guarantees (row
locks, transactional DDL, advisory locks, the server's clock, a killed backend), which no mock
plays. A cluster is cheap: ``initdb`` with ``--no-sync`` and a server with ``fsync = off`` start
in about a second, and each test gets its own database, copied from a template.

How:
- The server programs are looked up on the PATH, then in ``/usr/lib/postgresql/15/bin`` (Debian
  installs them there and puts only the client programs on the PATH); ``scripts/test-deps``
  installs ``postgresql-15`` where it is missing.
- The cluster lives in a fresh folder under the system temp dir (not pytest's ``tmp_path``,
  whose parents are private to the user running pytest). PostgreSQL refuses to run as root, so
  when the tests run as root the folder is given to the ``postgres`` user and the server
  programs run as that user.
- It listens on a Unix socket in that folder (local connections are trusted: only the folder's
  owner can reach the socket) and on ``127.0.0.1`` at a free port, where a random password is
  required (other local users could reach the port).
- One cluster per pytest process: under xdist each worker starts its own, so nothing is shared
  between processes and each is stopped (``pg_ctl stop -m immediate``) and deleted when its
  session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import asyncpg

from watcher.store.pg.schema import migrate

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
SUPERUSER = "postgres"
# Settings for a disposable server: durability off (nothing here must survive a crash),
# small memory, enough connections for the pool and lease tests of two workers.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "max_wal_size": "256MB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "jit": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


class PostgresMissing(RuntimeError):
    """The PostgreSQL 15 server programs are not installed (run scripts/test-deps)."""


def server_program(name: str) -> str:
    """Where the server program ``name`` (``initdb``, ``pg_ctl``) is installed."""
    found = shutil.which(name)
    if found is not None:
        return found
    for folder in PG_BIN_DIRS:
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise PostgresMissing(
        f"{name} not found on the PATH nor in {', '.join(PG_BIN_DIRS)}: "
        "run scripts/test-deps to install postgresql-15"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the server may still lose it to a
    race: :meth:`Cluster.start` retries with another one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def lock_waited(watch: asyncpg.Connection, query: str = "", *, timeout: float = 30.0) -> None:
    """Until another session of ``watch``'s database, running a statement that starts with
    ``query``, waits on a lock: how a test knows a statement has reached the lock it is meant
    to wait on before it lets the holder go. ``TimeoutError`` after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not await watch.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid() AND datname = current_database() "
            "AND starts_with(query, $1)",
            query,
        ):
            await asyncio.sleep(0.02)


@dataclass
class Cluster:
    """A running throwaway cluster; :meth:`start` makes one, :meth:`stop` removes it."""

    folder: Path
    port: int
    password: str
    run_as: str | None  # the OS user the server runs as (None: ourselves)
    _names: Iterator[int] = field(default_factory=itertools.count)
    _migrated: str | None = None

    @property
    def socket_dir(self) -> str:
        return str(self.folder)

    def url(self, database: str = "postgres", *, tcp: bool = True) -> str:
        """A libpq URL for ``database``: over TCP with the password, or over the socket."""
        if tcp:
            return (
                f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:"
                f"{self.port}/{database}"
            )
        return (
            f"postgresql://{SUPERUSER}@/{database}?host={quote(self.socket_dir, safe='')}"
            f"&port={self.port}"
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql over the socket; returns its unaligned output."""
        done = subprocess.run(
            [
                server_program("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.socket_dir,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def new_database(self, template: str = "template1") -> str:
        """A fresh database copied from ``template``; returns its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    @contextlib.contextmanager
    def database(self, template: str = "template1") -> Iterator[str]:
        """A fresh database copied from ``template`` for the block, as a TCP URL; dropped
        afterwards with whatever connections the block left open on it."""
        name = self.new_database(template)
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)

    def migrated_template(self) -> str:
        """A template database with the PostgreSQL state's schema (made once, by the real
        migration code), for :meth:`database`."""
        if self._migrated is None:
            name = self.new_database()
            url = self.url(name)

            async def apply() -> None:
                conn = await asyncpg.connect(url)
                try:
                    await migrate(conn)
                finally:
                    await conn.close()

            # In a thread of its own: a test's event loop may be running in this one.
            with ThreadPoolExecutor(max_workers=1) as worker:
                worker.submit(asyncio.run, apply()).result()
            self._migrated = name
        return self._migrated

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending the connections a test left open on it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @classmethod
    def start(cls, attempts: int = 5) -> Cluster:
        """initdb and start a cluster in a new temp folder (see the module docstring)."""
        run_as = SUPERUSER if os.geteuid() == 0 else None
        folder = Path(tempfile.mkdtemp(prefix="omw-pg-"))
        try:
            if run_as is not None:
                entry = pwd.getpwnam(run_as)
                os.chown(folder, entry.pw_uid, entry.pw_gid)
            password = secrets.token_urlsafe(18)
            _initdb(folder, password, run_as)
            for _ in range(attempts):
                cluster = cls(folder, free_port(), password, run_as)
                outcome = _pg_ctl_start(cluster)
                if outcome == "started":
                    return cluster
                if outcome != "port taken":
                    break
            log = folder / "server.log"
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"the test PostgreSQL server did not start:\n{text}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def stop(self) -> None:
        """Stop the server at once (nothing in it must survive) and delete its folder."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _run(
                [
                    server_program("pg_ctl"),
                    "stop",
                    "-D",
                    str(self.folder / "data"),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                ],
                self.run_as,
            )
        shutil.rmtree(self.folder, ignore_errors=True)


def _run(argv: list[str], run_as: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        user=run_as,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd="/",  # the postgres user may not be allowed into our working directory
        env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
    )


def _initdb(folder: Path, password: str, run_as: str | None) -> None:
    secret = folder / "pwfile"
    secret.write_text(password + "\n")
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(secret, entry.pw_uid, entry.pw_gid)
    secret.chmod(0o600)
    done = _run(
        [
            server_program("initdb"),
            "-D",
            str(folder / "data"),
            "-U",
            SUPERUSER,
            f"--pwfile={secret}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        ],
        run_as,
    )
    secret.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")


def _pg_ctl_start(cluster: Cluster) -> str:
    """Start the server: ``started``, ``port taken`` (try another) or ``failed``."""
    settings = {
        **SERVER_SETTINGS,
        "port": str(cluster.port),
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": cluster.socket_dir,
    }
    options = " ".join(f"-c {key}={value}" for key, value in settings.items())
    log = cluster.folder / "server.log"
    data = str(cluster.folder / "data")
    done = _run(
        [server_program("pg_ctl"), "start", "-D", data, "-l", str(log), "-o", options, "-w"],
        cluster.run_as,
    )
    if done.returncode == 0:
        return "started"
    text = log.read_text(errors="replace") if log.exists() else ""
    return "port taken" if "could not bind" in text or "already in use" in text else "failed"
