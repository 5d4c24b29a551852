"""A user template cannot hold the event loop: each render has a step and time budget.

Before the budget, ``range`` was the only bound (100,000 items), so two nested loops or a
macro calling itself twice per level rendered for hours and stalled every task of the
daemon. Here the real notifier builds its payload from such templates: each render must
give up, log ``notify_template_failed`` and fall back to the default message. The render
runs in a daemon thread joined with a generous timeout, so the check fails (instead of
hanging) where the budget is missing.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import pytest
import structlog
from test_notifiers_render import URL, event, notifier

STALLING = [
    # 10^10 iterations, no output at all
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
    # 2^40 macro calls, no output at all
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    # few iterations, each as heavy as the size limits allow
    "{% for i in range(100000) %}{% set s = ('abcdefgh' * 12000) | replace('a', 'bb') %}"
    "{% endfor %}",
]
GIVE_UP_AFTER = 120.0  # seconds: only a missing budget gets anywhere near this


def _payload_in_thread(raw: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    logs: list[Any] = []
    out: list[Any] = []

    async def build() -> None:
        async with aiohttp.ClientSession() as session:
            out.append(notifier(raw, session).payload(event(status="SUCCESS")))

    def work() -> None:
        with structlog.testing.capture_logs() as captured:
            asyncio.run(build())
        logs.extend(captured)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(GIVE_UP_AFTER)
    assert not thread.is_alive(), "the template rendered without any bound"
    return logs, out


@pytest.mark.parametrize("template", STALLING)
def test_a_runaway_template_falls_back_to_the_default_message(template: str) -> None:
    raw = {"name": "d", "type": "discord", "url": URL, "body_template": template}
    logs, (payload,) = _payload_in_thread(raw)
    assert payload["embeds"][0]["description"].startswith("**RUNNING → SUCCESS**")
    (line,) = [entry for entry in logs if entry["event"] == "notify_template_failed"]
    assert line["template"] == "body_template"
    assert "TemplateLimitError" in line["error"]
    assert "loop iterations and calls" in line["error"] or "rendering took" in line["error"]


def test_ordinary_loops_and_recursion_still_render() -> None:
    template = (
        "{% for k, v in labels | dictsort %}{{ k }}={{ v }};{% endfor %}"
        "{% for x in [[1, [2]], [3]] recursive %}{% if x is iterable %}{{ loop(x) }}"
        "{% else %}{{ x }}{% endif %}{% endfor %}"
        "{% for i in range(50000) %}{% endfor %}"
    )
    raw = {"name": "d", "type": "discord", "url": URL, "body_template": template}
    logs, (payload,) = _payload_in_thread(raw)
    assert payload["embeds"][0]["description"] == "team=genomics;123"
    assert not [entry for entry in logs if entry["event"] == "notify_template_failed"]
