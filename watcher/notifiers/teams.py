"""Microsoft Teams via a Workflows (Power Automate) webhook: an Adaptive Card 1.4.

The retired Office 365 connectors' MessageCard is refused by Workflows, so the body is a
``message`` whose single attachment is an Adaptive Card. The card is kept under 28 KB, the
documented ceiling for a Teams message. The URL carries its ``sig`` credential and is treated
as a secret. Workflows answer 202 Accepted once the flow has taken the request.
"""

from __future__ import annotations

from typing import Any, Literal

from watcher.notifiers.base import Rate
from watcher.notifiers.chat import ChatSettings, JsonChatNotifier
from watcher.notifiers.common import Deps, Kind, json_bytes
from watcher.notifiers.render import Message
from watcher.statuses import Severity

BODY_MAX_BYTES = 28_000
COLOURS: dict[Severity, str] = {
    "success": "Good",
    "failure": "Attention",
    "warning": "Warning",
    "info": "Accent",
}


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **extra}


def card(message: Message) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        _text(message.title, weight="Bolder", size="Medium", color=COLOURS[message.severity]),
    ]
    if message.body is not None:
        body.append(_text(message.body))
    else:
        body.append(_text(message.summary, weight="Bolder"))
        if message.facts:
            body.append(
                {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in message.facts]}
            )
        failure = message.failure
        if failure:
            if failure.task:
                body.append(_text(f"**Failed task:** {failure.task}"))
            if failure.message:
                body.append(_text(f"**Error:** {failure.message}", color="Attention"))
            if failure.stderr_tail:
                body.append(_text(failure.stderr_tail, fontType="Monospace", isSubtle=True))
        if message.note:
            body.append(_text(message.note, isSubtle=True))
    body.append(
        _text(f"event {message.event_id} · {message.timestamp}", size="Small", isSubtle=True)
    )
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "msteams": {"width": "Full"},
                    "body": body,
                },
            }
        ],
    }


def fits(body: dict[str, Any]) -> bool:
    return len(json_bytes(body)) <= BODY_MAX_BYTES


class TeamsSettings(ChatSettings):
    type: Literal["teams"]


class TeamsNotifier(JsonChatNotifier[TeamsSettings]):
    kind = "teams"

    def build(self, message: Message) -> dict[str, Any]:
        return card(message)

    def fits(self, body: dict[str, Any]) -> bool:
        return fits(body)


def _build(settings: TeamsSettings, deps: Deps) -> TeamsNotifier:
    return TeamsNotifier(settings, deps)


# Workflows publish no per-webhook figure; the old connectors throttled above 4 requests/s and
# Power Automate flows have per-minute action budgets, so stay modest: 30/min, 4 at once.
KIND = Kind(settings=TeamsSettings, build=_build, rates=(Rate(limit=30, period=60.0, burst=4),))
