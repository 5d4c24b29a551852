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

Invariant: reasons name the destination by scheme and host only
(:func:`watcher.secrets.url_origin`) and pass any text that came back from the server through
the notifier's :class:`~watcher.secrets.Scrubber` (the rules of :mod:`watcher.secrets`), so
neither a URL's token nor a signing secret can reach a log line or an exception message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from watcher import __version__
from watcher.notifiers.base import Permanent, Retryable
from watcher.secrets import url_origin

USER_AGENT = f"omics-watcher/{__version__}"
_MAX_RESPONSE = 64 * 1024
_SNIPPET = 200


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
    where = url_origin(url)
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
