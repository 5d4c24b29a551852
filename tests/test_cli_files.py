"""The command line and the files it touches: which commands may create a state file, where a
relative ``[state] path`` points, and what ``check-config`` says about the files and the
credential source it used (interface.md, "Second release": "Files and the state").

Everything runs through ``watcher.cli.main([...])`` in an isolated working directory and
``HOME``; the ``--probe`` tests talk to the real simulator (``support.start_simulator``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    Simulator,
    clean_env,
    free_port,
    processes,
    run_cli,
    start_simulator,
    write_config,
)

from watcher.cli import main

RUN_A = "84232c68-a016-4668-b2e3-168a175d6f29"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ambient configuration: empty cwd and HOME, no OMICS_WATCHER_/TENCENTCLOUD_ vars."""
    for key in list(os.environ):
        if key.startswith(("OMICS_WATCHER_", "TENCENTCLOUD_", "TKE_")):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- reading commands never create a state file ---------------------------------------------


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["untrack", RUN_A]])
def test_reading_commands_on_a_missing_state_exit_1_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    state = tmp_path / "state" / "watcher.db"
    state.parent.mkdir()
    config = write_config(tmp_path / "c.toml", {"state": {"path": str(state)}})
    code, out, err = cli(capsys, argv[0], "-c", str(config), *argv[1:])
    assert code == 1, (out, err)
    assert err.strip() == f"no state file at {state}"
    assert out == ""
    assert list(state.parent.iterdir()) == []  # no file, no -wal, no lock


def test_without_a_config_list_in_an_empty_folder_creates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = cli(capsys, "list")
    assert code == 1
    assert err.strip() == "no state file at omics-watcher.db"
    assert list(Path.cwd().iterdir()) == []


def test_track_creates_the_state_and_list_then_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s.db"
    config = write_config(tmp_path / "c.toml", {"state": {"path": str(state)}})
    code, _, err = cli(capsys, "track", "-c", str(config), RUN_A)
    assert code == 0, err
    assert state.is_file()
    code, out, err = cli(capsys, "list", "-c", str(config))
    assert code == 0, err
    assert RUN_A in out


# -- a relative [state] path is relative to the config file's folder -------------------------


def test_a_relative_state_path_in_a_config_file_is_beside_that_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc" / "watcher"
    config = write_config(etc / "config.toml", {"state": {"path": "data/state.db"}})
    (etc / "data").mkdir()
    code, _, err = cli(capsys, "track", "-c", str(config), RUN_A)
    assert code == 0, err
    assert (etc / "data" / "state.db").is_file()
    assert list(Path.cwd().iterdir()) == []  # nothing where the command was run
    # The same file from another working directory, the config named relatively, or through
    # $OMICS_WATCHER_CONFIG.
    monkeypatch.chdir(tmp_path / "etc")
    for argv in (["-c", "watcher/config.toml"], []):
        if not argv:
            monkeypatch.setenv("OMICS_WATCHER_CONFIG", str(config))
        code, out, err = cli(capsys, "list", *argv)
        assert code == 0, (argv, err)
        assert RUN_A in out
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", "AKIDtest")
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", "test-key")
    code, out, err = cli(capsys, "check-config", "-c", str(config))
    assert code == 0, err
    assert f'"path": "{etc / "data" / "state.db"}"' in out


def test_a_state_path_from_the_environment_or_the_defaults_is_relative_to_the_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "etc" / "c.toml", {"polling": {"interval_seconds": 5}})
    code, _, err = cli(capsys, "track", "-c", str(config), RUN_A)  # no [state] in the file
    assert code == 0, err
    assert (Path.cwd() / "omics-watcher.db").is_file()
    assert not (tmp_path / "etc" / "omics-watcher.db").exists()

    write_config(config, {"state": {"path": "beside.db"}})
    monkeypatch.setenv("OMICS_WATCHER_STATE__PATH", "from-env.db")
    code, _, err = cli(capsys, "track", "-c", str(config), RUN_A)
    assert code == 0, err
    assert (Path.cwd() / "from-env.db").is_file()
    assert not (tmp_path / "etc" / "beside.db").exists()


# -- check-config: which file, which credential source, --probe ------------------------------

ID, KEY = "AKIDcheckconfig0123456789", "checkConfigKey-0123456789abcdef"


def report(err: str) -> dict[str, str]:
    """check-config's stderr lines as {"config file": ..., "credentials": ..., ...}."""
    lines = [line.partition(": ") for line in err.splitlines() if line.strip()]
    return {head: rest for head, _, rest in lines}


def test_check_config_names_the_file_it_read_or_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", ID)
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", KEY)
    code, out, err = cli(capsys, "check-config")
    assert code == 0, err
    assert json.loads(out)["state"]["path"] == "omics-watcher.db"  # stdout stays one JSON
    assert report(err)["config file"].startswith("none (built-in defaults")
    Path("omics-watcher.toml").write_text("[polling]\ninterval_seconds = 5\n")
    code, _, err = cli(capsys, "check-config")
    assert report(err)["config file"] == "omics-watcher.toml"
    config = write_config(tmp_path / "etc" / "c.toml", {})
    code, _, err = cli(capsys, "check-config", "-c", str(config))
    assert report(err)["config file"] == str(config)


