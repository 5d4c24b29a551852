"""Structured logging setup: console lines on a terminal, JSON lines otherwise.

Called once, by the CLI (the only code that touches the process). Event names are fixed
snake_case strings (``poll_failed``, ``notify_delivered``); context is bound as keys.
A last processor masks every configured secret value wherever it appears, so a secret that
slips into an error message from a library still never reaches the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from watcher.secrets import Scrubber

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


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
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    masker = SecretMasker(secrets)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            masker,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return masker
