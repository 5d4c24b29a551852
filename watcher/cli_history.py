"""``omics-watcher history``, ``dead-letters`` and ``redeliver``: what became of each delivery,
and sending the dead ones again.

Kept apart from :mod:`watcher.cli` so these commands' parsing and output live in one place.
Each needs an existing state (a SQLite file or a PostgreSQL database with our schema: exit 1
with ``no state file at PATH`` otherwise; nothing is created) and works beside a running
daemon, or replicas: ``redeliver`` puts dead letters back in the outbox (same event id, so
receivers deduplicate; attempts and the ``max_age_seconds`` clock start again) and the
active daemon's dispatcher, which scans the outbox every second, sends them.
Only rows of notifiers the configuration has go back: a row for a removed notifier could
never be sent.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from watcher.run_uuids import RUN_UUID

if TYPE_CHECKING:
    from watcher.store.api import AsyncStore
    from watcher.store.history import DeadLetter, HistoryEntry, Redelivery

_PAGE = 1000  # dead letters read and printed at a time


def configured_notifiers(settings: Any) -> list[str]:
    """The notifier names the daemon runs with this configuration (``log`` when none)."""
    return [n.name for n in settings.notifiers] or ["log"]


async def _history(settings: Any, run_uuid: str) -> list[HistoryEntry] | None:
    from watcher.cli import opened_state

    async with opened_state(settings) as store:
        return await store.run_history(run_uuid)


def cmd_history(args: argparse.Namespace) -> int:
    from watcher.cli import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, Exit, _settings, run_on_state
    from watcher.display import printable
    from watcher.history_view import history_json, history_line

    settings = _settings(args)
    if not RUN_UUID.fullmatch(args.run_uuid):
        raise Exit(EXIT_USAGE, f"error: not a run UUID: {args.run_uuid!r}")
    run_uuid = args.run_uuid.lower()
    entries = run_on_state(_history(settings, run_uuid))
    if entries is None:
        raise Exit(EXIT_RUNTIME, f"error: run {run_uuid} is not in the registry")
    if args.json:
        sys.stdout.write(json.dumps(history_json(entries), ensure_ascii=False) + "\n")
        return EXIT_OK
    if not entries:
        print(printable(f"run {run_uuid}: no events recorded yet"))
    for entry in entries:
        print(history_line(entry))
    return EXIT_OK


async def _dead_letter_pages(
    store: AsyncStore, notifier: str | None
) -> AsyncIterator[list[DeadLetter]]:
    before: int | None = None
    while True:
        page = await store.list_dead_letters(notifier=notifier, limit=_PAGE, before_id=before)
        if page:
            yield page
        if len(page) < _PAGE:
            return
        before = page[-1].id


async def _dead_letters(settings: Any, notifier: str | None, as_json: bool) -> int:
    from watcher.cli import EXIT_OK, opened_state, print_table_pages, write_json_pages
    from watcher.history_view import DEAD_LETTER_HEADER, dead_letter_cells, dead_letter_json

    async with opened_state(settings) as store:
        pages = _dead_letter_pages(store, notifier)
        if as_json:
            await write_json_pages(pages, dead_letter_json)
        elif not await print_table_pages(DEAD_LETTER_HEADER, pages, dead_letter_cells):
            print("no dead letters")
    return EXIT_OK


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """Dead letters, most recent first, streamed page by page."""
    from watcher.cli import _settings, _text_arg, run_on_state

    settings = _settings(args)
    notifier = None if args.notifier is None else _text_arg("--notifier", args.notifier)
    return run_on_state(_dead_letters(settings, notifier, args.json))


def _redelivery(args: argparse.Namespace, known: list[str]) -> Any:
    from watcher.cli import EXIT_USAGE, Exit, _text_arg
    from watcher.store.history import Redelivery, redelivery_ids

    chosen = int(args.all) + int(args.notifier is not None) + int(bool(args.delivery_ids))
    if chosen != 1:
        raise Exit(EXIT_USAGE, "error: give exactly one of --all, --notifier N or DELIVERY_IDs")
    if args.notifier is not None and args.notifier not in known:
        name = _text_arg("--notifier", args.notifier)
        raise Exit(EXIT_USAGE, f"error: no notifier named {name!r}; have: {', '.join(known)}")
    try:
        ids = redelivery_ids(args.delivery_ids)
    except ValueError as exc:
        raise Exit(EXIT_USAGE, f"error: {exc}") from None
    return Redelivery(all=args.all, notifier=args.notifier, ids=ids, configured=frozenset(known))


async def _redeliver(settings: Any, which: Redelivery) -> tuple[list[int], list[DeadLetter]]:
    """The ids put back, and (``--all``) the dead letters left behind."""
    from watcher.cli import opened_state

    async with opened_state(settings) as store:
        done = await store.redeliver(which)
        left = await store.list_dead_letters(limit=_PAGE) if which.all else []
    return done, left


def cmd_redeliver(args: argparse.Namespace) -> int:
    from watcher.cli import EXIT_OK, _settings, run_on_state
    from watcher.display import printable

    settings = _settings(args)
    known = configured_notifiers(settings)
    which = _redelivery(args, known)
    done, left = run_on_state(_redeliver(settings, which))
    print(f"redelivered {len(done)}")
    for row_id in sorted(set(which.ids) - set(done)):
        print(f"warning: not a dead letter of a configured notifier: {row_id}", file=sys.stderr)
    removed = sorted({letter.notifier for letter in left if letter.notifier not in known})
    if removed:
        names = ", ".join(removed)
        print(printable(f"warning: left dead (notifier not configured): {names}"), file=sys.stderr)
    return EXIT_OK


def add_parsers(sub: Any, with_config: Callable[[argparse.ArgumentParser], Any]) -> None:
    """``history``, ``dead-letters`` and ``redeliver`` on the top-level subparsers ``sub``."""
    about = "a run's events, oldest first, with what became of each delivery"
    p = with_config(sub.add_parser("history", help=about, description=about))
    p.set_defaults(handler=cmd_history)
    p.add_argument("run_uuid", metavar="RUN_UUID", help="the run (as tracked)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON array of the events as delivered, each with its deliveries "
        "(default: one line per event)",
    )

    about = "deliveries given up on (dead letters), most recent first"
    p = with_config(sub.add_parser("dead-letters", help=about, description=about))
    p.set_defaults(handler=cmd_dead_letters)
    p.add_argument(
        "--notifier", metavar="N", help="only this notifier's (default: every notifier's)"
    )
    p.add_argument("--json", action="store_true", help="one JSON array (default: a table)")

    about = (
        "send dead letters again: back in the outbox with the same event id, attempts and "
        "max_age_seconds starting again; a running daemon sends them within 2 s"
    )
    p = with_config(sub.add_parser("redeliver", help=about, description=about))
    p.set_defaults(handler=cmd_redeliver)
    p.add_argument(
        "--all", action="store_true", help="every dead letter (default: only those named)"
    )
    p.add_argument(
        "--notifier", metavar="N", help="every dead letter of this notifier (default: none)"
    )
    p.add_argument(
        "delivery_ids",
        nargs="*",
        metavar="DELIVERY_ID",
        help="dead letters by id, as dead-letters lists them (default: none)",
    )
