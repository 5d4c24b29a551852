"""Feishu (飞书) and Lark custom bots: an interactive card (default) or a text message, signed.

Types ``feishu`` and ``lark`` behave alike (Lark is the international edition, URLs on
``open.larksuite.com``). Signing ("签名校验"): the body gets ``"timestamp"`` (Unix seconds, as
a string) and ``"sign" = base64(HMAC_SHA256(key=f"{timestamp}\\n{secret}", msg=b""))``; note
that key and message are the other way round from DingTalk. Feishu refuses timestamps more
than an hour off.

Limits: request body 20 KB; 100 requests per minute and 5 per second per bot.

Feishu answers ``{"code": 0, "msg": "success", ...}`` (older bots:
``{"StatusCode": 0, "StatusMessage": "success"}``); codes read here, from Feishu's
custom-bot guide and server error-code list:

* ``11232`` (message sending rate limited: the 100/min, 5/s budget) → retryable;
* ``11233`` (per-chat sending rate limited) and ``99991400`` (generic "request trigger
  frequency limit") → retryable, as they mean the same thing from other layers;
* everything else (``19021`` signature mismatch or timestamp off by over an hour, ``19022``
  IP not allowed, ``19024`` keyword missing, ``9499`` bad request, ...) → permanent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Literal

from pydantic import SecretStr

from watcher.notifiers.base import Rate
from watcher.notifiers.chat import ChatSettings, JsonChatNotifier, code_reader
from watcher.notifiers.common import Deps, Kind, json_bytes
from watcher.notifiers.render import Message, plain_text
from watcher.statuses import Severity

BODY_MAX_BYTES = 20_000
RETRYABLE_CODES = frozenset({11232, 11233, 99991400})
TEMPLATES: dict[Severity, str] = {
    "success": "green",
    "failure": "red",
    "warning": "orange",
    "info": "blue",
}

api_error = code_reader(RETRYABLE_CODES, ("code", "msg"), ("StatusCode", "StatusMessage"))


def signature(secret: str, timestamp: int) -> str:
    digest = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _md(text: str) -> dict[str, Any]:
    return {"tag": "div", "text": {"tag": "lark_md", "content": text}}


def card(message: Message) -> dict[str, Any]:
    elements: list[dict[str, Any]] = []
    if message.body is not None:
        elements.append(_md(message.body))
    else:
        elements.append(_md(f"**{message.summary}**"))
        if message.facts:
            elements.append(
                {
                    "tag": "div",
                    "fields": [
                        {
                            "is_short": k not in ("Run", "Labels"),
                            "text": {"tag": "lark_md", "content": f"**{k}**\n{v}"},
                        }
                        for k, v in message.facts
                    ],
                }
            )
        failure = message.failure
        if failure:
            elements.append({"tag": "hr"})
            lines = failure.lines("**Failed task:** {}", "**Error:** {}")
            if lines:
                elements.append(_md("\n".join(lines)))
            if failure.stderr_tail:
                elements.append(
                    {"tag": "div", "text": {"tag": "plain_text", "content": failure.stderr_tail}}
                )
        if message.note:
            elements.append(_md(message.note))
    elements.append(
        {
            "tag": "note",
            "elements": [
                {"tag": "plain_text", "content": f"event {message.event_id} · {message.timestamp}"}
            ],
        }
    )
    return {
        "config": {"wide_screen_mode": True},
        "header": {
            "template": TEMPLATES[message.severity],
            "title": {"tag": "plain_text", "content": message.title},
        },
        "elements": elements,
    }


class FeishuSettings(ChatSettings):
    type: Literal["feishu", "lark"]
    secret: SecretStr | None = None  # the bot's signing secret ("签名校验")
    msg_type: Literal["interactive", "text"] = "interactive"


class FeishuNotifier(JsonChatNotifier[FeishuSettings]):
    read_api_error = api_error

    def __init__(self, settings: FeishuSettings, deps: Deps) -> None:
        super().__init__(settings, deps, secret=settings.secret)
        self.kind = settings.type

    def extra_fields(self) -> dict[str, str]:
        if self._secret is None:
            return {}
        timestamp = int(self._deps.clock().timestamp())
        return {"timestamp": str(timestamp), "sign": signature(self._secret, timestamp)}

    def build(self, message: Message) -> dict[str, Any]:
        if self._settings.msg_type == "text":
            text = f"{message.title}\n{plain_text(message)}"
            return {"msg_type": "text", "content": {"text": text}}
        return {"msg_type": "interactive", "card": card(message)}

    def fits(self, body: dict[str, Any]) -> bool:
        return len(json_bytes(body)) <= BODY_MAX_BYTES


def _build(settings: FeishuSettings, deps: Deps) -> FeishuNotifier:
    return FeishuNotifier(settings, deps)


# "自定义机器人的频率控制: 100 次/分钟, 5 次/秒".
KIND = Kind(
    settings=FeishuSettings,
    build=_build,
    rates=(Rate(limit=5, period=1.0), Rate(limit=100, period=60.0, burst=10)),
)
