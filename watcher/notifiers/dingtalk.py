"""DingTalk (钉钉) custom robot: a markdown message with optional @-mentions, signed.

Signing ("加签"): with a secret, the URL gets ``&timestamp=<ms>&sign=<S>`` where
``S = urlencode(base64(HMAC_SHA256(key=secret, msg=f"{ms}\\n{secret}")))``; DingTalk refuses
timestamps more than an hour off. The ``access_token`` in the URL and the secret are both
credentials and never leave this module except on the wire.

Limits: about 20 KB per message; 20 messages per minute per robot, and a robot that goes over
is throttled for 10 minutes, so the default pace is well inside it.

DingTalk answers HTTP 200 with ``{"errcode": 0, "errmsg": "ok"}``; codes read here (DingTalk
custom-robot error table):

* ``410100`` "发送速度太快而限流" (sending too fast, throttled) → retryable;
* ``130101`` "send too fast, exceed 20 times per minute" (older API) → retryable;
* ``-1`` "系统繁忙" (system busy) → retryable;
* everything else (``310000`` keyword/signature/IP-allowlist mismatch, ``400101``
  access_token does not exist, ``400102`` robot disabled, ``430101``-``430104`` content
  refused, ...) → permanent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from typing import Any, Literal

from pydantic import Field, SecretStr

from watcher.notifiers.base import Rate
from watcher.notifiers.chat import ChatSettings, JsonChatNotifier, code_reader
from watcher.notifiers.common import Deps, Kind, json_bytes
from watcher.notifiers.render import Message

BODY_MAX_BYTES = 20_000
RETRYABLE_CODES = frozenset({410100, 130101, -1})

api_error = code_reader(RETRYABLE_CODES, ("errcode", "errmsg"))


def signature(secret: str, timestamp_ms: int) -> str:
    """The base64 signature (before URL-encoding) for ``timestamp_ms``."""
    digest = hmac.new(
        secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode()


def signed_url(url: str, secret: str, timestamp_ms: int) -> str:
    sign = urllib.parse.quote_plus(signature(secret, timestamp_ms))
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}timestamp={timestamp_ms}&sign={sign}"


def markdown(message: Message, *, mentions: list[str]) -> str:
    # DingTalk's markdown needs a blank line (or two trailing spaces) for a line break.
    parts = [f"#### {message.title}"]
    if message.body is not None:
        parts.append(message.body)
    else:
        parts.append(f"**{message.summary}**")
        parts.append("\n".join(f"- {k}: {v}" for k, v in message.facts))
        failure = message.failure
        if failure:
            parts += failure.lines("**Failed task:** {}", "**Error:** {}")
            if failure.stderr_tail:
                parts.append("\n".join(f"> {line}" for line in failure.stderr_tail.splitlines()))
        if message.note:
            parts.append(message.note)
    parts.append(f"event {message.event_id}")
    if mentions:
        # Mentions only highlight when the @ also appears in the text.
        parts.append(" ".join(f"@{who}" for who in mentions))
    return "\n\n".join(part for part in parts if part)


class DingTalkSettings(ChatSettings):
    type: Literal["dingtalk"]
    secret: SecretStr | None = None  # the robot's "加签" secret (SEC...)
    at_mobiles: list[str] = Field(default_factory=list)
    at_user_ids: list[str] = Field(default_factory=list)
    at_all: bool = False


class DingTalkNotifier(JsonChatNotifier[DingTalkSettings]):
    kind = "dingtalk"
    read_api_error = api_error

    def __init__(self, settings: DingTalkSettings, deps: Deps) -> None:
        super().__init__(settings, deps, secret=settings.secret)

    def build(self, message: Message) -> dict[str, Any]:
        settings = self._settings
        mentions = [*settings.at_mobiles, *settings.at_user_ids]
        return {
            "msgtype": "markdown",
            "markdown": {"title": message.title, "text": markdown(message, mentions=mentions)},
            "at": {
                "atMobiles": list(settings.at_mobiles),
                "atUserIds": list(settings.at_user_ids),
                "isAtAll": settings.at_all,
            },
        }

    def fits(self, body: dict[str, Any]) -> bool:
        return len(json_bytes(body)) <= BODY_MAX_BYTES

    def url(self) -> str:
        if self._secret is None:
            return self._url
        millis = int(self._deps.clock().timestamp() * 1000)
        return signed_url(self._url, self._secret, millis)


def _build(settings: DingTalkSettings, deps: Deps) -> DingTalkNotifier:
    return DingTalkNotifier(settings, deps)


# 20/min per robot, and going over blocks the robot for 10 minutes: bursts of 5.
KIND = Kind(settings=DingTalkSettings, build=_build, rates=(Rate(limit=20, period=60.0, burst=5),))
