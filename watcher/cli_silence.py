"""``omics-watcher silence add|list|expire``: silences from the command line.

Kept apart from :mod:`watcher.cli` so the command's parsing and output live in one place. A
silence is written into the state (the SQLite file or PostgreSQL); a running daemon, the
active one of several replicas, picks it up within 2 s (see
:mod:`watcher.delivery.silencer`). Every subcommand needs an existing state (exit 1 with
``no state file at PATH``, or naming the database, otherwise; nothing created). Bad input
exits 2 naming it: a matcher key, a duration, a time, a notifier the configuration does not
have.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from watcher.delivery.silencing import Silence

_HEADER = ("ID", "STATE", "STARTS", "ENDS", "NOTIFIERS", "MATCHERS", "COMMENT")


def _usage(option: str, problem: object) -> Exception:
    from watcher.cli import EXIT_USAGE, Exit

    return Exit(EXIT_USAGE, f"error: {option}: {problem}")


def _matchers(pairs: Sequence[str]) -> dict[str, str]:
    from watcher.cli import _text_arg
    from watcher.delivery.silencing import SilenceError, check_matchers, parse_matcher

    try:
        return check_matchers(parse_matcher(_text_arg("--match", pair)) for pair in pairs)
    except SilenceError as exc:
        raise _usage("--match", exc) from None


def _notifiers(settings: Any, given: Sequence[str]) -> list[str]:
    """The named notifiers, each one the configuration has (with none configured, ``log``)."""
    known = [n.name for n in settings.notifiers] or ["log"]
    for name in given:
        if name not in known:
            raise _usage("--notifier", f"no notifier named {name!r}; have: {', '.join(known)}")
    return list(dict.fromkeys(given))


def _ends_at(args: argparse.Namespace, now: datetime) -> datetime:
    from watcher.delivery.silencing import SilenceError, parse_duration, parse_time

    try:
        if args.for_ is not None:
            return now + parse_duration(args.for_)
        until = parse_time(args.until)
    except SilenceError as exc:
        raise _usage("--for" if args.for_ is not None else "--until", exc) from None
    if until <= now:
        raise _usage("--until", f"{args.until!r} is not in the future")
    return until


def cmd_silence_add(args: argparse.Namespace) -> int:
    from watcher.cli import EXIT_OK, _settings, _text_arg, opened_state, run_on_state
    from watcher.delivery.silencing import SilenceError, check_comment

    settings = _settings(args)
    matchers = _matchers(args.match)
    notifiers = _notifiers(settings, args.notifier)
    try:
        comment = check_comment(_text_arg("--comment", args.comment))
    except SilenceError as exc:
        raise _usage("--comment", exc) from None
    now = datetime.now(UTC)
    ends_at = _ends_at(args, now)

    async def add() -> Silence:
        async with opened_state(settings) as store:
            return await store.add_silence(
                matchers=matchers,
                starts_at=now,
                ends_at=ends_at,
                notifiers=notifiers,
                comment=comment,
            )

    print(run_on_state(add()).id)
    return EXIT_OK


def _cells(item: dict[str, Any]) -> tuple[str, ...]:
    from watcher.display import printable

    cells = (
        str(item["id"]),
        item["state"],
        item["starts_at"],
        item["ends_at"],
        ",".join(item["notifiers"]) or "(all)",
        ",".join(f"{k}={v}" for k, v in sorted(item["matchers"].items())),
        item["comment"] or "-",
    )
    return tuple(printable(cell) for cell in cells)


async def _silences(settings: Any) -> list[Silence]:
    from watcher.cli import opened_state

    async with opened_state(settings) as store:
        return await store.silences()


def cmd_silence_list(args: argparse.Namespace) -> int:
    from watcher.cli import EXIT_OK, _settings, run_on_state

    settings = _settings(args)
    found = run_on_state(_silences(settings))
    now = datetime.now(UTC)
    items = [silence.to_json_dict(now) for silence in found]
    if args.json:
        sys.stdout.write(json.dumps(items, ensure_ascii=False) + "\n")
        return EXIT_OK
    table = [_HEADER, *(_cells(item) for item in items)]
    widths = [max(len(row[i]) for row in table) for i in range(len(_HEADER))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


async def _expire(settings: Any, silence_id: int) -> tuple[Silence | None, Silence | None]:
    """The silence before and after ending it (``None``: no such silence)."""
    from watcher.cli import opened_state

    async with opened_state(settings) as store:
        before = await store.get_silence(silence_id)
        silence = await store.expire_silence(silence_id) if before is not None else None
    return before, silence


def cmd_silence_expire(args: argparse.Namespace) -> int:
    from watcher.cli import EXIT_OK, EXIT_RUNTIME, Exit, _settings, run_on_state

    settings = _settings(args)
    before, silence = run_on_state(_expire(settings, args.id))
    if silence is None or before is None:
        raise Exit(EXIT_RUNTIME, f"error: no silence with id {args.id}")
    if before.state(datetime.now(UTC)) == "expired":
        print(f"silence {silence.id} had already ended")
    else:
        print(f"expired silence {silence.id}")
    return EXIT_OK


def add_parsers(sub: Any, with_config: Callable[[argparse.ArgumentParser], Any]) -> None:
    """``silence`` and its subcommands, on the top-level subparsers ``sub``."""
    about = "withhold notifications for matching events for a while"
    parent = sub.add_parser("silence", help=about, description=about)
    verbs = parent.add_subparsers(dest="silence_command", required=True, metavar="SUBCOMMAND")

    about = "add a silence; prints its id"
    p = with_config(verbs.add_parser("add", help=about, description=about))
    p.set_defaults(handler=cmd_silence_add)
    p.add_argument(
        "--match",
        action="append",
        required=True,
        metavar="KEY=VALUE",
        help="repeatable, all must hold; KEY: run_uuid, project_id, status, type or label.NAME",
    )
    span = p.add_mutually_exclusive_group(required=True)
    span.add_argument(
        "--for",
        dest="for_",
        metavar="DURATION",
        help="how long from now: a number and s, m, h or d (30s, 90m, 2h, 1d)",
    )
    span.add_argument(
        "--until",
        metavar="TIME",
        help="when it ends: ISO 8601 with Z or an offset (2026-11-27T18:00:00Z, ...T18:00+08:00)",
    )
    p.add_argument(
        "--notifier",
        action="append",
        default=[],
        metavar="N",
        help="repeatable; only deliveries to these notifiers (default: all notifiers)",
    )
    p.add_argument(
        "--comment", default="", metavar="TEXT", help="why, for the record (default: none)"
    )

    about = "list active, pending and recently ended silences (ended up to 7 days ago)"
    p = with_config(verbs.add_parser("list", help=about, description=about))
    p.set_defaults(handler=cmd_silence_list)
    p.add_argument("--json", action="store_true", help="one JSON array (default: a table)")

    about = "end a silence now (it stays listed as expired for 7 days)"
    p = with_config(verbs.add_parser("expire", help=about, description=about))
    p.set_defaults(handler=cmd_silence_expire)
    p.add_argument("id", type=int, metavar="ID", help="the silence's id (silence list)")
