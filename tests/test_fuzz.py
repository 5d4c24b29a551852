"""Fuzzing the inputs users control: each either works or gets a clear error, never a traceback.

Hypothesis generates the inputs, with bounded example counts so the whole module stays fast:

- configuration files (random TOML over the known keys and some unknown ones) plus
  ``OMICS_WATCHER_*`` environment overrides: :func:`load_settings` returns ``Settings`` or
  raises ``ConfigError`` whose lines each name a key path (``notifiers[0].url: ...``), one
  line per problem, never a secret; never any other exception;
- ``omics-watcher track`` input (arguments and ``-`` on stdin: unicode, very long lines, NUL,
  comments, labels): exit 0, or 2 naming every bad UUID; only canonical UUIDs are stored;
- admin API bodies (``POST /v1/runs``, random JSON or bytes): 201, 200 or 400 with an
  ``error``, never 500, against a real server and state file;
- user templates (random Jinja sources): a config error at load time, or a render that
  either works or falls back; the sandbox never lets ``__class__``/``__globals__`` through.

Processes are only used for a few fixed examples (real stdin bytes); everything else runs
in-process: ``watcher.cli.main`` and ``load_settings`` are what the console script calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import structlog
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import WATCHER, clean_env, http, run_cli

from watcher.cli import main as cli_main
from watcher.config import ConfigError, Settings, load_settings
from watcher.display import printable, printable_json
from watcher.notifiers.render import Renderer, message_for, template_context
from watcher.notifiers.templates import (
    TemplateRenderError,
    check_template,
    compile_template,
    render_template,
)
from watcher.sample_notify import sample_event
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.store import Store
from watcher.store.api import SqliteStore

FUZZ = settings(
    # 150 keeps the module at ~20 s; FUZZ_EXAMPLES=5000 for a deeper search.
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SECRET_MARK = "S3CRET-"  # every generated secret value starts with this


# == configuration ==========================================================================


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """A TOML inline value. JSON strings are TOML basic strings; lone surrogates (not valid
    in TOML) make the document invalid, which the loader must report, not crash on."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, body in doc.items():
        if isinstance(body, list) and body and all(isinstance(i, dict) for i in body):
            for item in body:
                lines.append(f"[[{toml_key(section)}]]")
                lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in item.items()]
        elif isinstance(body, dict):
            lines.append(f"[{toml_key(section)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items()]
        else:
            lines.insert(0, f"{toml_key(section)} = {toml_value(body)}")
    return "\n".join(lines) + "\n"


text = st.text(max_size=40)
scalars = st.one_of(
    st.none(),  # dropped by the emitter's caller (TOML has no null)
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e400",
            "http://127.0.0.1:9",
            "https://example.org/hook?token=abc",
            "127.0.0.1:0",
            "[::1]:9477",
            "per-run",
            "batch",
            "auto",
            "json",
            "debug",
            "webhook",
            "log",
            "slack",
            "email",
            "SUCCESS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "{{ status }}",
            "{% if %}",
            "/nonexistent/file",
            "a\x00b",
        ]
    ),
)


def no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [no_nulls(v) for v in value if v is not None]
    return value


values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=8,
)
secrets = st.text(min_size=4, max_size=20).map(lambda s: SECRET_MARK + s)

SECTIONS: dict[str, list[str]] = {
    "tencentcloud": [
        "endpoint",
        "region",
        "project_id",
        "credential_source",
        "language",
        "secret_id_file",
        "secret_key_file",
    ],
    "polling": [
        "rate_per_second",
        "interval_seconds",
        "request_timeout_seconds",
        "strategy",
        "terminal_statuses",
        "describe_rate_per_second",
        "calls_rate_per_second",
        "batch_size",
    ],
    "state": ["path"],
    "server": ["listen"],
    "stuck": ["after_seconds", "per_status", "per_label"],
    "daemon": ["shutdown_grace_seconds"],
    "logging": ["format", "level"],
}
SECRET_KEYS = {"tencentcloud": ("secret_id", "secret_key", "token"), "server": ("admin_token",)}
NOTIFIER_KEYS = [
    "name",
    "type",
    "url",
    "timeout_seconds",
    "max_age_seconds",
    "rate_per_minute",
    "title_template",
    "body_template",
    "digest",
    "rollup",
    "to",
    "smtp_host",
]
ROUTE_KEYS = ["notifiers", "statuses", "from_statuses", "terminal_only", "projects", "labels"]
WATCH_KEYS = ["project_id", "filters", "labels", "interval_seconds", "notify_existing"]


