"""Discord webhook: one embed coloured by status.

Limits honoured (Discord's embed limits): title 256 characters, description 4096, 25 fields
with names of 256 and values of 1024, footer 2048, and 6000 characters over the whole embed.
``allowed_mentions`` is empty, so nothing in a run's data can ping anyone.

Discord answers 204 (or 200 with ``?wait=true``) on success and 429 with a JSON
``retry_after`` in seconds (and a ``Retry-After`` header) when paced faster than about
5 requests per 2 seconds per webhook.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from watcher.notifiers.base import Rate
from watcher.notifiers.chat import ChatSettings, JsonChatNotifier
from watcher.notifiers.common import Deps, Kind
from watcher.notifiers.render import Message, clip
from watcher.statuses import Severity

TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FIELDS_MAX = 25
EMBED_TOTAL_MAX = 6000

COLOURS: dict[Severity, int] = {
    "success": 0x2EB67D,
    "failure": 0xE01E5A,
    "warning": 0xECB22E,
    "info": 0x36C5F0,
}


def _code(text: str) -> str:
    return "```\n" + text.replace("```", "`\u200b``") + "\n```"


def payload(message: Message, *, username: str | None = None) -> dict[str, Any]:
    if message.body is not None:
        description = message.body
        fields: list[dict[str, Any]] = []
    else:
        parts = [f"**{message.summary}**"]
        failure = message.failure
        if failure:
            parts += failure.lines("**Failed task:** `{}`", "**Error:** {}")
            if failure.stderr_tail:
                parts.append(_code(failure.stderr_tail))
        if message.note:
            parts.append(message.note)
        description = "\n".join(parts)
        fields = [
            {
                "name": clip(k, FIELD_NAME_MAX),
                "value": clip(v, FIELD_VALUE_MAX) or "-",
                "inline": k not in ("Run", "Labels"),
            }
            for k, v in message.facts[:FIELDS_MAX]
        ]
    embed: dict[str, Any] = {
        "title": clip(message.title, TITLE_MAX),
        "description": description,
        "color": COLOURS[message.severity],
        "fields": fields,
        "footer": {"text": f"event {message.event_id}"},
        "timestamp": message.timestamp,
    }
    body: dict[str, Any] = {"embeds": [embed], "allowed_mentions": {"parse": []}}
    if username:
        body["username"] = username
    return body


def embed_size(embed: dict[str, Any]) -> int:
    """What Discord counts against the 6000-character total."""
    size = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    return size + sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])


def fits(body: dict[str, Any]) -> bool:
    embed = body["embeds"][0]
    return len(embed["description"]) <= DESCRIPTION_MAX and embed_size(embed) <= EMBED_TOTAL_MAX


class DiscordSettings(ChatSettings):
    type: Literal["discord"]
    username: str | None = Field(None, min_length=1, max_length=80)


class DiscordNotifier(JsonChatNotifier[DiscordSettings]):
    kind = "discord"

    def build(self, message: Message) -> dict[str, Any]:
        return payload(message, username=self._settings.username)

    def fits(self, body: dict[str, Any]) -> bool:
        return fits(body)


def _build(settings: DiscordSettings, deps: Deps) -> DiscordNotifier:
    return DiscordNotifier(settings, deps)


# Discord's per-webhook bucket is 5 requests per 2 seconds (it reports it in
# X-RateLimit-* headers; 429 otherwise).
KIND = Kind(settings=DiscordSettings, build=_build, rates=(Rate(limit=5, period=2.0),))
