"""A client hammering the admin API with wrong tokens cannot flood the log.

Before: one ``admin_auth_failed`` line per refused request, so the log grew as fast as the
client could send. Here a real aiohttp client sends 900 refused requests from three local
addresses (127.0.0.1-3) to the real listener: every one is counted in
``omics_watcher_admin_auth_failures_total{via="api"}``, the log holds at most one full line
per address and one summary per window (a window is 60 s: the bound is computed from the
measured time, so a slow machine cannot break it), the lines account for every failure, and
``/healthz`` keeps answering throughout.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
import structlog
from support import admin_server, sample_value

from watcher.store import Store

TOKEN = "adm-5c1d9e7f3a2b4c6d8e0f1a3b5c7d9e1f"
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
PER_ADDRESS = 300
WINDOW = 60.0  # AuthFailureLog's default, as the daemon uses it
DETAILED = 5


async def _hammer(port: int, address: str) -> None:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(PER_ADDRESS):
            headers = {"Authorization": f"Bearer wrong-{i}"} if i % 2 else {}
            async with session.get(f"http://127.0.0.1:{port}/v1/runs", headers=headers) as resp:
                assert resp.status == 401


async def test_many_failed_tokens_log_bounded_and_count_all(store: Store) -> None:
    started = time.monotonic()
    # Leaving admin_server stops the server, which ends the window: the last summary is
    # written, inside the capture.
    with structlog.testing.capture_logs() as logs:
        async with admin_server(store, TOKEN) as port, aiohttp.ClientSession() as probe:
            attack = asyncio.gather(*(_hammer(port, a) for a in ADDRESSES))
            healthz: list[int] = []
            while not attack.done():
                async with probe.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    healthz.append(resp.status)
                await asyncio.sleep(0.05)
            await attack
            async with probe.get(f"http://127.0.0.1:{port}/healthz") as resp:
                healthz.append(resp.status)
            async with probe.get(f"http://127.0.0.1:{port}/metrics") as resp:
                scraped = await resp.text()
    elapsed = time.monotonic() - started
    total = PER_ADDRESS * len(ADDRESSES)

    assert healthz
    assert set(healthz) == {200}
    assert sample_value(scraped, 'omics_watcher_admin_auth_failures_total{via="api"}') == total
    assert sample_value(scraped, 'omics_watcher_admin_auth_failures_total{via="ui_login"}') == 0

    full = [e for e in logs if e["event"] == "admin_auth_failed"]
    summaries = [e for e in logs if e["event"] == "auth_failures_suppressed"]
    windows = math.ceil(elapsed / WINDOW) + 1
    assert len(full) + len(summaries) <= windows * (min(DETAILED, len(ADDRESSES)) + 1)
    assert {e["remote"] for e in full} == set(ADDRESSES)
    assert all(e["reason"] in ("missing bearer token", "invalid bearer token") for e in full)
    assert len(full) + sum(e["suppressed"] for e in summaries) == total
    busiest: dict[str, Any] = summaries[-1]["busiest"]
    assert set(busiest) <= set(ADDRESSES)
    assert all(e["by_via"].keys() == {"api"} for e in summaries)
    assert TOKEN not in repr(logs)