@st.composite
def table(draw: st.DrawFn, keys: list[str], secret_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    body = {key: draw(values) for key in chosen}
    for key in draw(st.lists(st.sampled_from(list(secret_keys) or ["-"]), unique=True)):
        if key != "-":
            body[key] = draw(secrets)
    if draw(st.integers(0, 9)) == 0:
        body[draw(text)] = draw(values)  # an unknown key
    return body


@st.composite
def config_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True)):
        doc[section] = draw(table(SECTIONS[section], SECRET_KEYS.get(section, ())))
    notifiers = []
    for _ in range(draw(st.integers(0, 2))):
        notifier = draw(table(NOTIFIER_KEYS, ("secret",)))
        if draw(st.booleans()):  # mostly plausible, to get past the union's tag
            notifier.setdefault("type", draw(st.sampled_from(["webhook", "log", "slack"])))
            notifier.setdefault("name", draw(st.sampled_from(["ops", "ops", "x y", ""])))
        notifiers.append(notifier)
    if notifiers:
        doc["notifiers"] = notifiers
    if draw(st.booleans()):
        doc["routes"] = [draw(table(ROUTE_KEYS)) for _ in range(draw(st.integers(1, 2)))]
    if draw(st.integers(0, 4)) == 0:
        doc["watch"] = [draw(table(WATCH_KEYS))]
    if draw(st.integers(0, 9)) == 0:
        doc[draw(text)] = draw(values)  # an unknown top-level key or section
    return no_nulls(doc)  # type: ignore[no-any-return]


