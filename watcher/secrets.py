"""Secrets in one place: which strings are secret, and how they are kept out of text.

Every place that could leak a secret uses this module, so the rules are the same everywhere:
the log masker (:mod:`watcher.service.logs`), the Omics client's error messages
(:mod:`watcher.omics.client`), every notifier's failure reasons (:mod:`watcher.notifiers`) and
``check-config``'s output.

- **Which strings.** :func:`secret_values` walks the settings once and returns every secret:
  each ``SecretStr`` (with :func:`secret_parts`: a list of signing secrets is also each of its
  items, a ``whsec_`` secret also its key), and the credential parts of every URL
  (:func:`url_secrets`). A notifier or the client scrubs the secrets it holds, found by the same
  two functions.
- **How they are masked.** One :class:`Scrubber` replaces each known secret by ``***``, longest
  first (a secret containing another goes whole). Values shorter than
  :data:`MIN_SECRET_LENGTH` are never masked: see there why.
- **URLs, two views with two names.** :func:`redact_url` shows a URL with its credential parts
  masked (``check-config``: you still see which host and path you configured);
  :func:`url_origin` is only ``scheme://host[:port]``, to name a destination in an error
  reason, where nothing after the host is needed and a path may hold a token.

Pure: no I/O, no global state; a :class:`Scrubber` is immutable.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import AnyUrl, BaseModel, SecretStr

MASK = "***"
# Six characters: real credentials are far longer (a Tencent SecretKey has 32, webhook and
# bot tokens 20 or more, a Standard Webhooks key 32 bytes of base64), while shorter values are
# everyday words and numbers (a URL's ``v=2``, ``lang=en``, ``mode=full``). Masking those would
# garble every log line and, by where the ``***`` land, give the value away anyway.
MIN_SECRET_LENGTH = 6
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
# A URL path segment made of lowercase words (``services``, ``cgi-bin``, ``open-apis``) names
# an endpoint; any other segment of secret length (mixed case, digits: Slack's T/B/X parts,
# Discord's id and token, Feishu's hook id) is taken for a credential.
_PLAIN_WORD = re.compile(r"[a-z]+(?:[-_.][a-z]+)*")


class Scrubber:
    """Replaces known secret strings by ``***`` in text (and, with :meth:`mask`, in data)."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is removed whole.
        kept = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        self._secrets: tuple[str, ...] = tuple(sorted(kept, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def adding(self, secrets: Iterable[str]) -> Scrubber:
        """A scrubber that masks these too."""
        return Scrubber([*self._secrets, *secrets])

    def mask(self, value: Any) -> Any:
        """``value`` with every string inside it scrubbed (dicts, lists, exceptions)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask(v) for v in value]
        if isinstance(value, BaseException):
            return self(repr(value))
        return value


def secret_parts(value: str) -> list[str]:
    """A secret and the pieces of it that may appear alone.

    Several signing secrets may be given space-separated (rotation): each is a secret too; a
    Standard Webhooks secret ``whsec_<base64>`` also without its prefix (the key itself).
    """
    parts = [value]
    for item in value.split():
        parts.append(item)
        if item.startswith(WEBHOOK_SECRET_PREFIX):
            parts.append(item.removeprefix(WEBHOOK_SECRET_PREFIX))
    return list(dict.fromkeys(p for p in parts if p))


def _is_token(segment: str) -> bool:
    return len(segment) >= MIN_SECRET_LENGTH and not _PLAIN_WORD.fullmatch(segment)


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that are credentials.

    The password (or the user name when there is no password: a token given as user, as in
    ``https://TOKEN@host``), every query value, and path segments that are not plain words.
    """
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return [url]
    found = [password or user or ""]
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=True)]
    found += [segment for segment in parts.path.split("/") if _is_token(segment)]
    return [s for s in dict.fromkeys(found) if s]


def _host_port(host: str | None, port: int | None) -> str:
    host = host or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def redact_url(url: str) -> str:
    """The URL as configured, its credential parts (:func:`url_secrets`) replaced by ``***``.

    ``https://ops:***@hooks.example.org/in?token=***``: scheme, host, port, user name and the
    plain path stay, so a reader can tell which destination it is.
    """
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
        netloc = _host_port(parts.hostname, parts.port)
    except ValueError:
        return MASK
    if user and password:
        netloc = f"{user}:{MASK}@{netloc}"
    elif user:
        netloc = f"{MASK}@{netloc}"
    path = "/".join(MASK if _is_token(s) else s for s in parts.path.split("/"))
    query = "&".join(
        f"{key}={MASK}" if value else key
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, path, query, ""))


@functools.lru_cache(maxsize=64)
def url_origin(url: str) -> str:
    """``scheme://host[:port]``: names a destination; everything after the host may be secret.

    Cached: every POST names its destination up front, and a notifier's URL rarely changes.
    """
    try:
        parts = urlsplit(url)
        host = _host_port(parts.hostname, parts.port)
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not parts.hostname:
        return "<invalid url>"
    return f"{parts.scheme}://{host}"


def _is_url_key(key: str) -> bool:
    return key == "url" or key.endswith("_url")


def _walk(value: Any, key: str, found: list[str]) -> Any:
    """``value`` as plain data with every secret masked; each secret met goes to ``found``."""
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        found.extend(secret_parts(raw))
        if _is_url_key(key):
            found.extend(url_secrets(raw))
        return MASK
    if isinstance(value, AnyUrl) or (_is_url_key(key) and isinstance(value, str)):
        found.extend(url_secrets(str(value)))
        return redact_url(str(value))
    if isinstance(value, BaseModel):
        return {name: _walk(getattr(value, name), name, found) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _walk(v, "", found) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset):
        return [_walk(v, "", found) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def secret_values(settings: BaseModel) -> list[str]:
    """Every secret string in the settings (for the log masker), each once."""
    found: list[str] = []
    _walk(settings, "", found)
    return list(dict.fromkeys(s for s in found if s))


def redacted(settings: BaseModel) -> dict[str, Any]:
    """The settings as plain data, every secret replaced by ``***`` (``check-config``).

    URLs keep their scheme, host and plain path; passwords, query values and token-like path
    segments are masked (:func:`redact_url`).
    """
    shown = _walk(settings, "", [])
    assert isinstance(shown, dict)
    return shown
