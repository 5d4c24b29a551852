"""TC3-HMAC-SHA256 request signing, exactly as Tencent Cloud API 3.0 and its SDK do it.

Pure: the caller passes the timestamp, so the same inputs always give the same header (the
test vectors in ``shared/omics-api.md`` and the official SDK are the references). Only
``content-type`` and ``host`` are signed, as the SDK does; the token header is sent unsigned.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from datetime import UTC, datetime
from typing import NotRequired, TypedDict, Unpack

ALGORITHM = "TC3-HMAC-SHA256"
SIGNED_HEADERS = "content-type;host"
SERVICE = "omics"
CONTENT_TYPE = "application/json"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def utc_date(timestamp: int) -> str:
    """The credential-scope date: the UTC date of ``timestamp``, never the local one."""
    return _day(timestamp // 86400)


@functools.lru_cache(maxsize=4)
def _day(day: int) -> str:
    # One strftime per UTC day instead of per request (it showed in the daemon's profile).
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


def canonical_request(*, host: str, body: bytes, content_type: str = CONTENT_TYPE) -> str:
    payload_hash = hashlib.sha256(body).hexdigest()
    return (
        f"POST\n/\n\ncontent-type:{content_type}\nhost:{host}\n\n{SIGNED_HEADERS}\n{payload_hash}"
    )


def string_to_sign(*, canonical: str, timestamp: int, service: str, date: str = "") -> str:
    scope = f"{date or utc_date(timestamp)}/{service}/tc3_request"
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


class Request(TypedDict):
    """What is signed: one POST of ``body`` to ``host`` at ``timestamp``, with ``secret_key``."""

    secret_key: str
    host: str
    body: bytes
    timestamp: int
    service: NotRequired[str]  # SERVICE unless given
    content_type: NotRequired[str]  # CONTENT_TYPE unless given


def _scope_and_signature(request: Request) -> tuple[str, str]:
    timestamp, service = request["timestamp"], request.get("service", SERVICE)
    date = utc_date(timestamp)
    canonical = canonical_request(
        host=request["host"],
        body=request["body"],
        content_type=request.get("content_type", CONTENT_TYPE),
    )
    to_sign = string_to_sign(canonical=canonical, timestamp=timestamp, service=service, date=date)
    k_date = _hmac(("TC3" + request["secret_key"]).encode("utf-8"), date)
    k_service = _hmac(k_date, service)
    k_signing = _hmac(k_service, "tc3_request")
    sig = hmac.new(k_signing, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{date}/{service}/tc3_request", sig


def signature(**request: Unpack[Request]) -> str:
    """The hex signature alone (what a server recomputes to verify a request)."""
    return _scope_and_signature(request)[1]


def sign(*, secret_id: str, **request: Unpack[Request]) -> str:
    """The ``Authorization`` header value for one POST of ``body`` to ``host``."""
    scope, sig = _scope_and_signature(request)
    return (
        f"{ALGORITHM} Credential={secret_id}/{scope}, "
        f"SignedHeaders={SIGNED_HEADERS}, Signature={sig}"
    )