ENV_KEYS = [
    "OMICS_WATCHER_POLLING__RATE_PER_SECOND",
    "OMICS_WATCHER_POLLING__TERMINAL_STATUSES",
    "OMICS_WATCHER_SERVER__LISTEN",
    "OMICS_WATCHER_SERVER__ADMIN_TOKEN",
    "OMICS_WATCHER_STUCK__PER_STATUS",
    "OMICS_WATCHER_NOTIFIERS__0__URL",
    "OMICS_WATCHER_NOTIFIERS__0__SECRET",
    "OMICS_WATCHER_NOTIFIERS__1__TYPE",
    "OMICS_WATCHER_NOTIFIERS__7__NAME",
    "OMICS_WATCHER_NOTIFIERS",
    "OMICS_WATCHER_ROUTES__0__NOTIFIERS",
    "OMICS_WATCHER_LOGGING",
    "OMICS_WATCHER_TENCENTCLOUD__SECRET_KEY_FILE",
    "OMICS_WATCHER___",
    "OMICS_WATCHER_",
    "OMICS_WATCHER_POLLING____X",
]
env_values = st.one_of(
    text.filter(lambda s: "\x00" not in s),
    values.map(lambda v: json.dumps(no_nulls(v))),
    st.sampled_from(["[", "{", "[1,", '{"a": 1}', "[]", "{}", "nan", "-0", "1e309"]),
)
env_keys = st.one_of(
    st.sampled_from(ENV_KEYS),
    st.lists(st.sampled_from(["POLLING", "NOTIFIERS", "0", "1", "URL", "X", ""]), max_size=4).map(
        lambda parts: "OMICS_WATCHER_" + "__".join(parts)
    ),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_config_error(problems: list[str], given: dict[str, Any], env: dict[str, str]) -> None:
    assert problems, "ConfigError without a problem"
    # Section names match in any case ([Polling]); problems name them in lower case, with
    # control characters escaped (watcher.display.printable).
    given_keys = [*given, *(k[len("OMICS_WATCHER_") :].split("__")[0] for k in env)]
    top = {printable(k.lower()) for k in given_keys}
    for line in problems:
        assert isinstance(line, str)
        assert "\n" not in line, f"a problem spans lines: {line!r}"
        assert SECRET_MARK not in line, f"a secret in an error: {line!r}"
        key, sep, message = line.partition(": ")
        assert sep, f"no 'key: message' shape: {line!r}"
        assert message.strip(), line
        head = re.split(r"[.\[]", key, maxsplit=1)[0].lower()
        assert key == "config" or head in top or key.startswith("["), (
            f"{line!r} names no key that was given"
        )


@FUZZ
@given(doc=config_docs(), env=st.dictionaries(env_keys, env_values, max_size=3))
@example(doc={"tencentcloud": {"secret_id_file": "/tmp/a\x00b"}}, env={})
@example(
    doc={"notifiers": [{"name": "ops", "type": "log"}]},
    env={"OMICS_WATCHER_NOTIFIERS__5__TYPE": "log"},
)
@example(doc={"polling": {"rate_per_second": math.nan}}, env={})
@example(
    doc={"notifiers": [{"name": "a", "type": "log", "body_template": "{{" + "(" * 150}]}, env={}
)
def test_config_files_and_env_overrides(
    scratch: Path, doc: dict[str, Any], env: dict[str, str]
) -> None:
    path = scratch / "config.toml"
    try:
        source = to_toml(doc)
        path.write_text(source, encoding="utf-8", errors="surrogatepass")
    except (UnicodeEncodeError, TypeError):
        return
    try:
        loaded = load_settings(str(path), environ=env)
    except ConfigError as exc:
        check_config_error(exc.problems, doc, env)
    else:
        assert isinstance(loaded, Settings)


@FUZZ
@given(
    raw=st.binary(max_size=300)
    | st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass"))
)
@example(raw=b"[polling]\nrate_per_second = 1\n[polling]\n")
@example(raw=b"\xff\xfe[state]")
@example(raw=b"a = 1979-05-27T07:32:00Z\n[server]\nlisten = 1979-05-27")
def test_config_files_of_any_bytes(scratch: Path, raw: bytes) -> None:
    path = scratch / "raw.toml"
    path.write_bytes(raw)
    problems: list[str] | None = None
    try:
        load_settings(str(path), environ={})
    except ConfigError as exc:
        problems = exc.problems
    if problems is not None:
        assert problems
        assert all("\n" not in line for line in problems), problems


def test_config_errors_reach_the_user_as_exit_2_lines(tmp_path: Path) -> None:
    """Through the real console script: exit 2, one ``config error:`` line each, no trace."""
    cases = {
        "nul.toml": '[tencentcloud]\nsecret_id_file = "/tmp/a\\u0000b"\n',
        "deep.toml": '[[notifiers]]\nname = "a"\ntype = "log"\nbody_template = "{{ '
        + "(" * 300
        + ' }}"\n',
        "bad.toml": "[polling\n",
    }
    for name, source in cases.items():
        path = tmp_path / name
        path.write_text(source)
        done = run_cli("check-config", "-c", str(path), env=clean_env(tmp_path), cwd=tmp_path)
        assert done.returncode == 2, (name, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        assert all(line.startswith("config error: ") for line in done.stderr.splitlines()), (
            name,
            done.stderr,
        )


# == track ==================================================================================


def run_main(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    """``watcher.cli.main(argv)`` in-process: exit code, stdout, stderr. Argparse's own
    usage errors (SystemExit 2) count as exit 2; any other exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(sys, "stdin", io.StringIO(stdin)),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = cli_main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def track_config(scratch: Path) -> Path:
    path = scratch / "track.toml"
    path.write_text(f'[state]\npath = "{scratch / "track.db"}"\n[logging]\nformat = "json"\n')
    return path


def stored_uuids(scratch: Path) -> set[str]:
    with Store.open(scratch / "track.db") as store:
        return {run.run_uuid for run in store.list_runs()}


uuids = st.uuids().map(str)
near_uuids = st.one_of(
    uuids.map(str.upper),
    uuids.map(lambda u: u + "\n"),
    uuids.map(lambda u: " " + u),
    uuids.map(lambda u: u[:-1] + "g"),
    uuids.map(lambda u: u.replace("-", "")),
    uuids.map(lambda u: u[:-1] + "\uff10"),  # a fullwidth digit: not [0-9]
    uuids.map(lambda u: u + "\x00"),
    st.text(max_size=60),
    st.text(min_size=5000, max_size=6000, alphabet="ab-0"),
)
lines = st.one_of(
    uuids, near_uuids, st.just(""), st.just("# comment"), uuids.map(lambda u: u + "  # c")
)


def expected_bad(tokens: list[str]) -> list[str]:
    return [t for t in tokens if not CANONICAL.fullmatch(t.lower())]


@FUZZ
@given(given_lines=st.lists(lines, max_size=8))
@example(given_lines=["84232c68-a016-4668-b2e3-168a175d6f29", "x\x00y", "é" * 3000])
def test_track_from_stdin(scratch: Path, track_config: Path, given_lines: list[str]) -> None:
    stdin = "\n".join(given_lines) + "\n"
    code, _out, err = run_main(["track", "-c", str(track_config), "-"], stdin=stdin)
    tokens = []
    for line in stdin.split("\n"):  # how iterating a StringIO splits (not str.splitlines)
        token = line.split("#", 1)[0].strip()
        if token:
            tokens.append(token)
    bad = expected_bad(tokens)
    assert code == (2 if bad else 0), (code, err)
    for token in bad:
        assert repr(token) in err, f"{token!r} not named in {err!r}"
    assert "Traceback" not in err
    stored = stored_uuids(scratch)
    assert all(CANONICAL.fullmatch(u) for u in stored), [
        u for u in stored if not CANONICAL.fullmatch(u)
    ]
    assert {t.lower() for t in tokens if t not in bad} <= stored


labels = st.lists(
    st.tuples(st.text(max_size=10), st.text(max_size=10)).map(lambda kv: f"{kv[0]}={kv[1]}")
    | st.text(max_size=10),
    max_size=2,
)


@FUZZ
@given(
    args=st.lists(st.one_of(uuids, near_uuids), min_size=1, max_size=5),
    label_args=labels,
    project=st.none() | st.text(max_size=20),
)
@example(args=["84232c68-a016-4668-b2e3-168a175d6f2b\n"], label_args=[], project=None)
@example(args=["84232c68-a016-4668-b2e3-168a175d6f2c"], label_args=["k=\udcff"], project=None)
@example(args=["84232c68-a016-4668-b2e3-168a175d6f2d"], label_args=[], project="\udcfe")
def test_track_arguments(
    scratch: Path, track_config: Path, args: list[str], label_args: list[str], project: str | None
) -> None:
    argv = ["track", "-c", str(track_config)]
    for pair in label_args:
        argv += ["--label", pair]
    if project is not None:
        argv += ["--project-id", project]
    code, _out, err = run_main([*argv, "--", *args])
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 0:
        assert not expected_bad(args)
    stored = stored_uuids(scratch)
    assert all(CANONICAL.fullmatch(u) for u in stored), [
        u for u in stored if not CANONICAL.fullmatch(u)
    ]
    code, out, err = run_main(["untrack", "-c", str(track_config), "--", *args])
    assert code == 0, (code, err)
    assert out.startswith("untracked "), out
    assert "Traceback" not in err


def test_track_stdin_bytes_through_the_console_script(tmp_path: Path) -> None:
    """Real stdin bytes: invalid UTF-8, NUL, CRLF, a 1 MB line. Exit 2 naming the bad ones,
    the good ones stored, never a traceback."""
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\npath = "{tmp_path / "s.db"}"\n')
    good = [str(uuid.uuid4()) for _ in range(3)]
    stdin = (
        good[0].encode()
        + b"\r\n"
        + b"\xff\xfe not utf-8\n"
        + b"nul\x00inside\n"
        + good[1].upper().encode()
        + b"  # a comment\n"
        + b"x" * (1024 * 1024)
        + b"\n"
        + good[2].encode()
    )
    code, err = _run_bytes(config, tmp_path, stdin)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("error: not a run UUID") == 3, err[:500]
    with Store.open(tmp_path / "s.db") as store:
        assert {run.run_uuid for run in store.list_runs()} == set(good)


def _run_bytes(config: Path, cwd: Path, stdin: bytes) -> tuple[int, str]:
    done = subprocess.run(
        [*WATCHER, "track", "-c", str(config), "-"],
        input=stdin,
        capture_output=True,
        env=clean_env(cwd),
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr.decode("utf-8", "replace")


# == admin API ==============================================================================


class AdminServer:
    """The daemon's real aiohttp app (admin token set) on a real store, in its own thread."""

    TOKEN = "fuzz-admin-token-0123456789abcdef"

    def __init__(self, db: Path) -> None:
        self._db = db
        self.store: Store | None = None  # opened in the server's thread, which uses it
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def __enter__(self) -> AdminServer:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> int:
        self.store = Store.open(self._db)
        app = build_app(
            store=SqliteStore(self.store),
            metrics=Metrics(),
            health=Health(),
            admin_token=self.TOKEN,
            default_project_id="prj-default",
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.store is not None:
            self.store.close()

    def post(self, body: bytes) -> tuple[int, Any]:
        reply = http(
            "POST",
            f"http://127.0.0.1:{self.port}/v1/runs",
            body=body,
            headers={"Authorization": f"Bearer {self.TOKEN}", "Content-Type": "application/json"},
        )
        return reply.status, reply.json()


@pytest.fixture(scope="module")
def admin(scratch: Path) -> Iterator[AdminServer]:
    with AdminServer(scratch / "admin.db") as server:
        yield server


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
track_bodies = st.fixed_dictionaries(
    {"run_uuid": st.one_of(uuids, near_uuids, json_values)},
    optional={
        "project_id": st.none() | st.text(max_size=30) | json_values,
        "labels": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)
        | json_values,
        "extra": json_values,
    },
)
admin_bodies = st.one_of(
    track_bodies.map(lambda b: json.dumps(b).encode()),
    track_bodies.map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


@FUZZ
@given(body=admin_bodies)
@example(body=b'{"run_uuid": "84232c68-a016-4668-b2e3-168a175d6f29", "project_id": "\\ud800"}')
@example(body=b'{"run_uuid": "84232c68-a016-4668-b2e3-168a175d6f29", "labels": {"k": "\\udcff"}}')
@example(body=b"[" * 5000 + b"]" * 5000)
@example(body=b'{"run_uuid": "84232c68-a016-4668-b2e3-168a175d6f29", "labels": {"\\u0000": "x"}}')
def test_admin_api_bodies(admin: AdminServer, body: bytes) -> None:
    status, answer = admin.post(body)
    assert status in (200, 201, 400), (status, answer, body[:200])
    if status == 400:
        assert isinstance(answer, dict)
        assert answer.get("error")
    else:
        assert CANONICAL.fullmatch(answer["run_uuid"]), answer


# == templates ==============================================================================

NAMES = [
    "status",
    "previous_status",
    "run_uuid",
    "run",
    "labels",
    "metadata",
    "event",
    "data",
    "failure",
    "duration",
    "severity",
    "title",
    "summary",
    "default_body",
    "type",
    "id",
    "timestamp",
    "project_id",
    "terminal",
    "nothing_here",
    "cycler",
    "joiner",
    "namespace",
    "lipsum",
    "range",
    "self",
    "config",
    "request",
    "loop",
]
ATTRS = [
    "__class__",
    "__globals__",
    "__init__",
    "__mro__",
    "__subclasses__",
    "__base__",
    "__dict__",
    "__builtins__",
    "mro",
    "items",
    "keys",
    "upper",
    "format",
    "Status",
    "team",
    "gi_frame",
    "f_globals",
    "func_globals",
    "__code__",
    "_TemplateReference__context",
]
FILTERS = [
    "upper",
    "lower",
    "default('x')",
    "attr('__class__')",
    "string",
    "list",
    "length",
    "truncate(5)",
    "tojson",
    "join(',')",
    "nope",
    "format('%s')",
    "map(attribute='x')",
]


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    choice = draw(st.integers(0, 6 if depth < 3 else 2))
    if choice == 0:
        return draw(st.sampled_from(NAMES))
    if choice == 1:
        return json.dumps(draw(st.text(max_size=5)))
    if choice == 2:
        return str(draw(st.integers(-5, 50)))
    inner = draw(expressions(depth + 1))
    if choice == 3:
        return f"{inner}.{draw(st.sampled_from(ATTRS))}"
    if choice == 4:
        return f"{inner}|{draw(st.sampled_from(FILTERS))}"
    if choice == 5:
        return f"{inner}[{draw(expressions(depth + 1))}]"
    return f"({inner}){draw(st.sampled_from(['()', '(1)', ' ~ ', ' + 1', ' is defined', '']))}"


@st.composite
def templates(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.integers(0, 6))
        expr = draw(expressions())
        if kind == 0:
            parts.append(draw(st.text(alphabet="abc {}%#\n", max_size=10)))
        elif kind <= 3:
            parts.append("{{ " + expr + " }}")
        elif kind == 4:
            parts.append("{% if " + expr + " %}" + "{{ " + draw(expressions()) + " }}{% endif %}")
        elif kind == 5:
            parts.append("{% for x in " + expr + " %}{{ x }}{% endfor %}")
        else:
            parts.append(
                draw(st.sampled_from(["{{", "}}", "{%", "%}", "{# c #}", "{% set a = 1 %}"]))
            )
    return "".join(parts)


# Jinja's own globals print as what they are; that is no escape (reaching *through* them is).
GLOBAL_REPRS = re.compile(
    r"<class '(jinja2\.utils\.(Cycler|Joiner|Namespace)|dict|range)'>"
    r"|<function (generate_lorem_ipsum|safe_range) at 0x[0-9a-f]+>",
    re.IGNORECASE,  # filters such as |upper change them
)
# What only a way out of the sandbox would show: a class (other than the globals above),
# a module, a globals dict, a builtin, code or a frame. Plain method reprs
# (``{{ status.format }}``) are no way out.
LEAKS = (
    "<class '",
    "<module ",
    "__builtins__",
    "'__name__':",
    "<built-in function",
    "<code ",
    "<frame ",
)
ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ run_uuid.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ (run_uuid|attr('__class__')).__mro__ }}",
    "{{ labels.__class__.__base__.__subclasses__() }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ range.__globals__ }}",
    "{{ '%s'.format.__globals__ }}",
    "{{ event.items.__self__.__class__ }}",
    "{{ range(10**9)|list }}",
    "{{ cycler() }}",
    '{{ ("") ~ [""].__globals__ }}',
    "{{ [].__class__ ~ 1 }}",
    "{{ 1 / 0 }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ " + "(" * 60 + "1" + ")" * 60 + " }}",
    "{{ " + "(" * 150 + "1" + ")" * 150 + " }}",
]


@pytest.fixture(scope="module")
def template_event() -> Any:
    return sample_event(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))


