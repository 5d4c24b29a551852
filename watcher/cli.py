"""Command line: parses arguments, owns signals and exit codes. The only code that touches
the process (stdin/stdout, environment, signals, ``sys.exit``).

Exit codes (interface.md): 0 success or clean stop; 1 runtime failure (or an API error for
``status``); 2 usage or configuration error; 3 startup failure (state file, port).

Commands that use the state open it through :func:`opened_state` (``[state] path``: the
SQLite file, or ``[state] url``: PostgreSQL, the same :class:`~watcher.store.api.AsyncStore`
either way) inside a coroutine run by :func:`run_on_state`, so each works beside a running
daemon and against a database shared by replicas, standbys included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from watcher import __version__
from watcher.display import printable, printable_json
from watcher.limits import LabelError, label_problems
from watcher.run_uuids import RUN_UUID

if TYPE_CHECKING:
    from watcher.store.api import AsyncStore
    from watcher.store.models import TrackedRun, TrackResult

T = TypeVar("T")
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_STARTUP = 0, 1, 2, 3


class Exit(Exception):
    """Stop with ``code`` after printing ``lines`` on standard error."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.code = code
        self.lines = lines


def _settings(args: argparse.Namespace) -> Any:
    from watcher.config import ConfigError, load_settings

    try:
        return load_settings(args.config)
    except ConfigError as exc:
        raise Exit(EXIT_USAGE, *(f"config error: {line}" for line in exc.problems)) from None


@contextlib.asynccontextmanager
async def opened_state(settings: Any, *, create: bool = False) -> AsyncIterator[AsyncStore]:
    """The state of ``settings`` (``[state] path`` or ``url``), closed after the block.

    Only ``track`` (and ``run``) pass ``create``: the other commands (``list``, ``history``,
    ``untrack``, ``dead-letters``, ``redeliver``, ``silence``) create nothing, and a missing
    state file or a database without our schema is exit 1 (:func:`run_on_state`)."""
    from watcher.options import state_options

    store = await state_options(settings).open(create=create)
    try:
        yield store
    finally:
        await store.close()


