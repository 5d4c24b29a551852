"""Settings → option dataclasses: the one place where configuration meets components.

Components (pollers, dispatcher, event producers, limiters) take small frozen option
dataclasses and never import :mod:`watcher.config`, so each can be built and tested without a
whole configuration, and a config key touches only ``config.py``, this module and the component
that uses it. The composition root (:mod:`watcher.app`) calls the functions here.
"""

from __future__ import annotations

from watcher.config import Settings, StuckSettings
from watcher.service.server import ServerOptions
from watcher.stuck import StuckLimits

# Event producers and the HTTP server (helper D): stuck limits, server options.


def stuck_limits(settings: StuckSettings) -> StuckLimits:
    """``[stuck]``: ``per_label`` keys ``KEY=VALUE`` become ``(KEY, VALUE)`` pairs."""
    labels: dict[tuple[str, str], float] = {}
    for selector, seconds in settings.per_label.items():
        key, _, value = selector.partition("=")
        labels[(key.strip(), value.strip())] = seconds
    return StuckLimits(settings.after_seconds, dict(settings.per_status), labels)


def server_options(settings: Settings) -> ServerOptions:
    """``[server]`` and the default project of runs tracked through the admin API."""
    token = settings.server.admin_token
    return ServerOptions(
        host=settings.server.host,
        port=settings.server.port,
        admin_token=token.get_secret_value() if token else None,
        default_project_id=settings.tencentcloud.project_id,
    )
