"""The command line explains itself: every option of every command has help text and shows
its default, ``-V``/``--version`` print the version, and ``completion`` prints a shell script
generated from the same parser (shtab), so new commands complete without extra work.

The walk goes through ``build_parser()`` itself: commands other modules register
(``cli_history``, ``cli_silence``, ``cli_simulate``, ...) are checked too.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import clean_env, run_cli

from watcher import __version__
from watcher.cli import build_parser, main


def parsers(
    parser: argparse.ArgumentParser, path: str = "omics-watcher"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser and subparser, with the command words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def subcommand_helps(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                found[choice.dest] = choice.help
            for name in action.choices:
                found.setdefault(name, None)
    return found


def without_help(parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    for path, p in parsers(parser):
        for name, text in subcommand_helps(p).items():
            if not text:
                problems.append(f"{path} {name}: no help")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            where = f"{path} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                problems.append(f"{where}: no help")
                continue
            default = action.default
            # 0 is a default worth showing; False (a flag), None, [] and "" are "not given".
            shown = not (default is None or default is False or default in ([], "", "==SUPPRESS=="))
            if shown and "%(default)s" not in action.help:
                problems.append(f"{where}: default {default!r} not shown")
    return problems


def test_every_option_of_every_command_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    names = [path for path, _ in parsers(parser)]
    assert "omics-watcher check-config" in names
    assert "omics-watcher completion" in names
    assert without_help(parser) == []


def test_the_walk_catches_an_option_without_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = sub.add_parser("extra", help="a command added late")
    extra.add_argument("--bare", type=int, default=3)
    extra.add_argument("--quiet-default", type=int, default=4, help="some help")
    assert without_help(parser) == [
        "omics-watcher extra --bare: no help",
        "omics-watcher extra --quiet-default: default 4 not shown",
    ]


def test_help_pages_render_with_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for path, _ in parsers(build_parser()):
        words = path.split()[1:]
        with pytest.raises(SystemExit) as exc:
            main([*words, "--help"])
        assert exc.value.code == 0, path
        out = capsys.readouterr().out
        assert "%(default)" not in out, path
    main_help = build_parser().format_help()
    assert "-V, --version" in main_help


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_flag(tmp_path: Path, flag: str) -> None:
    done = run_cli(flag, env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"omics-watcher {__version__}\n"


def test_completion_scripts_name_every_command_and_option(tmp_path: Path) -> None:
    parser = build_parser()
    commands = [path.split()[-1] for path, _ in parsers(parser)][1:]
    done = run_cli("completion", "tcsh", env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in commands)  # tcsh's script stops at commands
    for shell in ("bash", "zsh"):
        done = run_cli("completion", shell, env=clean_env(tmp_path), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        for path, p in parsers(parser):
            assert path.split()[-1] in done.stdout, (shell, path)
            for action in p._actions:
                for option in action.option_strings:
                    if option.startswith("--"):
                        assert option in done.stdout, (shell, path, option)
    done = run_cli("completion", "fish", env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_and_options_with_the_generated_script(tmp_path: Path) -> None:
    script = run_cli("completion", "bash", env=clean_env(tmp_path), cwd=tmp_path).stdout
    (tmp_path / "complete.bash").write_text(script)
    probe = r"""
source ./complete.bash
ask() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE="$*";
        COMP_POINT=${#COMP_LINE}; COMPREPLY=(); _shtab_omics_watcher; echo "${COMPREPLY[*]}"; }
ask omics-watcher che
ask omics-watcher check-config --pr
ask omics-watcher list --ac
"""
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["check-config", "--probe", "--active"]
