"""WeCom (企业微信) group robot: a markdown message, or a text message with @-mentions.

Limits: markdown content 4096 bytes and text content 2048 bytes, counted in UTF-8 (WeCom's
group-robot docs); 20 messages per minute per robot. The robot key sits in the URL
(``...webhook/send?key=KEY``) so the URL is a secret.

WeCom answers HTTP 200 with ``{"errcode": 0, "errmsg": "ok"}``; any other ``errcode`` is an
error. Codes read here, from WeCom's global error-code table:

* ``45009`` "api freq out of limit": the robot's 20/min budget is spent → retryable;
* ``-1`` "system busy" → retryable;
* everything else (``93000`` invalid webhook URL, ``40008`` invalid message type,
  ``44004`` empty content, ``40058`` bad parameter, ...) → permanent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from watcher.events import Event
from watcher.notifiers.base import Rate
from watcher.notifiers.chat import ChatSettings, JsonChatNotifier, code_reader
from watcher.notifiers.common import Deps, Kind
from watcher.notifiers.render import Message, clip_bytes, plain_text
from watcher.statuses import Severity

MARKDOWN_MAX_BYTES = 4096
TEXT_MAX_BYTES = 2048
CONTENT_MAX_BYTES = {"markdown": MARKDOWN_MAX_BYTES, "text": TEXT_MAX_BYTES}
RETRYABLE_CODES = frozenset({45009, -1})
COLOURS: dict[Severity, str] = {
    "success": "info",  # green
    "failure": "warning",  # orange-red
    "warning": "warning",
    "info": "comment",  # grey
}

api_error = code_reader(RETRYABLE_CODES, ("errcode", "errmsg"))


def markdown(message: Message, *, mentions: list[str]) -> str:
    lines = [f"### {message.title}"]
    if message.body is not None:
        lines.append(message.body)
    else:
        colour = COLOURS[message.severity]
        lines.append(f'**<font color="{colour}">{message.summary}</font>**')
        lines += [f"> {k}: {v}" for k, v in message.facts]
        failure = message.failure
        if failure:
            lines += failure.lines(
                "**Failed task:** `{}`", '**Error:** <font color="warning">{}</font>'
            )
            if failure.stderr_tail:
                lines += [f"> {line}" for line in failure.stderr_tail.splitlines()]
        if message.note:
            lines.append(message.note)
    lines.append(f'<font color="comment">event {message.event_id}</font>')
    lines += [f"<@{user}>" for user in mentions]
    return "\n".join(lines)


class WeComSettings(ChatSettings):
    type: Literal["wecom"]
    # markdown (default) renders richly; text supports mentioned_list/mentioned_mobile_list.
    msgtype: Literal["markdown", "text"] = "markdown"
    mentioned_list: list[str] = Field(default_factory=list)  # user ids, or "@all"
    mentioned_mobile_list: list[str] = Field(default_factory=list)  # text messages only


class WeComNotifier(JsonChatNotifier[WeComSettings]):
    kind = "wecom"
    read_api_error = api_error

    def build(self, message: Message) -> dict[str, Any]:
        settings = self._settings
        if settings.msgtype == "text":
            text: dict[str, Any] = {"content": f"{message.title}\n{plain_text(message)}"}
            if settings.mentioned_list:
                text["mentioned_list"] = list(settings.mentioned_list)
            if settings.mentioned_mobile_list:
                text["mentioned_mobile_list"] = list(settings.mentioned_mobile_list)
            return {"msgtype": "text", "text": text}
        mentions = [u for u in settings.mentioned_list if u != "@all"]
        return {
            "msgtype": "markdown",
            "markdown": {"content": markdown(message, mentions=mentions)},
        }

    def fits(self, body: dict[str, Any]) -> bool:
        # WeCom limits the content alone, in UTF-8 bytes.
        return len(body[body["msgtype"]]["content"].encode()) <= CONTENT_MAX_BYTES[body["msgtype"]]

    def payload(self, event: Event) -> dict[str, Any]:
        body = super().payload(event)
        part = body[body["msgtype"]]  # even the barest rendering may be too long: clip it
        part["content"] = clip_bytes(part["content"], CONTENT_MAX_BYTES[body["msgtype"]])
        return body


def _build(settings: WeComSettings, deps: Deps) -> WeComNotifier:
    return WeComNotifier(settings, deps)


# "每个机器人发送的消息不能超过20条/分钟"; bursts of 5 keep a flood from using the minute up front.
KIND = Kind(settings=WeComSettings, build=_build, rates=(Rate(limit=20, period=60.0, burst=5),))
