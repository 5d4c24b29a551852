"""The wire envelope of Tencent Cloud API 3.0, as the simulator answers it.

Every answer the API itself gives is HTTP 200 with ``Content-Type: application/json``
exactly and a body ``{"Response": {..., "RequestId": "<uuid>"}}``; an error is
``{"Response": {"Error": {"Code", "Message"}, "RequestId"}}``. :class:`ApiError` carries a
code and message from wherever a request is refused to the one place that encodes it.
:class:`Reply` is what the protocol core hands the HTTP layer: bytes plus the few transport
effects a fault may ask for (a status, a delay, a dropped connection). Pure; no I/O.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JSON = "application/json"
# Compact, UTF-8 JSON; building the encoder once matters (json.dumps with keyword arguments
# builds a new encoder per call, a third of the time of a small answer). Immutable.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class ApiError(Exception):
    """A request refused with a Tencent error code (answered as HTTP 200)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes
    status: int = 200
    content_type: str = JSON
    delay: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection instead of answering


def request_ids() -> Callable[[], str]:
    """A source of unique UUID-shaped request ids: a random UUID4 whose last 48 bits count up
    (a tenth of the cost of ``uuid4()`` per request; unique within one simulator)."""
    first = str(uuid.uuid4())
    prefix, start = first[:24], int(first[24:], 16)
    counter = itertools.count(start)
    return lambda: f"{prefix}{next(counter) & 0xFFFFFFFFFFFF:012x}"


def encode(response: dict[str, Any]) -> bytes:
    return _ENCODER.encode({"Response": response}).encode("utf-8")


def success(payload: dict[str, Any], rid: str) -> dict[str, Any]:
    return {**payload, "RequestId": rid}


def failure(code: str, message: str, rid: str) -> dict[str, Any]:
    return {"Error": {"Code": code, "Message": message}, "RequestId": rid}