def test_check_config_without_credentials_fails_as_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated: Path
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        {
            "tencentcloud": {"endpoint": "http://127.0.0.1:9"},
            "state": {"path": str(tmp_path / "s.db")},
            "server": {"listen": f"127.0.0.1:{free_port()}"},
        },
    )
    code, out, err = cli(capsys, "check-config", "-c", str(config))
    assert code == 2
    assert json.loads(out)["tencentcloud"]["endpoint"] == "http://127.0.0.1:9"
    problem = err.splitlines()[-1]
    assert problem.startswith("credentials error: no Tencent Cloud credentials found; tried:")
    assert str(isolated / ".tencentcloud" / "credentials") in problem
    # run refuses to start with the very same line and code.
    done = run_cli("run", "-c", str(config), env=clean_env(isolated), cwd=tmp_path, timeout=30)
    assert done.returncode == 2, done.stderr
    assert problem in done.stderr.splitlines()


@pytest.mark.parametrize(
    "where",
    ["environment", "profile", "config", "config_file", "env_override", "env_override_file"],
)
def test_check_config_names_the_credential_source_never_a_value(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated: Path,
    where: str,
) -> None:
    config = tmp_path / "c.toml"
    secret_file = tmp_path / "secret_key"
    secret_file.write_text(KEY + "\n")
    toml = "[tencentcloud]\n"
    if where == "environment":
        monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", ID)
        monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", KEY)
        expected = "environment variables TENCENTCLOUD_SECRET_ID, TENCENTCLOUD_SECRET_KEY"
    elif where == "profile":
        profile = isolated / ".tencentcloud" / "credentials"
        profile.parent.mkdir()
        profile.write_text(f"[default]\nsecret_id = {ID}\nsecret_key = {KEY}\n")
        expected = f"profile file {profile} ([default])"
    elif where == "config":
        toml += f'secret_id = "{ID}"\nsecret_key = "{KEY}"\n'
        expected = f"config file {config}: [tencentcloud] secret_id; config file {config}: " + (
            "[tencentcloud] secret_key"
        )
    elif where == "config_file":
        toml += f'secret_id = "{ID}"\nsecret_key_file = "{secret_file}"\n'
        expected = f"config file {config}: [tencentcloud] secret_id; *_file: " + (
            f"[tencentcloud] secret_key_file in {config}"
        )
    else:
        toml += f'secret_id = "{ID}"\n'
        if where == "env_override":
            monkeypatch.setenv("OMICS_WATCHER_TENCENTCLOUD__SECRET_KEY", KEY)
            origin = "environment variable OMICS_WATCHER_TENCENTCLOUD__SECRET_KEY"
        else:
            monkeypatch.setenv("OMICS_WATCHER_TENCENTCLOUD__SECRET_KEY_FILE", str(secret_file))
            origin = (
                "*_file named by environment variable OMICS_WATCHER_TENCENTCLOUD__SECRET_KEY_FILE"
            )
        expected = f"config file {config}: [tencentcloud] secret_id; {origin}"
    config.write_text(toml)
    code, out, err = cli(capsys, "check-config", "-c", str(config))
    assert code == 0, err
    assert report(err)["credentials"] == expected
    for value in (ID, KEY):
        assert value not in out
        assert value not in err


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with processes() as procs:
        yield start_simulator(procs, tmp_path_factory.mktemp("sim"), "--runs", "3", "--seed", "3")


@pytest.mark.parametrize("case", ["good", "wrong_secret", "closed_port"])
def test_check_config_probe_makes_one_read_only_call(
    tmp_path: Path, isolated: Path, sim: Simulator, case: str
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}" if case == "closed_port" else sim.endpoint
    key = "not-the-secret" if case == "wrong_secret" else sim.secret_key
    env = clean_env(
        isolated,
        {
            "OMICS_WATCHER_TENCENTCLOUD__ENDPOINT": endpoint,
            "TENCENTCLOUD_SECRET_ID": sim.secret_id,
            "TENCENTCLOUD_SECRET_KEY": key,
        },
    )
    before = sim.stats()["requests"]
    done = run_cli("check-config", "--probe", env=env, cwd=tmp_path, timeout=60)
    json.loads(done.stdout)  # the configuration still comes first
    lines = done.stderr.splitlines()
    if case == "good":
        assert done.returncode == 0, done.stderr
        assert lines[-1].startswith(f"probe OK: DescribeRuns at {sim.endpoint} ")
        assert "3 runs visible" in lines[-1]
        after = sim.stats()["requests"]
        assert after["DescribeRuns"] == before["DescribeRuns"] + 1  # one call, read-only
        assert {a: n for a, n in after.items() if a != "DescribeRuns"} == {
            a: n for a, n in before.items() if a != "DescribeRuns"
        }
    else:
        assert done.returncode == 1, done.stderr
        assert lines[-1].startswith(f"probe failed: DescribeRuns at {endpoint} ")
        if case == "wrong_secret":
            assert "AuthFailure.SignatureFailure: " in lines[-1]
        else:
            assert "ConnectionError: " in lines[-1]
            assert f"Cannot connect to host 127.0.0.1:{endpoint.rpartition(':')[2]}" in lines[-1]
    assert "not-the-secret" not in done.stderr
    assert sim.secret_key not in done.stderr
