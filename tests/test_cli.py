"""User-visible behaviour of the ``omics-watcher`` command line: output, exit codes, files.

Commands that only read files and the environment run in-process through
``watcher.cli.main([...])`` (fast; the environment is isolated per test). Anything where a
real process matters (stdin pipes, signals, the API simulator, the daemon's listener) runs
the installed ``omics-watcher`` as a subprocess (see ``support.py``). Exit codes are the
contract of interface.md: 0 ok, 1 runtime/API error, 2 usage/config, 3 startup failure.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support import (
    Simulator,
    clean_env,
    free_port,
    http,
    processes,
    run_cli,
    start_simulator,
    stop,
    write_config,
)

from watcher.cli import main
from watcher.events import RunState
from watcher.store import Store
from watcher.transitions import detect

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RUN_A = "84232c68-a016-4668-b2e3-168a175d6f29"
RUN_B = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
RUN_C = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR"})
LIST_FIELDS = {
    "run_uuid",
    "project_id",
    "status",
    "terminal",
    "labels",
    "tracked_at",
    "last_polled_at",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ambient configuration: empty cwd and HOME, no OMICS_WATCHER_/TENCENTCLOUD_ vars."""
    for key in list(os.environ):
        if key.startswith(("OMICS_WATCHER_", "TENCENTCLOUD_", "TKE_")):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def with_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the environment, as check-config needs to pass (like run)."""
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", "AKIDtest")
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", "test-key")


def problem_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def iso_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    offset = moment.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    return moment


# -- check-config ---------------------------------------------------------------------------


def test_check_config_without_any_file_prints_the_documented_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_credentials(monkeypatch)  # without any, check-config fails as run does (cli_files)
    code, out, err = cli(capsys, "check-config")
    assert code == 0, err
    effective = json.loads(out)
    assert effective["tencentcloud"]["endpoint"] == "https://omics.tencentcloudapi.com"
    assert effective["tencentcloud"]["region"] == "ap-guangzhou"
    assert effective["tencentcloud"]["project_id"] == ""
    assert effective["polling"]["rate_per_second"] == 20.0
    assert effective["polling"]["interval_seconds"] == 30.0
    assert effective["polling"]["request_timeout_seconds"] == 10.0
    assert effective["polling"]["strategy"] == "per-run"
    assert set(effective["polling"]["terminal_statuses"]) == {
        "SUCCESS",
        "COMPLETE",
        "EXECUTOR_ERROR",
        "SYSTEM_ERROR",
        "COMPLETE_ERROR",
        "CANCELED",
        "FAILED",
        "PREEMPTED",
    }
    assert effective["state"]["path"] == "omics-watcher.db"
    assert effective["server"]["listen"] == "127.0.0.1:9477"
    assert effective["daemon"]["shutdown_grace_seconds"] == 10.0
    assert effective["logging"] == {"format": "auto", "level": "info"}
    assert effective["notifiers"] == []
    assert effective["routes"] == []


def test_check_config_finds_the_file_through_env_then_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "omics-watcher.toml").write_text("[polling]\ninterval_seconds = 45\n")
    with_credentials(monkeypatch)
    code, out, _ = cli(capsys, "check-config")
    assert code == 0
    assert json.loads(out)["polling"]["interval_seconds"] == 45.0

    other = tmp_path / "elsewhere.toml"
    other.write_text("[polling]\ninterval_seconds = 12\n")
    monkeypatch.setenv("OMICS_WATCHER_CONFIG", str(other))
    code, out, _ = cli(capsys, "check-config")
    assert code == 0
    assert json.loads(out)["polling"]["interval_seconds"] == 12.0


def test_check_config_shows_secrets_only_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    toml_id = "AKIDtomlsecretid0123456789abcdef"
    toml_key = "tomlSecretKeyValue-0123456789abcdef"
    file_token = "tokenFromAFile-0123456789abcdef"
    env_admin = "adminTokenFromEnv-0123456789abcdef"
    webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    token_file = tmp_path / "token.txt"
    token_file.write_text(file_token + "\n")
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[tencentcloud]
secret_id = "{toml_id}"
secret_key = "{toml_key}"
token_file = "{token_file}"

[[notifiers]]
name = "ops"
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "{webhook_secret}"
"""
    )
    monkeypatch.setenv("OMICS_WATCHER_SERVER__ADMIN_TOKEN", env_admin)
    # What the credential chain would read must not leak through check-config either.
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", "envTencentKey-0123456789abcdef")
    code, out, err = cli(capsys, "check-config", "-c", str(config))
    assert code == 0, err
    for secret in (toml_id, toml_key, file_token, env_admin, webhook_secret, "envTencentKey"):
        assert secret not in out
        assert secret not in err
    effective = json.loads(out)
    assert effective["tencentcloud"]["secret_id"] == "***"
    assert effective["tencentcloud"]["secret_key"] == "***"
    assert effective["tencentcloud"]["token"] == "***"
    assert effective["server"]["admin_token"] == "***"
    assert effective["notifiers"][0]["secret"] == "***"
    assert effective["notifiers"][0]["url"] == "http://127.0.0.1:9/hook"


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        pytest.param(
            '[polling]\nrate_per_second = "fast"\n', {}, "polling.rate_per_second", id="wrong-type"
        ),
        pytest.param(
            "[polling]\ninterval_seconds = -1\n", {}, "polling.interval_seconds", id="out-of-range"
        ),
        pytest.param("[polling]\nbogus = 3\n", {}, "polling.bogus", id="unknown-key"),
        pytest.param("[bogus]\nx = 1\n", {}, "bogus", id="unknown-section"),
        pytest.param(
            '[[notifiers]]\nname = "log"\ntype = "log"\n'
            '[[notifiers]]\nname = "pager"\ntype = "pagerduty"\n',
            {},
            "notifiers[1].type",
            id="unknown-notifier-type",
        ),
        pytest.param(
            '[[notifiers]]\nname = "ops"\ntype = "webhook"\nurl = "not a url"\n',
            {},
            "notifiers[0].url",
            id="bad-notifier-url",
        ),
        pytest.param(
            '[[notifiers]]\nname = "ops"\ntype = "log"\n[[routes]]\nnotifiers = ["opz"]\n',
            {},
            "routes[0].notifiers",
            id="route-names-unknown-notifier",
        ),
        pytest.param(
            '[tencentcloud]\nsecret_key_file = "/nonexistent/omics/secret_key"\n',
            {},
            "tencentcloud.secret_key_file",
            id="missing-secret-file",
        ),
        pytest.param(
            '[[notifiers]]\nname = "ops"\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
            'secret_file = "/nonexistent/omics/whsec"\n',
            {},
            "notifiers[0].secret_file",
            id="missing-notifier-secret-file",
        ),
        pytest.param('[server]\nlisten = "nowhere"\n', {}, "server.listen", id="bad-listen"),
        pytest.param(
            "",
            {"OMICS_WATCHER_POLLING__RATE_PER_SECOND": "fast"},
            "polling.rate_per_second",
            id="bad-env-override",
        ),
    ],
)
def test_invalid_config_exits_2_naming_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    toml: str,
    env: dict[str, str],
    key: str,
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for command in (["check-config"], ["list"], ["run"]):
        code, out, err = cli(capsys, *command, "-c", str(config))
        assert code == 2, (command, out, err)
        lines = problem_lines(err)
        assert len(lines) == 1, err
        assert re.search(rf"(^|\s){re.escape(key)}: \S", lines[0]), lines[0]
        assert "Traceback" not in err


