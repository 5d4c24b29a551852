"""Bad input gets a clear error and nothing is lost (issue 13 item 4), one plain case each.

The fuzz cases for the same limits live in ``test_fuzz.py``; these pin the exact words a user
sees: label limits refused by ``track`` (exit 2) and ``POST /v1/runs`` (400 naming the field),
control characters escaped in ``list``, error lines, ``check-config`` and the console log,
template arithmetic refused at config load naming the key (and a render that falls back),
and a new state file with its ``-wal`` and ``-shm`` readable by its owner only.
"""

from __future__ import annotations

import io
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from support import clean_env, run_cli

from watcher.config import ConfigError, load_settings
from watcher.display import printable, printable_json
from watcher.limits import LabelError
from watcher.notifiers.render import Renderer
from watcher.notifiers.templates import compile_template, render_template
from watcher.sample_notify import sample_event
from watcher.service.logs import configure
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore

RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
RUN_2 = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
TOKEN = "limits-admin-token-0123456789"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "omics-watcher.toml"
    path.write_text(f'[state]\npath = "{tmp_path / "state.db"}"\n')
    return path


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    done = run_cli(
        *args[:1], "-c", str(config), *args[1:], env=clean_env(config.parent), cwd=config.parent
    )
    return done.returncode, done.stdout, done.stderr


# -- labels ---------------------------------------------------------------------------------------


def test_track_refuses_labels_over_the_limits(config: Path) -> None:
    many = [arg for i in range(33) for arg in ("--label", f"k{i}=v")]
    assert cli(config, "track", *many, RUN) == (
        2,
        "",
        "error: --label: 33 labels; at most 32 per run\n",
    )
    assert cli(config, "track", "--label", "k" * 64 + "=v", RUN)[2] == (
        f"error: --label: key '{'k' * 20}...' is 64 characters; at most 63\n"
    )
    assert cli(config, "track", "--label", "team=" + "v" * 257, RUN)[2] == (
        "error: --label: value of 'team' is 257 characters; at most 256\n"
    )
    assert not (config.parent / "state.db").exists()  # nothing was tracked
    at_limit = [arg for i in range(32) for arg in ("--label", f"{'k' * 61}{i:02}={'v' * 256}")]
    assert cli(config, "track", *at_limit, RUN)[0] == 0


def test_track_refuses_labels_that_would_pass_the_limit_with_the_run_s_own(config: Path) -> None:
    first = [arg for i in range(30) for arg in ("--label", f"a{i}=v")]
    assert cli(config, "track", *first, RUN)[0] == 0
    more = [arg for i in range(3) for arg in ("--label", f"b{i}=v")]
    code, _, err = cli(config, "track", *more, RUN_2, RUN)
    assert code == 2
    assert err == f"error: --label: labels of {RUN}: 33 labels; at most 32 per run\n"
    with Store.open(config.parent / "state.db") as store:
        assert len(store.labels_of(RUN)) == 30
        assert store.get_run(RUN_2) is None  # one transaction: nothing of the call was kept


def test_the_store_refuses_labels_over_the_limits(store: Store) -> None:
    with pytest.raises(LabelError, match="at most 256"):
        store.track([TrackRequest(RUN, "p", {"k": "v" * 257})])
    assert store.get_run(RUN) is None