@FUZZ
@given(source=templates())
@example(source="{{ status }} {{ labels.source }} {{ failure.task }}")
def test_templates_compile_or_config_error_and_never_escape(
    template_event: Any, source: str
) -> None:
    refused: ValueError | None = None
    try:
        check_template(source)  # what config validation runs
    except ValueError as exc:
        refused = exc
    if refused is not None:
        assert str(refused).startswith("invalid template"), refused
        return
    compiled = compile_template(source)
    context = template_context(template_event, message_for(template_event))
    try:
        rendered = render_template(compiled, context)
    except TemplateRenderError:
        rendered = ""
    shown = GLOBAL_REPRS.sub("", rendered).lower()
    for leak in LEAKS:
        assert leak.lower() not in shown, f"{source!r} rendered {rendered[:300]!r}"
    # The renderer a notifier uses never raises: it falls back to the default message.
    renderer = Renderer(
        notifier="fuzz", logger=structlog.get_logger(), title_template=source, body_template=source
    )
    message = renderer.render(template_event)
    assert message.title


@pytest.mark.parametrize("source", ESCAPES)
def test_known_sandbox_escapes_are_refused(template_event: Any, source: str) -> None:
    test_templates_compile_or_config_error_and_never_escape.hypothesis.inner_test(  # type: ignore[attr-defined]
        template_event, source
    )


