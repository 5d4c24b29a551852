"""Fault injection: which admitted request goes wrong, and how its answer is spoiled.

:class:`FaultInjector` draws from its own seeded RNG, so for a given seed and request order
the same requests fail the same way. A fault is drawn only for requests that passed
authentication and the rate limit (they consumed budget, as a real server would count them).
Kinds (names in :mod:`watcher.simulator.config`):

- ``internal_error``: a well-formed ``InternalError`` answer;
- ``bad_gateway``: HTTP 502, ``text/html`` body, as an overloaded gateway answers;
- ``slow``: the normal answer, but only after ``slow_seconds``;
- ``drop``: the connection is closed without any answer;
- ``malformed_*``: the normal answer, spoiled by :func:`spoil`: not JSON (cut in half), no
  ``Response`` key, no payload (``Metadata``/``Runs``/... removed), wrong value types, or a
  1 MB string field.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from watcher.simulator.config import (
    MALFORMED_HUGE,
    MALFORMED_NO_PAYLOAD,
    MALFORMED_NO_RESPONSE,
    MALFORMED_NON_JSON,
    MALFORMED_WRONG_TYPES,
    expand_fault_kinds,
)

HUGE_BYTES = 1024 * 1024
BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class FaultInjector:
    """Seeded choice of a fault kind, at ``rate``, among ``kinds``; both changeable live."""

    def __init__(self, *, rate: float, kinds: tuple[str, ...], seed: int) -> None:
        self._rng = random.Random(f"faults:{seed}")
        self.rate = 0.0
        self.kinds: tuple[str, ...] = ()
        self.configure(rate=rate, kinds=kinds)

    def configure(self, *, rate: float, kinds: tuple[str, ...] | list[str] | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault rate must be within [0, 1]")
        if kinds is not None:
            expanded = expand_fault_kinds(tuple(kinds))
            if not expanded and rate > 0:
                raise ValueError("a positive fault rate needs at least one fault kind")
            self.kinds = expanded
        self.rate = rate

    def draw(self) -> str | None:
        if self.rate <= 0.0 or not self.kinds:
            return None
        if self.rate < 1.0 and self._rng.random() >= self.rate:
            return None
        return self.kinds[self._rng.randrange(len(self.kinds))]


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return 42
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return {"items": value}
    if isinstance(value, dict):
        return {k: _wrong_type(v) for k, v in value.items()}
    return value


def _make_huge(response: dict[str, Any]) -> None:
    huge = "x" * HUGE_BYTES
    for key, value in response.items():
        if key in ("RequestId", "Error"):
            continue
        if isinstance(value, dict):
            value["ErrorMessage"] = huge
            return
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value[0]["ErrorMessage"] = huge
            return
        if isinstance(value, str):
            response[key] = huge
            return
    response["ErrorMessage"] = huge


def spoil(kind: str, response: dict[str, Any]) -> bytes:
    """The body of ``response`` (the object inside ``Response``) spoiled as ``kind`` says."""
    if kind == MALFORMED_NON_JSON:
        whole = json.dumps({"Response": response}).encode()
        return whole[: len(whole) // 2]
    if kind == MALFORMED_NO_RESPONSE:
        return json.dumps({"Result": response}).encode()
    spoiled = copy.deepcopy(response)
    if kind == MALFORMED_NO_PAYLOAD:
        spoiled = {k: v for k, v in spoiled.items() if k in ("RequestId", "Error")}
    elif kind == MALFORMED_WRONG_TYPES:
        spoiled = {k: v if k == "RequestId" else _wrong_type(v) for k, v in spoiled.items()}
    elif kind == MALFORMED_HUGE:
        _make_huge(spoiled)
    else:
        raise ValueError(f"{kind!r} is not a malformed-answer fault")
    return json.dumps({"Response": spoiled}).encode()