def test_every_problem_gets_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        """
[polling]
rate_per_second = "fast"
bogus = 3

[[notifiers]]
name = "log"
type = "log"

[[notifiers]]
name = "pager"
type = "pagerduty"
"""
    )
    code, _, err = cli(capsys, "check-config", "-c", str(config))
    assert code == 2
    lines = problem_lines(err)
    assert len(lines) == 3, err
    keys = ["polling.rate_per_second: ", "polling.bogus: ", "notifiers[1].type: "]
    for key in keys:
        assert sum(key in line for line in lines) == 1, (key, err)
    assert "pagerduty" in err  # the unknown type is named, with the known ones
    assert "webhook" in err


def test_a_bad_secret_value_is_not_echoed_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[tencentcloud]\nsecret_key = 31415926535897932\nregion = ["x"]\n')
    code, _, err = cli(capsys, "check-config", "-c", str(config))
    assert code == 2
    assert "tencentcloud.secret_key: " in err
    assert "31415926535897932" not in err


def test_env_overrides_a_scalar_and_a_list_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        """
[polling]
rate_per_second = 20

[[notifiers]]
name = "ops"
type = "webhook"
url = "http://127.0.0.1:9/from-file"

[[notifiers]]
name = "audit"
type = "log"
"""
    )
    monkeypatch.setenv("OMICS_WATCHER_POLLING__RATE_PER_SECOND", "15")
    monkeypatch.setenv("OMICS_WATCHER_NOTIFIERS__0__URL", "http://127.0.0.1:9/from-env")
    with_credentials(monkeypatch)
    code, out, err = cli(capsys, "check-config", "-c", str(config))
    assert code == 0, err
    effective = json.loads(out)
    assert effective["polling"]["rate_per_second"] == 15.0
    assert [n["name"] for n in effective["notifiers"]] == ["ops", "audit"]
    assert effective["notifiers"][0]["url"] == "http://127.0.0.1:9/from-env"
    assert effective["notifiers"][0]["type"] == "webhook"
    assert effective["notifiers"][1]["type"] == "log"