# == input limits (issue 13 item 4) ===========================================================
# Each limit: whatever the size, a clear error naming the key or field, or it works; never a
# traceback, a RecursionError or an unbounded allocation.

UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
nesting = st.integers(min_value=0, max_value=60) | st.sampled_from([600, 3000])


@FUZZ
@given(depth=nesting, kind=st.sampled_from(["array", "inline", "dotted", "header", "env"]))
@example(depth=100_000, kind="array")
@example(depth=100_000, kind="inline")
@example(depth=100_000, kind="env")
def test_nesting_is_a_config_error_naming_the_key(scratch: Path, depth: int, kind: str) -> None:
    env: dict[str, str] = {}
    source = "[polling]\n"
    if kind == "array":
        source += "terminal_statuses = " + "[" * depth + "]" * depth + "\n"
    elif kind == "inline":
        source += "terminal_statuses = " + "{a = " * depth + "1" + "}" * depth + "\n"
    elif kind == "dotted":
        source += "terminal_statuses" + ".a" * depth + " = 1\n"
    elif kind == "header":
        source = "[polling.terminal_statuses" + ".a" * depth + "]\n"
    else:
        env["OMICS_WATCHER_POLLING__TERMINAL_STATUSES"] = "[" * depth + "]" * depth
    path = scratch / f"nesting-{kind}.toml"
    path.write_text(source)
    levels = depth + (1 if kind in ("array", "inline", "env") else 0)
    try:
        load_settings(str(path), environ=env)
    except ConfigError as exc:
        problems = exc.problems
    else:
        assert levels <= 2, "accepted"  # `= []`: no statuses at all, which is valid
        return
    assert all("\n" not in line for line in problems)
    if levels > 16:
        (line,) = problems
        assert "nested more than 16 levels deep" in line, line
        expected = "OMICS_WATCHER_POLLING__TERMINAL_STATUSES" if kind == "env" else "polling."
        assert line.startswith(expected), line
        assert len(line) < 1000, line[:200]


