"""What the status page is built from (``[server] admin_token``, ``viewer_token``, ``ui`` and
the polling budget it reports against); built by :func:`watcher.options.ui_options`."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SESSION_SECONDS = 8 * 3600.0
DEFAULT_MAX_SESSIONS = 256


@dataclass(frozen=True, slots=True)
class UiOptions:
    """The status page's settings. ``viewer_token``: read-only logins (None: none)."""

    admin_token: str
    viewer_token: str | None = None
    rate_per_second: float = 20.0  # the GetRunStatus budget the health panel compares to
    interval_seconds: float = 30.0  # the wanted time between two polls of one run
    session_seconds: float = DEFAULT_SESSION_SECONDS  # a session's whole lifetime
    max_sessions: int = DEFAULT_MAX_SESSIONS  # beyond: the oldest session is logged out

    def __repr__(self) -> str:  # never show a token, even in a traceback's locals
        return f"UiOptions(viewer={self.viewer_token is not None})"
