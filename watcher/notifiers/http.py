"""HTTP delivery for the webhook-style notifiers: one POST, one verdict.

:func:`classify_http` is the single place that maps an HTTP outcome to delivered /
:class:`Retryable` / :class:`Permanent`:

* 2xx is success, unless the body carries the chat API's own error (WeCom and DingTalk
  ``errcode``, Feishu ``code``), which the kind's ``api_error`` reader turns into a verdict;
* 408, 429 and 5xx are retryable, honouring ``Retry-After`` (seconds or an HTTP-date) and a
  JSON ``retry_after`` (Discord), whichever asks for longer;
* redirects are permanent (a webhook that moved must be reconfigured, and following it could
  leak the payload), as is every other 4xx.

Network errors are retryable. Timeouts are not decided here: the dispatcher bounds each attempt.

Invariant: reasons name the destination by scheme and host only (:func:`redact_url`) and pass
any text that came back from the server through the notifier's :class:`Scrubber`, so neither
a URL's token nor a signing secret can reach a log line or an exception message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from yarl import URL

from watcher import __version__
from watcher.notifiers.base import Permanent, Retryable

USER_AGENT = f"omics-watcher/{__version__}"
_MAX_RESPONSE = 64 * 1024
_SNIPPET = 200


def redact_url(url: str) -> str:
    """``https://host[:port]``: everything after the authority may be a credential."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "<invalid url>"
    if not parsed.scheme or not parsed.host:
        return "<invalid url>"
    port = "" if parsed.explicit_port is None else f":{parsed.explicit_port}"
    return f"{parsed.scheme}://{parsed.host}{port}"


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be credentials: query values, user info, long path parts."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return [url]
    found = [value for value in parsed.query.values() if value]
    found += [part for part in (parsed.user, parsed.password) if part]
    # Slack (T/B/X), Discord (id/token), Feishu (hook token) and Teams put the secret in the
    # path; short words such as "services" or "send" are harmless to leave.
    found += [part for part in parsed.path.split("/") if len(part) >= 8]
    return found


class Scrubber:
    """Replaces known secret strings by ``***`` in any text about to be logged or raised."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error a chat API reported inside an otherwise normal answer."""

    code: str
    message: str
    retryable: bool


ApiErrorReader = Callable[[Any], ApiError | None]


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """``Retry-After`` in seconds from ``now`` (delta-seconds or HTTP-date), else ``None``."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, seconds)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _snippet(body: bytes, scrub: Callable[[str], str]) -> str:
    text = " ".join(body[: _SNIPPET * 4].decode("utf-8", "replace").split())
    text = scrub(text)
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


def classify_http(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    where: str,
    now: datetime,
    scrub: Callable[[str], str] = lambda text: text,
    api_error: ApiErrorReader | None = None,
) -> None:
    """Return if the request was delivered; raise :class:`Retryable` or :class:`Permanent`.

    ``where`` is the already redacted destination; ``api_error`` reads the kind's error body.
    """
    if 200 <= status < 300 or 400 <= status < 500:
        verdict = api_error(_json(body)) if api_error is not None else None
        if verdict is not None and (verdict.retryable or 200 <= status < 300):
            reason = f"{where}: API error {verdict.code}: {scrub(verdict.message)}".rstrip(": ")
            if verdict.retryable:
                raise Retryable(reason)
            raise Permanent(reason)
        if 200 <= status < 300:
            return
    if status in (408, 429) or 500 <= status < 600:
        waits = [parse_retry_after(headers.get("Retry-After"), now=now)]
        parsed = _json(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("retry_after"), int | float):
            waits.append(max(0.0, float(parsed["retry_after"])))
        known = [w for w in waits if w is not None]
        raise Retryable(
            f"{where}: HTTP {status} {_snippet(body, scrub)}".rstrip(),
            retry_after=max(known) if known else None,
        )
    if 300 <= status < 400:
        raise Permanent(f"{where}: HTTP {status} redirect refused; configure the final URL")
    raise Permanent(f"{where}: HTTP {status} {_snippet(body, scrub)}".rstrip())


def describe_network_error(exc: BaseException, scrub: Callable[[str], str]) -> str:
    """A short, secret-free description: aiohttp's own messages may quote the full URL."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        detail = exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect: {scrub(str(detail))}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return f"bad response ({type(exc).__name__})"
    return type(exc).__name__


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    now: Callable[[], datetime],
    scrub: Callable[[str], str],
    api_error: ApiErrorReader | None = None,
) -> None:
    """POST ``body`` once and classify the answer; redirects are not followed."""
    where = redact_url(url)
    sent_headers = {"content-type": "application/json", "user-agent": USER_AGENT, **headers}
    try:
        async with session.post(
            url, data=body, headers=sent_headers, allow_redirects=False
        ) as response:
            answer = await response.content.read(_MAX_RESPONSE)
            status, answer_headers = response.status, response.headers
    except aiohttp.InvalidURL:
        raise Permanent(f"{where}: invalid URL") from None
    except aiohttp.ClientError as exc:
        raise Retryable(f"{where}: {describe_network_error(exc, scrub)}") from None
    except OSError as exc:
        raise Retryable(f"{where}: {scrub(exc.strerror or type(exc).__name__)}") from None
    classify_http(
        status, answer_headers, answer, where=where, now=now(), scrub=scrub, api_error=api_error
    )