control_text = st.lists(
    st.characters(codec="utf-8").filter(lambda c: c != "\x00")
    | st.sampled_from(["\x1b[31m", "\x1b]0;title\x07", "\x9b2J", "\u202e", "\x7f", "\r", "\n"]),
    max_size=12,
).map("".join)


@FUZZ
@given(text=control_text)
@example(text="\x1b[2J\x1b]0;pwned\x07\u202egnp.exe\x9b")
def test_printable_leaves_no_control_character(text: str) -> None:
    shown = printable(text)
    assert not UNSAFE.search(shown)
    assert "\n" not in shown
    assert "\t" not in shown
    assert printable(shown) == shown  # escaping twice changes nothing
    as_json = printable_json({"k": text}, indent=2)
    assert not UNSAFE.search(as_json)
    assert json.loads(as_json) == {"k": text}  # still valid JSON, meaning the same text


@FUZZ
@given(key=control_text.filter(lambda k: k.strip() and "=" not in k), value=control_text)
@example(key="team\x1b[31m", value="\x1b]0;title\x07\u202eevil")
def test_list_escapes_what_labels_hold(
    scratch: Path, track_config: Path, key: str, value: str
) -> None:
    run = str(uuid.uuid4())
    code, _, err = run_main(["track", "-c", str(track_config), f"--label={key}={value}", run])
    assert code == 0, err
    code, out, err = run_main(["list", "-c", str(track_config)])
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(run)]
    assert not UNSAFE.search(out), row
    assert "\t" not in row
    code, out, _ = run_main(["list", "-c", str(track_config), "--json"])
    labels = {r["run_uuid"]: r["labels"] for r in json.loads(out)}
    assert labels[run] == {key.strip(): value}  # machine output keeps the exact text