def run_on_state(command: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; state errors become exits: no state (a reading command)
    is 1 with ``no state file at PATH`` or ``database NAME holds no omics-watcher state
    yet``, any other (unusable file, database unreachable) 3 with ``state error: ...``.
    Messages name the file or the database, never a URL (it may carry a password)."""
    from watcher.store import StateError
    from watcher.store.db import StateMissing

    try:
        return asyncio.run(command)
    except StateMissing as exc:
        raise Exit(EXIT_RUNTIME, str(exc)) from None
    except StateError as exc:
        raise Exit(EXIT_STARTUP, f"state error: {exc}") from None


def _configure_logging(settings: Any) -> Any:
    from watcher.secrets import secret_values
    from watcher.service.logs import configure

    return configure(
        fmt=settings.logging.format, level=settings.logging.level, secrets=secret_values(settings)
    )


def _text_arg(option: str, value: str) -> str:
    """``value`` if it is text the state file can hold (argv bytes that are not UTF-8 arrive
    as lone surrogates, which SQLite refuses)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Exit(EXIT_USAGE, f"error: {option} {value!r}: not valid UTF-8 text") from None
    return value


def _parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = _text_arg("--label", pair).partition("=")
        if not sep or not key.strip():
            raise Exit(EXIT_USAGE, f"error: --label {pair!r}: expected KEY=VALUE")
        labels[key.strip()] = value
    problems = label_problems(labels)
    if problems:
        raise Exit(EXIT_USAGE, *(f"error: --label: {problem}" for problem in problems))
    return labels


def read_uuid_lines(stream: TextIO) -> list[str]:
    """Run UUIDs from ``stream``, one per line; blank lines and ``#`` comments skipped."""
    found = []
    for line in stream:
        text = line.split("#", 1)[0].strip()
        if text:
            found.append(text)
    return found


# -- commands -------------------------------------------------------------------------------


async def _tracked_runs(store: AsyncStore, uuids: Sequence[str]) -> dict[str, TrackedRun]:
    """The registry entries of those of ``uuids`` that are tracked."""
    tracked = await store.tracked_among(uuids)
    runs = {u: await store.get_run(u) for u in uuids if u in tracked}
    return {u: run for u, run in runs.items() if run is not None}


async def _retrack_lines(
    store: AsyncStore, before: dict[str, TrackedRun], existing: Sequence[str]
) -> list[str]:
    """One line per change to a run that was tracked already (labels, project)."""
    from watcher.retrack import change_lines

    lines: list[str] = []
    for u in existing:
        after = await store.get_run(u) if u in before else None
        if after is not None:
            lines.extend(change_lines(before[u], after))
    return lines


async def _track(
    settings: Any, good: list[str], project_id: str | None, labels: dict[str, str]
) -> tuple[TrackResult, list[str]]:
    """Track ``good`` (creating the state if needed); the result and the re-track lines."""
    from watcher.store import TrackRequest

    async with opened_state(settings, create=True) as store:
        if project_id is not None:
            projects = dict.fromkeys(good, project_id)
        else:
            # Like POST /v1/runs: a new run gets the configured default project, an already
            # tracked one keeps its own ("" leaves the stored project as it is), so adding
            # a label never moves a run to another project.
            tracked = await store.tracked_among(good)
            default = settings.tencentcloud.project_id
            projects = {u: "" if u in tracked else default for u in good}
        # Runs tracked already whose labels or project this call may change: read before and
        # after, so re-tracking with other labels is never silent (watcher.retrack).
        may_change = labels or project_id is not None
        before = await _tracked_runs(store, good) if may_change else {}
        try:
            result = await store.track(TrackRequest(u, projects[u], labels) for u in good)
        except LabelError as exc:  # with the labels the run has already: nothing added
            raise Exit(EXIT_USAGE, f"error: --label: {exc}") from None
        return result, await _retrack_lines(store, before, result.existing)


def cmd_track(args: argparse.Namespace) -> int:
    settings = _settings(args)
    labels = _parse_labels(args.label)
    given: list[str] = args.run_uuids
    uuids = read_uuid_lines(sys.stdin) if given == ["-"] else given
    bad = [u for u in uuids if not RUN_UUID.fullmatch(u)]
    good = list(dict.fromkeys(u.lower() for u in uuids if RUN_UUID.fullmatch(u)))
    if args.project_id is not None:
        _text_arg("--project-id", args.project_id)
    if good:
        result, changes = run_on_state(_track(settings, good, args.project_id, labels))
        print(f"tracked {len(result.added)} new, {len(result.existing)} already tracked")
        for line in changes:
            print(printable(line), file=sys.stderr)
    for u in bad:
        print(printable(f"error: not a run UUID: {u!r}"), file=sys.stderr)
    return EXIT_USAGE if bad else EXIT_OK


async def _untrack(settings: Any, uuids: list[str]) -> list[str]:
    async with opened_state(settings) as store:
        # Only UUIDs can be tracked (track refuses the rest): anything else is "not tracked".
        return await store.untrack(u.lower() for u in uuids if RUN_UUID.fullmatch(u))


def cmd_untrack(args: argparse.Namespace) -> int:
    settings = _settings(args)
    removed = run_on_state(_untrack(settings, args.run_uuids))
    unknown = sorted(set(u.lower() for u in args.run_uuids) - set(removed))
    print(f"untracked {len(removed)}")
    for u in unknown:
        print(f"warning: not tracked: {printable(u)}", file=sys.stderr)
    return EXIT_OK


_LIST_HEADER = ("RUN_UUID", "PROJECT", "STATUS", "TERMINAL", "LAST_POLLED", "LABELS")
_LIST_PAGE = 1000  # runs read and printed at a time: memory stays flat however big the registry


def _list_time(on_terminal: bool) -> Callable[[str | None], str]:
    """How ``list`` shows a time: relative on a terminal ("3m ago"), else ISO 8601 as stored."""
    from datetime import UTC, datetime

    from watcher.display import ago

    if not on_terminal:
        return lambda iso: iso or "-"
    now = datetime.now(UTC)
    return lambda iso: ago(datetime.fromisoformat(iso) if iso else None, now)


def _list_cells(r: dict[str, Any], when: Callable[[str | None], str]) -> tuple[str, ...]:
    """One run as the text table's cells, control characters escaped."""
    cells = (
        r["run_uuid"],
        r["project_id"] or "-",
        r["status"] or "-",
        "yes" if r["terminal"] else "no",
        when(r["last_polled_at"]),
        ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
    )
    return tuple(printable(cell) for cell in cells)


async def _list_pages(
    store: AsyncStore, args: argparse.Namespace
) -> AsyncIterator[list[dict[str, Any]]]:
    """The runs ``list`` shows, as JSON objects, one registry page at a time."""
    from watcher.store import RunFilter

    where = RunFilter(status=args.status, labels=_parse_labels(args.label), active=args.active)
    left = args.limit if args.limit is not None else -1
    cursor = None
    while left != 0:
        size = _LIST_PAGE if left < 0 else min(left, _LIST_PAGE)
        page = await store.page_runs(limit=size, cursor=cursor, where=where)
        left -= len(page.runs) if left > 0 else 0
        yield [run.to_json_dict() for run in page.runs]
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def write_json_pages(pages: AsyncIterator[Iterable[T]], as_json: Callable[[T], Any]) -> None:
    """One JSON array of every item of ``pages``, written as the pages come: byte for byte
    what ``json.dump`` of the whole list printed before reading commands paged."""
    sep = "["
    async for page in pages:
        for item in page:
            sys.stdout.write(sep + json.dumps(as_json(item), ensure_ascii=False))
            sep = ", "
    sys.stdout.write("[]\n" if sep == "[" else "]\n")


async def print_table_pages(
    header: Sequence[str], pages: AsyncIterator[Iterable[T]], cells: Callable[[T], Sequence[str]]
) -> bool:
    """A table of ``pages`` printed page by page (the header above the first; columns widen
    as longer cells come); whether there was a page at all."""
    widths = [len(h) for h in header]
    shown = False
    async for page in pages:
        table = [cells(item) for item in page]
        widths = [max([w, *(len(row[i]) for row in table)]) for i, w in enumerate(widths)]
        if not shown:
            table.insert(0, header)
            shown = True
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return shown


async def _list(settings: Any, args: argparse.Namespace) -> int:
    async with opened_state(settings) as store:
        pages = _list_pages(store, args)
        if args.json:
            await write_json_pages(pages, lambda obj: obj)
            return EXIT_OK
        when = _list_time(sys.stdout.isatty())
        await print_table_pages(_LIST_HEADER, pages, lambda r: _list_cells(r, when))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    """The registry, streamed page by page (text columns widen as longer cells come)."""
    settings = _settings(args)
    if args.limit is not None and args.limit < 1:
        raise Exit(EXIT_USAGE, "error: --limit must be at least 1")
    if args.status is not None:
        _text_arg("--status", args.status)
    return run_on_state(_list(settings, args))


def cmd_status(args: argparse.Namespace) -> int:
    from watcher.connect import one_status

    settings = _settings(args)
    if not RUN_UUID.fullmatch(args.run_uuid):
        raise Exit(EXIT_USAGE, f"error: not a run UUID: {args.run_uuid!r}")
    project = args.project_id if args.project_id is not None else settings.tencentcloud.project_id
    try:
        raw = asyncio.run(one_status(settings, args.run_uuid.lower(), project, environ=os.environ))
    except Exception as exc:
        # Same mapping as the async commands: an API error is "code: message" and exit 1,
        # missing credentials exit 2 naming the sources tried; never a traceback.
        raise _exit_for(exc) from None
    sys.stdout.write(printable_json(raw, indent=2) + "\n")
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    """The effective configuration on stdout (JSON); on stderr which file and credential
    source were used and, with ``--probe``, the outcome of one read-only API call. Without
    credentials it fails as ``run`` does (exit 2, the same line)."""
    from watcher.check_config import config_file_line, inspect, state_line
    from watcher.config import find_config_file
    from watcher.secrets import redacted

    settings = _settings(args)
    sys.stdout.write(printable_json(redacted(settings), indent=2) + "\n")
    sys.stdout.flush()
    config_file = find_config_file(args.config, os.environ)
    print(printable(config_file_line(config_file)), file=sys.stderr)
    print(printable(state_line(settings)), file=sys.stderr)
    try:
        line, probe = asyncio.run(
            inspect(settings, config_file=config_file, environ=os.environ, probe=args.probe)
        )
    except Exception as exc:
        raise _exit_for(exc) from None
    print(printable(line), file=sys.stderr)
    if probe is not None:
        print(printable(probe.line), file=sys.stderr)
        return EXIT_OK if probe.ok else EXIT_RUNTIME
    return EXIT_OK


def cmd_test_notify(args: argparse.Namespace) -> int:
    from watcher.sample_notify import send_test_notification

    settings = _settings(args)
    _configure_logging(settings)
    names = [n.name for n in settings.notifiers] or ["log"]
    if args.name not in names:
        raise Exit(EXIT_USAGE, f"error: no notifier named {args.name!r}; have: {', '.join(names)}")
    return _run_async(lambda stop: send_test_notification(settings, args.name, stop=stop))


def cmd_run(args: argparse.Namespace) -> int:
    from watcher.app import Wiring, run_daemon
    from watcher.config import load_settings
    from watcher.secrets import secret_values
    from watcher.service.console import EventPrinter
    from watcher.service.logs import console_wanted

    settings = _settings(args)
    masker = _configure_logging(settings)
    # On a terminal, one line per event, status first (watcher.service.console).
    console = console_wanted(settings.logging.format, sys.stderr)
    wiring = Wiring(on_event=EventPrinter(sys.stderr)) if console else Wiring()
    grace = settings.daemon.shutdown_grace_seconds

    def reload_settings() -> Any:
        fresh = load_settings(args.config)
        masker.add(secret_values(fresh))  # secrets new in the file are masked from now on
        return fresh

    return _run_async(
        lambda stop, reload=None: run_daemon(
            settings,
            stop=stop,
            reload=reload,
            # SIGHUP re-reads the same file (and environment); without this the reloader
            # never runs and SIGHUP silently does nothing.
            reload_settings=reload_settings,
            environ=os.environ,
            wiring=wiring,
        ),
        grace=grace,
        with_reload=True,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo
    from watcher.service.logs import configure

    configure(fmt="console", level="error")  # the demo prints its own story on stdout
    return _run_async(lambda stop: run_demo(stop=stop, out=sys.stdout))


# -- process plumbing -----------------------------------------------------------------------


def _run_async(main: Callable[..., Any], *, grace: float = 10.0, with_reload: bool = False) -> int:
    """Run ``main(stop[, reload])`` with signal handling.

    The first SIGTERM/SIGINT sets ``stop`` and arms a hard deadline of ``grace`` seconds;
    a second signal exits at once. SIGHUP sets ``reload`` when the command supports it.
    """

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        reload = asyncio.Event()
        task = asyncio.current_task()

        def on_stop() -> None:
            if stop.is_set():
                os._exit(EXIT_RUNTIME)  # second signal: the user wants out now
            stop.set()
            # Past the grace period, cancel whatever is still running; the outbox keeps the rest.
            loop.call_later(grace + 1.0, lambda: task.cancel() if task else None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop)
        if with_reload:
            loop.add_signal_handler(signal.SIGHUP, reload.set)
        try:
            result = await (main(stop, reload) if with_reload else main(stop))
        except asyncio.CancelledError:
            return EXIT_OK if stop.is_set() else EXIT_RUNTIME
        return int(result) if result is not None else EXIT_OK

    try:
        return asyncio.run(runner())
    except Exception as exc:
        raise _exit_for(exc) from None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _exit_for(exc: Exception) -> Exit:
    """The exit code and message for what ended an async command (TaskGroups flattened)."""
    from watcher.omics.credentials import CredentialsError
    from watcher.omics.errors import OmicsError
    from watcher.service.server import ServerStartError
    from watcher.store import StateError
    from watcher.store.lock import StateInUse

    for leaf in _leaves(exc):
        if isinstance(leaf, StateInUse):
            return Exit(EXIT_STARTUP, str(leaf))  # interface.md's exact line, no prefix
        if isinstance(leaf, StateError):
            return Exit(EXIT_STARTUP, f"state error: {leaf}")
        if isinstance(leaf, ServerStartError):
            return Exit(EXIT_STARTUP, f"server error: {leaf}")
        if isinstance(leaf, CredentialsError):
            return Exit(EXIT_USAGE, f"credentials error: {leaf}")
        if isinstance(leaf, OmicsError):
            return Exit(EXIT_RUNTIME, f"{leaf.code}: {leaf.message}" if leaf.message else leaf.code)
    import structlog

    structlog.get_logger("watcher.cli").exception("crashed", exc_info=exc)
    return Exit(EXIT_RUNTIME, f"error: {type(exc).__name__}: {exc}")


def _add_registry_parsers(command: Callable[..., Any], with_config: Callable[..., Any]) -> None:
    """``track``, ``untrack`` and ``list``."""
    p = with_config(command("track", cmd_track, "add runs to the registry (idempotent)"))
    p.add_argument(
        "--project-id", help="ProjectId of these runs (default: [tencentcloud] project_id)"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label the runs (repeatable); merged into an already tracked run's labels, "
        "a given key replacing its value, each change said on stderr (default: none)",
    )
    p.add_argument("run_uuids", nargs="+", metavar="RUN_UUID", help="run UUIDs, or - to read stdin")
    p = with_config(command("untrack", cmd_untrack, "stop watching runs (history stays)"))
    p.add_argument("run_uuids", nargs="+", metavar="RUN_UUID", help="run UUIDs to stop watching")
    about = "show the registry of tracked runs (on a terminal, times are relative: 3m ago)"
    p = with_config(command("list", cmd_list, about))
    p.add_argument("--json", action="store_true", help="one JSON array (times as ISO 8601 UTC)")
    p.add_argument("--status", metavar="S", help="only runs whose last seen status is S")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs with this label (repeatable: all must hold)",
    )
    p.add_argument("--active", action="store_true", help="only runs not terminal (still polled)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N runs (default: all)")


def build_parser() -> argparse.ArgumentParser:
    from watcher.cli_simulate import add_parser as add_simulate_parser

    parser = argparse.ArgumentParser(
        prog="omics-watcher",
        description="Watch Tencent Cloud Omics runs and report every status change.",
    )
    parser.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the version",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> Any:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="TOML configuration file (default: $OMICS_WATCHER_CONFIG, else "
            "./omics-watcher.toml if present, else built-in defaults)",
        )
        return p

    with_config(command("run", cmd_run, "run the daemon in the foreground"))
    _add_registry_parsers(command, with_config)
    p = with_config(command("status", cmd_status, "one GetRunStatus call; prints Metadata"))
    p.add_argument("--project-id", help="ProjectId of the run (default: [tencentcloud] project_id)")
    p.add_argument("run_uuid", metavar="RUN_UUID", help="the run to ask about")
    p = with_config(
        command("check-config", cmd_check_config, "validate and print the configuration")
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="also make one read-only API call (DescribeRuns, Limit 1); exit 1 if it fails",
    )
    p = with_config(command("test-notify", cmd_test_notify, "send a sample event to a notifier"))
    p.add_argument("name", metavar="NAME", help="a notifier's name (log when none is configured)")
    add_simulate_parser(sub, command)
    command("demo", cmd_demo, "simulator + daemon in one process; ends by itself")
    from watcher.cli_completion import add_parser as add_completion_parser

    add_completion_parser(command)
    from watcher.cli_silence import add_parsers as add_silence_parsers

    add_silence_parsers(sub, with_config)
    from watcher.cli_history import add_parsers as add_history_parsers

    add_history_parsers(sub, with_config)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        return int(args.handler(args))
    except Exit as exc:
        for line in exc.lines:
            print(printable(line), file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # `omics-watcher list | head`: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
