"""The command line and the files it touches: which commands may create a state file, where a
relative ``[state] path`` points, and what ``check-config`` says about the files and the
credential source it used (interface.md, "Second release": "Files and the state").

Everything runs through ``watcher.cli.main([...])`` in an isolated working directory and
``HOME``; the ``--probe`` tests talk to the real simulator (``support.start_simulator``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import write_config

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
    code, out, _ = cli(capsys, "check-config", "-c", str(config))
    assert code == 0
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