label_keys = st.text(alphabet="abcdef\x1b", min_size=1, max_size=80).filter(str.strip)
label_values = st.text(alphabet="xyz\u202e", max_size=300)


def labels_fit(labels: dict[str, str]) -> bool:
    return len(labels) <= 32 and all(
        len(k) <= 63 and len(v) <= 256 and k.strip() for k, v in labels.items()
    )


@FUZZ
@given(labels=st.dictionaries(label_keys, label_values, max_size=40))
@example(labels={f"k{i}": "v" for i in range(33)})
@example(labels={"k" * 64: "v"})
@example(labels={"k": "v" * 257})
@example(labels={"k" * 63: "v" * 256})
def test_label_sizes_through_the_admin_api(admin: AdminServer, labels: dict[str, str]) -> None:
    body = json.dumps({"run_uuid": str(uuid.uuid4()), "labels": labels}).encode()
    status, answer = admin.post(body)
    if labels_fit(labels):
        assert status == 201, answer
        assert answer["labels"] == labels
    else:
        assert status == 400, answer
        assert answer["error"].startswith("labels: "), answer
        assert "\x1b" not in answer["error"]
        assert "xyz" not in answer["error"]


@FUZZ
@given(labels=st.dictionaries(label_keys.filter(lambda k: "=" not in k), label_values, max_size=40))
def test_label_sizes_through_track(track_config: Path, labels: dict[str, str]) -> None:
    run = str(uuid.uuid4())
    args = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]
    code, _, err = run_main(["track", "-c", str(track_config), *args, run])
    fits = labels_fit({k.strip(): v for k, v in labels.items()})
    assert code == (0 if fits else 2), err
    if not fits:
        assert err.startswith("error: --label: "), err
        assert not UNSAFE.search(err), err


