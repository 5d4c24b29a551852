"""``omics-watcher completion bash|zsh|tcsh``: a shell completion script made from the parser
itself by shtab (a maintained library for argparse completion), so every command and option,
including those added later, completes without a hand-written script to keep in step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

SHELLS = ("bash", "zsh", "tcsh")


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from watcher.cli import build_parser

    parser = build_parser()
    _mark_files(parser, shtab.FILE)
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _mark_files(parser: argparse.ArgumentParser, hint: Any) -> None:
    """Options taking a FILE complete file names (shtab reads an action's ``complete``)."""
    for action in parser._actions:
        if action.metavar == "FILE":
            action.complete = hint  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _mark_files(child, hint)


def add_parser(command: Callable[[str, Callable[[argparse.Namespace], int], str], Any]) -> None:
    p = command("completion", cmd_completion, "print a shell completion script")
    p.add_argument(
        "shell",
        choices=SHELLS,
        metavar="SHELL",
        help=f"one of {', '.join(SHELLS)} (the script goes to stdout; README: Shell completion)",
    )