def test_integers_are_accepted_where_floats_are_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_credentials(monkeypatch)
    config = tmp_path / "c.toml"
    config.write_text(
        "[polling]\ninterval_seconds = 1\nrate_per_second = 5\nrequest_timeout_seconds = 3\n"
        "[daemon]\nshutdown_grace_seconds = 4\n"
    )
    code, out, err = cli(capsys, "check-config", "-c", str(config))
    assert code == 0, err
    effective = json.loads(out)
    assert effective["polling"]["interval_seconds"] == 1.0
    assert effective["polling"]["rate_per_second"] == 5.0
    assert effective["polling"]["request_timeout_seconds"] == 3.0
    assert effective["daemon"]["shutdown_grace_seconds"] == 4.0


def test_invalid_toml_and_a_missing_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[polling\nrate_per_second = 1\n")
    code, out, err = cli(capsys, "check-config", "-c", str(config))
    assert (code, out) == (2, "")
    assert "broken.toml" in err
    assert "TOML" in err
    code, out, err = cli(capsys, "check-config", "-c", str(tmp_path / "absent.toml"))
    assert (code, out) == (2, "")
    assert "absent.toml" in err


def test_unknown_command_and_missing_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["frobnicate"], ["track"], ["status"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
    capsys.readouterr()


# -- track / untrack / list -----------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "watcher.toml"
    write_config(
        path,
        {
            "tencentcloud": {"project_id": "prj-default"},
            "state": {"path": str(tmp_path / "state.db")},
        },
    )
    # An empty state, as `track` leaves it: `list` and `untrack` never create one
    # (test_cli_files.py).
    Store.open(tmp_path / "state.db").close()
    return path


def listed(capsys: pytest.CaptureFixture[str], config: Path) -> list[dict[str, Any]]:
    code, out, err = cli(capsys, "list", "--json", "-c", str(config))
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def test_list_json_of_an_empty_registry(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    assert listed(capsys, config) == []


def test_track_is_idempotent_and_list_json_has_the_documented_fields(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    before = datetime.now(UTC)
    code, out, err = cli(capsys, "track", "-c", str(config), RUN_A, RUN_B)
    assert code == 0, err
    assert "2 new" in out
    code, out, err = cli(capsys, "track", "-c", str(config), RUN_A, RUN_A.upper())
    assert code == 0, err
    assert "0 new" in out
    assert "1 already" in out

    rows = listed(capsys, config)
    assert [r["run_uuid"] for r in rows] == [RUN_A, RUN_B]
    for row in rows:
        assert set(row) >= LIST_FIELDS
        assert row["project_id"] == "prj-default"
        assert row["status"] is None  # never polled
        assert row["terminal"] is False
        assert row["labels"] == {}
        assert row["last_polled_at"] is None
        assert before.replace(microsecond=0) <= iso_utc(row["tracked_at"]) <= datetime.now(UTC)

    # The human table names the same runs.
    code, out, _ = cli(capsys, "list", "-c", str(config))
    assert code == 0
    assert RUN_A in out
    assert RUN_B in out


def test_track_with_labels_and_project_id(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = cli(
        capsys,
        "track",
        "-c",
        str(config),
        "--project-id",
        "prj-genomics",
        "--label",
        "team=genomics",
        "--label",
        "owner=a=b",  # only the first "=" separates key and value
        RUN_A,
    )
    assert code == 0, err
    code, _, err = cli(capsys, "track", "-c", str(config), RUN_B)
    assert code == 0, err
    rows = {r["run_uuid"]: r for r in listed(capsys, config)}
    assert rows[RUN_A]["project_id"] == "prj-genomics"
    assert rows[RUN_A]["labels"] == {"team": "genomics", "owner": "a=b"}
    assert rows[RUN_B]["project_id"] == "prj-default"
    assert rows[RUN_B]["labels"] == {}

    # Tracking again with another label merges it in and keeps the project.
    code, _, err = cli(capsys, "track", "-c", str(config), "--label", "tier=gold", RUN_A)
    assert code == 0, err
    rows = {r["run_uuid"]: r for r in listed(capsys, config)}
    assert rows[RUN_A]["labels"] == {"team": "genomics", "owner": "a=b", "tier": "gold"}
    assert rows[RUN_A]["project_id"] == "prj-genomics"


def test_a_label_without_equals_sign_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, _, err = cli(capsys, "track", "-c", str(config), "--label", "team", RUN_A)
    assert code == 2
    assert err == "error: --label 'team': expected KEY=VALUE\n"  # the prefix of every error
    code, _, err = cli(capsys, "track", "-c", str(config), "--label", "k=\udcff", RUN_A)
    assert (code, err) == (2, "error: --label 'k=\\udcff': not valid UTF-8 text\n")
    assert listed(capsys, config) == []


def test_track_dash_reads_stdin_skipping_blank_lines_and_comments(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = f"""# runs of batch 7
{RUN_A}

   {RUN_B.upper()}   # shouted, with a comment after it
#{RUN_C}
\t
"""
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, err = cli(capsys, "track", "-c", str(config), "--label", "batch=7", "-")
    assert code == 0, err
    assert "2 new" in out
    rows = listed(capsys, config)
    assert [r["run_uuid"] for r in rows] == [RUN_A, RUN_B]
    assert all(r["labels"] == {"batch": "7"} for r in rows)


def test_a_malformed_uuid_exits_2_naming_it_and_valid_ones_are_still_added(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli(capsys, "track", "-c", str(config), RUN_A, "not-a-uuid", RUN_B)
    assert code == 2
    assert "not-a-uuid" in err
    assert RUN_A not in err
    assert RUN_B not in err
    assert [r["run_uuid"] for r in listed(capsys, config)] == [RUN_A, RUN_B]

    truncated = RUN_C[:-1]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{RUN_C}\n{truncated}\n"))
    code, _, err = cli(capsys, "track", "-c", str(config), "-")
    assert code == 2
    assert truncated in err
    assert RUN_C in [r["run_uuid"] for r in listed(capsys, config)]


def test_100k_uuids_through_a_stdin_pipe(tmp_path: Path, config: Path) -> None:
    """Correctness only (no timing assertion): every UUID tracked once, nothing else."""
    uuids = [str(uuid.UUID(int=i * 0x9E3779B97F4A7C15 + 1, version=4)) for i in range(100_000)]
    text = "# a big batch\n" + "\n".join(uuids) + "\n\n" + "\n".join(uuids[:10]) + "\n"
    env = clean_env(tmp_path / "home")
    done = run_cli("track", "-c", str(config), "-", env=env, cwd=tmp_path, stdin=text, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "100000 new" in done.stdout
    with Store.open(tmp_path / "state.db") as store:
        runs = store.list_runs()
    assert len(runs) == 100_000
    assert {r.run_uuid for r in runs} == set(uuids)
    assert all(r.status is None and r.project_id == "prj-default" for r in runs)


def _observe(store: Store, run_uuid: str, previous: str | None, status: str) -> None:
    now = datetime.now(UTC)
    prev = None if previous is None else RunState(run_uuid, "prj-default", previous, now)
    cur = RunState(run_uuid, "prj-default", status, now, {}, {"Status": status})
    event = detect(prev, cur, terminal=TERMINAL)
    assert event is not None
    assert store.record_observation(cur, event, notifiers=["log"])


def test_untrack_keeps_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, _, _ = cli(capsys, "track", "-c", str(config), RUN_A, RUN_B)
    assert code == 0
    with Store.open(tmp_path / "state.db") as store:
        _observe(store, RUN_A, None, "RUNNING")
        _observe(store, RUN_A, "RUNNING", "SUCCESS")
    rows = {r["run_uuid"]: r for r in listed(capsys, config)}
    assert rows[RUN_A]["status"] == "SUCCESS"
    assert rows[RUN_A]["terminal"] is True
    assert rows[RUN_A]["last_polled_at"] is not None

    code, out, err = cli(capsys, "untrack", "-c", str(config), RUN_A, RUN_C)
    assert code == 0
    assert "untracked 1" in out
    assert RUN_C in err  # not tracked: a warning, not an error
    assert [r["run_uuid"] for r in listed(capsys, config)] == [RUN_B]
    with Store.open(tmp_path / "state.db") as store:
        history = store.events(run_uuid=RUN_A)
    assert [(e.previous_status, e.status) for e in reversed(history)] == [
        (None, "RUNNING"),
        ("RUNNING", "SUCCESS"),
    ]

    # Tracking it again brings back the last status it had (a terminal run stays terminal).
    code, _, _ = cli(capsys, "track", "-c", str(config), RUN_A)
    assert code == 0
    rows = {r["run_uuid"]: r for r in listed(capsys, config)}
    assert rows[RUN_A]["status"] == "SUCCESS"
    assert rows[RUN_A]["terminal"] is True


# -- state file and port: exit 3 ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "garbage"])
def test_an_unusable_state_file_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    state = tmp_path / "state.db"
    if kind == "directory":
        state.mkdir()
    else:
        state.write_bytes(bytes(range(256)) * 64)
    config = write_config(tmp_path / "c.toml", {"state": {"path": str(state)}})
    for argv in (["list"], ["list", "--json"], ["track", RUN_A], ["untrack", RUN_A]):
        code, out, err = cli(capsys, argv[0], "-c", str(config), *argv[1:])
        assert code == 3, (argv, out, err)
        assert str(state) in err
        assert "Traceback" not in err
    if kind == "garbage":
        assert state.read_bytes() == bytes(range(256)) * 64  # never "repaired" silently


def test_run_exits_3_when_the_state_file_is_unusable(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.mkdir()
    config = write_config(
        tmp_path / "c.toml",
        {
            "tencentcloud": {"endpoint": "http://127.0.0.1:9"},
            "state": {"path": str(state)},
            "server": {"listen": f"127.0.0.1:{free_port()}"},
        },
    )
    env = clean_env(
        tmp_path / "home", {"TENCENTCLOUD_SECRET_ID": "x", "TENCENTCLOUD_SECRET_KEY": "y"}
    )
    done = run_cli("run", "-c", str(config), env=env, cwd=tmp_path, timeout=30)
    assert done.returncode == 3, done.stderr
    assert "state" in done.stderr
    assert str(state) in done.stderr


def test_run_exits_3_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "c.toml",
            {
                "tencentcloud": {"endpoint": "http://127.0.0.1:9"},
                "state": {"path": str(tmp_path / "state.db")},
                "server": {"listen": f"127.0.0.1:{port}"},
            },
        )
        env = clean_env(
            tmp_path / "home", {"TENCENTCLOUD_SECRET_ID": "x", "TENCENTCLOUD_SECRET_KEY": "y"}
        )
        done = run_cli("run", "-c", str(config), env=env, cwd=tmp_path, timeout=30)
    assert done.returncode == 3, done.stderr
    assert str(port) in done.stderr
    assert "Traceback" not in done.stderr


# -- status against the simulator -----------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with processes() as procs:
        yield start_simulator(procs, tmp_path_factory.mktemp("sim"), "--runs", "2", "--seed", "7")


def status_env(home: Path, sim: Simulator, **extra: str) -> dict[str, str]:
    return clean_env(home, {"OMICS_WATCHER_TENCENTCLOUD__ENDPOINT": sim.endpoint, **extra})


def test_status_prints_the_metadata_with_tencent_field_names(
    tmp_path: Path, isolated: Path, sim: Simulator
) -> None:
    run = sim.runs[0]
    env = status_env(isolated, sim, **sim.credentials_env())
    done = run_cli("status", run, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metadata = json.loads(done.stdout)
    assert {"RunId", "Status", "RunType", "SubmitTime", "StartTime", "EndTime"} <= set(metadata)
    assert metadata["RunId"] == run
    assert metadata["Status"] in {
        "QUEUED",
        "INITIALIZING",
        "RUNNING",
        "SUCCESS",
        "EXECUTOR_ERROR",
        "CANCELED",
    }
    # Values as returned: JSON-in-string fields stay strings.
    assert isinstance(metadata["Input"], str)
    assert sim.secret_key not in done.stdout + done.stderr

    # Upper case is accepted too, and a --project-id of the default project is fine.
    done = run_cli("status", run.upper(), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["RunId"] == run


def test_status_of_an_unknown_run_prints_the_api_error_and_exits_1(
    tmp_path: Path, isolated: Path, sim: Simulator
) -> None:
    env = status_env(isolated, sim, **sim.credentials_env())
    done = run_cli("status", str(uuid.uuid4()), env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "ResourceNotFound.RunNotExist" in done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr


def test_status_with_a_wrong_key_prints_the_auth_failure_and_exits_1(
    tmp_path: Path, isolated: Path, sim: Simulator
) -> None:
    wrong = "wrongSecretKey-0123456789abcdefgh"
    env = status_env(
        isolated, sim, TENCENTCLOUD_SECRET_ID=sim.secret_id, TENCENTCLOUD_SECRET_KEY=wrong
    )
    done = run_cli("status", sim.runs[0], env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "AuthFailure" in done.stderr
    assert wrong not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_status_without_any_credentials_exits_2_naming_the_sources_tried(
    tmp_path: Path, isolated: Path, sim: Simulator
) -> None:
    if Path("/etc/tencentcloud/credentials").exists():
        pytest.skip("this machine has a system-wide Tencent Cloud profile")
    done = run_cli("status", sim.runs[0], env=status_env(isolated, sim), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "TENCENTCLOUD_SECRET_ID" in done.stderr
    assert str(isolated / ".tencentcloud" / "credentials") in done.stderr
    assert "secret_id" in done.stderr  # the config file keys
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_status_of_a_malformed_uuid_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(capsys, "status", "84232c68")
    assert (code, out) == (2, "")
    assert "84232c68" in err


# -- simulate and demo ----------------------------------------------------------------------


def test_simulate_prints_one_json_line_then_serves_until_sigterm(tmp_path: Path) -> None:
    with processes() as procs:
        sim = start_simulator(procs, tmp_path, "--runs", "3", "--seed", "5")
        assert set(sim.announced) == {"endpoint", "secret_id", "secret_key", "runs"}
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.endpoint)
        assert len(sim.runs) == 3 == len(set(sim.runs))
        assert all(UUID_RE.match(run) for run in sim.runs)
        assert sim.secret_id
        assert sim.secret_key
        assert sim.get("/_sim/runs")["runs"] == sim.runs
        unsigned = {"X-TC-Action": "GetRunStatus", "X-TC-Version": "2022-11-28"}
        reply = http("POST", sim.endpoint + "/", body={"RunUuid": sim.runs[0]}, headers=unsigned)
        assert reply.status == 200
        # Unsigned API calls are refused, as Tencent's are.
        assert reply.json()["Response"]["Error"]["Code"].startswith("AuthFailure")

        assert stop(sim.proc, signal.SIGTERM, timeout=15) == 0
        assert sim.proc.stdout is not None
        assert sim.proc.stdout.read() == b""  # nothing after the first line


def test_demo_runs_by_itself_and_prints_transitions(tmp_path: Path) -> None:
    done = run_cli("demo", env=clean_env(tmp_path), cwd=tmp_path, timeout=75)
    assert done.returncode == 0, done.stdout + done.stderr
    transitions = [line for line in done.stdout.splitlines() if "→" in line]
    assert len(transitions) >= 5, done.stdout
    assert any("QUEUED" in line for line in transitions)
    assert any(s in done.stdout for s in ("SUCCESS", "EXECUTOR_ERROR", "CANCELED"))
    assert "Traceback" not in done.stderr