small_ints = st.integers(-3, 12)
big_ints = st.sampled_from([10**5, 10**6, 3 * 10**8, 2**31, 10**18])
literals = st.one_of(
    small_ints.map(str),
    big_ints.map(str),
    st.text(alphabet="ab%s{}:0-9", max_size=6).map(json.dumps),
    st.sampled_from(["'%99999999d'", "'{:>999999999}'", "[1, 2]", "(1,)", "labels", "status"]),
)


@st.composite
def arithmetic(draw: st.DrawFn, depth: int = 0) -> str:
    if depth >= 3 or draw(st.booleans()):
        return draw(literals)
    op = draw(st.sampled_from(["*", "**", "+", "%", "~", "|center", ".format", "|join"]))
    left, right = draw(arithmetic(depth + 1)), draw(arithmetic(depth + 1))
    if op == "|center":
        return f"({left})|center({right})"
    if op == ".format":
        return f"({left}).format({right})"
    if op == "|join":
        return f"[{left}]*({right})|join({left})"
    return f"({left}) {op} ({right})"


@FUZZ
@given(expr=arithmetic())
@example(expr="'a' * 300000000")
@example(expr="2 ** 100000000")
@example(expr="('ab' * 50000) * (100000)")
@example(expr="'%999999999d' % 1")
@example(expr="([1] * 100000) * 100000")
@example(expr="('a' * 99999)|center(300000000)")
@example(expr="'{:>999999999}'.format(1)")
def test_template_arithmetic_is_bounded(template_event: Any, expr: str) -> None:
    from watcher.notifiers.templates import MAX_OUTPUT

    source = "{{ " + expr + " }}"
    refused: ValueError | None = None
    try:
        check_template(source)
    except ValueError as exc:
        refused = exc
    if refused is not None:
        assert str(refused).startswith("invalid template"), refused
        return
    context = template_context(template_event, message_for(template_event))
    try:
        rendered = render_template(compile_template(source), context)
    except TemplateRenderError:
        return
    assert len(rendered) <= MAX_OUTPUT
