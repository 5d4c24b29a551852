"""The log notifier: one structured ``notify_event`` line per event.

The notifier implied when none is configured, and a cheap way to see what the others would
send. It logs the identifiers, the title and the first line of a failure, never the whole
event (``metadata`` can be large), and it cannot fail.
"""

from __future__ import annotations

from typing import Literal

from watcher.events import Event
from watcher.notifiers.common import Deps, Kind, NotifierBase, renderer
from watcher.notifiers.render import clip, first_line


class LogSettings(NotifierBase):
    type: Literal["log"]


class LogNotifier:
    kind = "log"

    def __init__(self, settings: LogSettings, deps: Deps) -> None:
        self.name = settings.name
        self._logger = deps.logger
        self._renderer = renderer(settings, deps)

    async def send(self, event: Event) -> None:
        message = self._renderer.render(event)
        fields: dict[str, object] = {
            "notifier": self.name,
            "event_type": event.type,
            "event_id": event.id,
            "run_uuid": event.run_uuid,
            "project_id": event.project_id,
            "previous_status": event.previous_status,
            "status": event.status,
            "title": message.title,
        }
        if message.failure and message.failure.message:
            fields["error"] = clip(first_line(message.failure.message), 500)
        if message.body is not None:
            fields["body"] = clip(message.body, 2000)
        self._logger.info("notify_event", **fields)


def _build(settings: LogSettings, deps: Deps) -> LogNotifier:
    return LogNotifier(settings, deps)


KIND = Kind(settings=LogSettings, build=_build)
