"""Structured logging setup: console lines on a terminal, JSON lines otherwise.

The console lines (short, delivery problems summarised) are :mod:`watcher.service.console`'s.

Called once, by the CLI (the only code that touches the process). Event names are fixed
snake_case strings (``poll_failed``, ``notify_delivered``); context is bound as keys.
A last processor masks every configured secret value wherever it appears, so a secret that
slips into an error message from a library still never reaches the log.

In JSON mode an exception is one line, never a traceback (:func:`compact_exception`): its
type and a short message under ``exception``, where it was raised under ``exception_at``.
A traceback per failure is how a storm of failing connections once wrote 33 MB of log in a
minute. Records of the standard ``logging`` module (asyncio, aiohttp) go through the same
processors (:class:`StdlibBridge`), at most one line per source and message every
:data:`STDLIB_LOG_EVERY` seconds, the rest counted in the next line's ``suppressed``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

from watcher.display import printable
from watcher.secrets import Scrubber
from watcher.service.console import ConsoleRenderer

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


EXCEPTION_MESSAGE_CHARS = 300
STDLIB_LOG_EVERY = 10.0

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exc_tuple(value: Any) -> _ExcInfo | None:
    if value is True:
        value = sys.exc_info()
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value[0], value[1], value[2]
    return None


def compact_exception(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``exc_info`` → ``exception`` ("Type: short message") and ``exception_at`` (file:line)."""
    exc = _exc_tuple(event_dict.pop("exc_info", None))
    if exc is None:
        return event_dict
    kind, value, tb = exc
    message = " ".join(str(value).split())
    if len(message) > EXCEPTION_MESSAGE_CHARS:
        message = message[:EXCEPTION_MESSAGE_CHARS] + "…"
    event_dict["exception"] = f"{kind.__name__}: {message}" if message else kind.__name__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f"{os.path.basename(code.co_filename)}:{tb.tb_lineno}"
        event_dict["exception_at"] = f"{where} in {code.co_name}"
    return event_dict


class StdlibBridge(logging.Handler):
    """Sends ``logging`` records (asyncio, aiohttp, …) through structlog, rate-limited.

    One line per (logger, message template) every ``every`` seconds; the lines held back
    meanwhile are counted in the next one's ``suppressed``.
    """

    def __init__(
        self, *, every: float = STDLIB_LOG_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(logging.WARNING)
        self._every = every
        self._clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, str(record.msg))
        now = self._clock()
        last, held = self._last.get(key, (-float("inf"), 0))
        if now - last < self._every:
            self._last[key] = (last, held + 1)
            return
        if len(self._last) > 1000:  # many distinct messages: forget the old ones
            self._last.clear()
        self._last[key] = (now, 0)
        fields: dict[str, Any] = {"logger": record.name}
        if held:
            fields["suppressed"] = held
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a library's call
            message = str(record.msg)
        log = structlog.get_logger(record.name)
        log.log(record.levelno, " ".join(message.split())[:EXCEPTION_MESSAGE_CHARS], **fields)


class SecretMasker:
    """A structlog processor masking known secrets with :class:`watcher.secrets.Scrubber`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._scrub = Scrubber(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too (a reloaded configuration may bring new secrets)."""
        self._scrub = self._scrub.adding(secrets)

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self._scrub:
            return event_dict
        for key, value in list(event_dict.items()):
            event_dict[key] = self._scrub.mask(value)
        return event_dict


def escape_controls(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Console lines: text values with control characters escaped (labels, API messages and
    config keys are other people's text); tracebacks keep their line breaks. Non-text values
    are printed with ``repr``, which escapes them already."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = printable(value, keep_newlines=key == "exception")
    return event_dict


def console_wanted(fmt: str, stream: TextIO) -> bool:
    """Lines for people (:mod:`watcher.service.console`) rather than JSON: ``console``, or
    ``auto`` with ``stream`` a terminal."""
    return fmt == "console" or (fmt == "auto" and stream.isatty())


def configure(
    *,
    fmt: str = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> SecretMasker:
    """Configure structlog for this process (JSON unless ``fmt`` says console or on a TTY).

    Returns the secret masker, so that a configuration reload can add new secrets to it.
    """
    stream = stream or sys.stderr
    use_console = console_wanted(fmt, stream)
    renderer: Any = ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    masker = SecretMasker(secrets)
    exceptions = structlog.processors.format_exc_info if use_console else compact_exception
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            exceptions,
            masker,
            *([escape_controls] if use_console else []),  # JSON escapes them itself
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib_logging()
    return masker


def _bridge_stdlib_logging() -> None:
    """One :class:`StdlibBridge` on the root logger (replacing an earlier one), so records of
    ``logging`` no longer reach its last-resort handler's multi-line tracebacks."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(StdlibBridge())
