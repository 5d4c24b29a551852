"""Generic webhook: the event's JSON, signed the Standard Webhooks way.

The body is exactly :meth:`Event.to_json` (or a user ``body_template``'s output). Headers:
``webhook-id`` (the event id, stable across retries: receivers deduplicate on it),
``webhook-timestamp`` (Unix seconds of *this* attempt) and, with a secret,
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per secret,
space separated, so a secret can be rotated by configuring the old and the new one together.
Signing keys are the base64 after ``whsec_``; they never appear in logs, errors or config dumps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from watcher.events import Event
from watcher.notifiers.common import Deps, HttpUrl, Kind, NotifierBase
from watcher.notifiers.http import post
from watcher.notifiers.render import Renderer
from watcher.secrets import Scrubber, secret_parts, url_secrets

_RESERVED = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "transfer-encoding",
    }
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; :class:`ValueError` if malformed."""
    if not secret.startswith("whsec_"):
        raise ValueError("each secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("each secret must look like whsec_<base64>") from None
    if len(key) < 16:
        raise ValueError("a signing secret needs at least 16 random bytes (24 to 64 recommended)")
    return key


def sign(keys: list[bytes], *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,<base64>`` entry per key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


class WebhookSettings(NotifierBase):
    type: Literal["webhook"]
    url: HttpUrl
    # One or more whsec_ secrets separated by spaces: all are used to sign (key rotation).
    secret: SecretStr | None = None
    # Extra request headers (e.g. an Authorization for a gateway); values are secrets.
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("secret")
    @classmethod
    def _secrets_decode(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = value.get_secret_value().split()
            if not parts:
                raise ValueError("must not be empty (leave it out to send unsigned requests)")
            for part in parts:
                decode_secret(part)
        return value

    @field_validator("headers")
    @classmethod
    def _headers_allowed(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED:
                raise ValueError(f"header {name!r} is set by the watcher itself")
        return value


class WebhookNotifier:
    kind = "webhook"

    def __init__(self, settings: WebhookSettings, deps: Deps) -> None:
        self.name = settings.name
        self._url = settings.url
        self._deps = deps
        raw_secrets = settings.secret.get_secret_value().split() if settings.secret else []
        self._keys = [decode_secret(part) for part in raw_secrets]
        self._headers = {k: v.get_secret_value() for k, v in settings.headers.items()}
        self._scrub = Scrubber(
            [
                *url_secrets(self._url),
                *(secret_parts(settings.secret.get_secret_value()) if settings.secret else []),
                *self._headers.values(),
            ]
        )
        self._renderer = (
            Renderer(
                notifier=self.name,
                logger=deps.logger,
                body_template=settings.body_template,
                statuses=deps.statuses,
            )
            if settings.body_template
            else None
        )

    def body(self, event: Event) -> bytes:
        if self._renderer is not None:
            rendered = self._renderer.render(event).body
            if rendered is not None:
                return rendered.encode()
        return event.to_json().encode()

    def headers(self, event: Event, body: bytes, *, timestamp: int) -> dict[str, str]:
        headers = {**self._headers, "webhook-id": event.id, "webhook-timestamp": str(timestamp)}
        if self._keys:
            headers["webhook-signature"] = sign(
                self._keys, msg_id=event.id, timestamp=timestamp, body=body
            )
        return headers

    async def send(self, event: Event) -> None:
        body = self.body(event)
        timestamp = int(self._deps.clock().timestamp())
        await post(
            self._deps.session,
            self._url,
            body=body,
            headers=self.headers(event, body, timestamp=timestamp),
            now=self._deps.clock,
            scrub=self._scrub,
        )


def _build(settings: WebhookSettings, deps: Deps) -> WebhookNotifier:
    return WebhookNotifier(settings, deps)


# No limit by default: a generic receiver states its own with 429 + Retry-After, and users
# can set rate_per_minute.
KIND = Kind(settings=WebhookSettings, build=_build)
