"""Slack incoming webhook: a fallback ``text`` plus Block Kit ``blocks``.

Limits honoured (Slack's Block Kit reference): header text 150 characters, section text 3000,
section fields 10 of 2000 each, 50 blocks. The fallback text (used by notifications and old
clients) is kept to the title and status line. Slack's mrkdwn escapes ``&``, ``<`` and ``>``
and nothing else, so user data can neither ping ``@channel`` nor forge links.

Slack answers 200 ``ok`` on success, 4xx with a short reason (``invalid_payload``,
``no_service``...) and 429 with ``Retry-After`` when paced too fast (about 1 message/s).
"""

from __future__ import annotations

from typing import Any, Literal

from watcher.notifiers.base import Rate
from watcher.notifiers.chat import ChatSettings, JsonChatNotifier
from watcher.notifiers.common import Deps, Kind
from watcher.notifiers.render import Message, clip

HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
FIELDS_MAX = 10
BLOCKS_MAX = 50


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def payload(message: Message) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": clip(message.title, HEADER_MAX), "emoji": True},
        },
    ]
    if message.body is not None:
        if message.body.strip():
            blocks.append(_section(escape(message.body)))
    else:
        blocks.append(_section(f"*{escape(message.summary)}*"))
        if message.facts:
            fields = [
                {"type": "mrkdwn", "text": clip(f"*{escape(k)}*\n{escape(v)}", FIELD_MAX)}
                for k, v in message.facts[:FIELDS_MAX]
            ]
            blocks.append({"type": "section", "fields": fields})
        failure = message.failure
        if failure:
            lines = failure.lines("*Failed task:* `{}`", "*Error:* {}", escape)
            if lines:
                blocks.append(_section("\n".join(lines)))
            if failure.stderr_tail:
                tail = escape(failure.stderr_tail).replace("```", "`\u200b``")
                blocks.append(_section(f"```{tail}```"))
        if message.note:
            blocks.append(_section(escape(message.note)))
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"event `{message.event_id}` · {message.timestamp}"}
            ],
        }
    )
    text = clip(f"{message.title}: {message.summary}", SECTION_MAX)
    return {"text": text, "blocks": blocks[:BLOCKS_MAX]}


def fits(body: dict[str, Any]) -> bool:
    for block in body["blocks"]:
        text = block.get("text", {}).get("text", "")
        limit = HEADER_MAX if block["type"] == "header" else SECTION_MAX
        if len(text) > limit:
            return False
    return len(body["text"]) <= SECTION_MAX


class SlackSettings(ChatSettings):
    type: Literal["slack"]


class SlackNotifier(JsonChatNotifier[SlackSettings]):
    kind = "slack"

    def build(self, message: Message) -> dict[str, Any]:
        return payload(message)

    def fits(self, body: dict[str, Any]) -> bool:
        return fits(body)


def _build(settings: SlackSettings, deps: Deps) -> SlackNotifier:
    return SlackNotifier(settings, deps)


# "1 per second per webhook, short bursts allowed" (Slack rate-limit docs).
KIND = Kind(settings=SlackSettings, build=_build, rates=(Rate(limit=1, period=1.0),))