async def test_admin_api_refuses_labels_naming_the_field(store: Store) -> None:
    app = build_app(
        store=SqliteStore(store),
        metrics=Metrics(),
        health=Health(),
        admin_token=TOKEN,
        default_project_id="",
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with TestClient(TestServer(app)) as client:
        cases = {
            "labels: 33 labels; at most 32 per run": {f"k{i}": "v" for i in range(33)},
            "labels: key label 1 is 64 characters; at most 63": {"\x1b" * 64: "v"},
            "labels: value of label 2 is 257 characters; at most 256": {"a": "", "b": "x" * 257},
        }
        for reason, labels in cases.items():
            reply = await client.post(
                "/v1/runs", json={"run_uuid": RUN, "labels": labels}, headers=headers
            )
            assert reply.status == 400
            assert (await reply.json())["error"] == reason  # and no input echoed
        first = {f"a{i}": "v" for i in range(30)}
        reply = await client.post(
            "/v1/runs", json={"run_uuid": RUN, "labels": first}, headers=headers
        )
        assert reply.status == 201
        more = {f"b{i}": "v" for i in range(3)}
        reply = await client.post(
            "/v1/runs", json={"run_uuid": RUN, "labels": more}, headers=headers
        )
        assert reply.status == 400
        assert (await reply.json())["error"] == "labels: 33 labels; at most 32 per run"
    assert store.labels_of(RUN) == first


# -- control characters ----------------------------------------------------------------------------


def test_printable_escapes_controls_and_keeps_the_rest() -> None:
    assert printable("ok é 日本 \\ tab\there") == "ok é 日本 \\ tab\\x09here"
    assert printable("\x1b[31mred\x9b2J\u202eevil\x7f") == "\\x1b[31mred\\x9b2J\\u202eevil\\x7f"
    assert printable("a\nb", keep_newlines=True) == "a\nb"
    text = printable_json({"k": "\x1b\x9b\u202e"}, indent=2)
    assert text == '{\n  "k": "\\u001b\\u009b\\u202e"\n}'


def test_list_escapes_control_characters_in_labels(config: Path) -> None:
    assert cli(config, "track", "--label", "team=\x1b]0;owned\x07\x9b2J\u202eab", RUN)[0] == 0
    code, out, _ = cli(config, "list")
    assert code == 0
    row = out.splitlines()[1]
    assert row.startswith(RUN)
    assert row.endswith("team=\\x1b]0;owned\\x07\\x9b2J\\u202eab")
    code, out, _ = cli(config, "list", "--json")
    assert json.loads(out)[0]["labels"] == {"team": "\x1b]0;owned\x07\x9b2J\u202eab"}


def test_error_lines_and_check_config_escape_control_characters(config: Path) -> None:
    Store.open(config.parent / "state.db").close()  # untrack needs a state file
    code, _, err = cli(config, "untrack", "\x1b[2Jnot-a-uuid")
    assert "warning: not tracked: \\x1b[2jnot-a-uuid" in err
    bad = config.parent / "bad.toml"
    bad.write_text('[polling]\n"\\u001b[31mkey" = 1\n')
    code, _, err = cli(bad, "check-config")
    assert (code, err) == (
        2,
        "config error: polling.\\x1b[31mkey: Extra inputs are not permitted\n",
    )
    good = config.parent / "good.toml"
    good.write_text(
        '[tencentcloud]\nproject_id = "prj-\\u009b2J\\u202e"\nsecret_id = "i"\nsecret_key = "k"\n'
    )
    code, out, _ = cli(good, "check-config")
    assert code == 0
    assert '"project_id": "prj-\\u009b2J\\u202e"' in out
    assert json.loads(out)["tencentcloud"]["project_id"] == "prj-\x9b2J\u202e"


def test_console_log_escapes_control_characters() -> None:
    stream = io.StringIO()
    configure(fmt="console", level="info", stream=stream)
    try:
        structlog.get_logger("t").info("tracked", label="\x1b]0;owned\x07")
    finally:
        configure(fmt="json", level="info", stream=io.StringIO())
    assert "label=\\x1b]0;owned\\x07" in stream.getvalue()
    assert "\x1b]" not in stream.getvalue()


# -- templates -------------------------------------------------------------------------------------


def test_template_arithmetic_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[[notifiers]]\nname = "ops"\ntype = "webhook"\nurl = "https://example.org/h"\n'
        "body_template = \"{{ 'a' * 300000000 }}\"\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), environ={})
    assert caught.value.problems == [
        "notifiers[0].body_template: invalid template (line 1): "
        "'*' would exceed the template limit (100,000)"
    ]


def test_template_output_over_the_limit_falls_back_at_render_time() -> None:
    event = sample_event(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    source = "{% for i in range(100000) %}{{ event.id }}{% endfor %}"
    with pytest.raises(Exception, match="the rendered output would exceed the template limit"):
        render_template(compile_template(source), {"event": {"id": "evt_x"}})
    renderer = Renderer(notifier="ops", logger=structlog.get_logger(), body_template=source)
    message = renderer.render(event)
    assert message.title
    assert message.body is None


def test_templates_within_the_limits_render_as_before() -> None:
    source = "{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ '%05d' % 42 }} {{ '{:>4}'.format(7) }} {{ 'x' ~ 1 }}"
    assert render_template(compile_template(source), {}) == "ababab 1024 00042    7 x1"


# -- file modes ------------------------------------------------------------------------------------


def test_a_new_state_file_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which would give 0644
    try:
        with Store.open(tmp_path / "state.db") as store:
            store.track([TrackRequest(RUN, "p", {"team": "x"})])
            names = sorted(p.name for p in tmp_path.iterdir())
            assert names == ["state.db", "state.db-shm", "state.db-wal"]
            for path in tmp_path.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        os.umask(old)


def test_an_existing_state_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path):
        pass
    path.chmod(0o640)  # the owner's choice, e.g. for a backup group
    with Store.open(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
