"""A run group of 96 samples on the overview, in a real browser: its progress bar shows what
the simulator says of each sample (succeeded / failed / running / queued), in the right
proportions on screen, and its link lists the group's runs page by page.

The simulator is told each sample's outcome and phase durations (``POST /_sim/runs``), so
the group settles within seconds into a known mix that stays put while the page is read:
40 succeeded, 6 failed, 30 running for an hour, 20 queued for an hour.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser
from support import (
    Daemon,
    Processes,
    Simulator,
    clean_env,
    daemon_config,
    free_port,
    http,
    start_daemon,
    start_simulator,
    wait_for,
    write_config,
)
from ui_support import check_axe, login

ADMIN = "admin-token-for-the-groups-0123456789"
GROUP = "plate-96"
# (simulator outcome, [queued, initializing, running] seconds, bar part, how many)
MIX = (
    ("SUCCESS", [0.3, 0.3, 1.0], "succeeded", 40),
    ("EXECUTOR_ERROR", [0.3, 0.3, 1.0], "failed", 6),
    ("SUCCESS", [0.3, 0.3, 3600.0], "running", 30),
    ("SUCCESS", [3600.0, 1.0, 1.0], "queued", 20),
)
SETTLED = {"succeeded": "SUCCESS", "failed": "EXECUTOR_ERROR", "running": "RUNNING"}


@pytest.fixture(scope="module")
def group() -> Iterator[tuple[Daemon, Simulator, dict[str, str]]]:
    """The daemon tracking the 96 samples; each sample's bar part."""
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            sim = start_simulator(procs, work / "sim", "--runs", "1")
            parts: dict[str, str] = {}
            for outcome, durations, part, count in MIX:
                for _ in range(count):
                    body = {"outcome": outcome, "durations": durations, "kind": "finishing"}
                    reply = http("POST", sim.endpoint + "/_sim/runs", body=body)
                    assert reply.status == 201, reply.text
                    parts[reply.json()["run_uuid"]] = part
            port = free_port()
            config = daemon_config(work / "daemon", sim=sim, port=port, admin_token=ADMIN)
            path = write_config(work / "daemon" / "omics-watcher.toml", config)
            daemon = start_daemon(
                procs, path, port=port, env=clean_env(work / "daemon"), admin_token=ADMIN
            )
            daemon.wait_ready()
            for n, uuid in enumerate(parts):
                labels = {"run_group": GROUP, "sample": f"S{n + 1:03d}"}
                reply = daemon.admin("POST", "/v1/runs", body={"run_uuid": uuid, "labels": labels})
                assert reply.status == 201, reply.text
            yield daemon, sim, parts
    finally:
        procs.cleanup()


def _settled(daemon: Daemon, sim: Simulator, parts: dict[str, str]) -> dict[str, str] | None:
    """Each sample's status once the simulator and the daemon agree on the settled mix."""
    in_sim = {u: seq[-1] for u, seq in sim.statuses().items() if u in parts}
    runs: list[dict[str, Any]] = []
    cursor = ""
    while True:
        reply = daemon.admin("GET", f"/v1/runs?limit=100{cursor}").json()
        runs += reply["runs"]
        if not reply["next_cursor"]:
            break
        cursor = f"&cursor={reply['next_cursor']}"
    recorded = {r["run_uuid"]: r["status"] for r in runs if r["run_uuid"] in parts}
    wanted = {u: SETTLED.get(part, "QUEUED") for u, part in parts.items()}
    return recorded if recorded == in_sim == wanted else None


def test_a_96_sample_groups_bar_shows_the_simulators_mix(
    group: tuple[Daemon, Simulator, dict[str, str]], browser: Browser
) -> None:
    daemon, sim, parts = group
    wait_for(
        lambda: _settled(daemon, sim, parts),
        timeout=90,
        interval=0.5,
        what="the daemon recording the simulator's settled mix",
    )
    expected = Counter(parts.values())
    assert expected == {"succeeded": 40, "failed": 6, "running": 30, "queued": 20}
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    login(page, daemon.url, ADMIN)
    block = page.locator(".group", has=page.get_by_role("link", name=GROUP))
    summary = "40 succeeded, 6 failed, 30 running, 20 queued of 96"
    assert block.locator(".muted").first.inner_text() == summary
    bar = block.get_by_role("img", name=f"{GROUP}: {summary}")
    box = bar.bounding_box()
    assert box is not None
    left = box["x"]
    for part, count in expected.items():
        rect = bar.locator(f"rect.p-{part}")
        assert rect.count() == 1, part
        assert float(rect.get_attribute("width") or 0) == round(100 * count / 96, 3)
        shown = rect.bounding_box()
        assert shown is not None
        # On screen: the segment's share of the bar, in order, to a pixel or two.
        assert abs(shown["width"] - box["width"] * count / 96) < 2.5, (part, shown)
        assert abs(shown["x"] - left) < 2.5, (part, shown)
        left = shown["x"] + shown["width"]
    assert bar.locator("rect.p-other").count() == 0
    check_axe(page)

    # The group's link lists its 96 runs, 50 to a page.
    block.get_by_role("link", name=GROUP).click()
    page.wait_for_url(f"**/ui/runs?run_group={GROUP}")
    rows = page.locator("table.runs tbody tr")
    first = [rows.nth(i).locator("a.uuid").inner_text() for i in range(rows.count())]
    page.get_by_role("link", name="Next page").click()
    second = [rows.nth(i).locator("a.uuid").inner_text() for i in range(rows.count())]
    assert (len(first), len(second)) == (50, 46)
    assert set(first) | set(second) == set(parts)

    # On a phone (390 px) nothing scrolls sideways: the tables become one card a row.
    page.set_viewport_size({"width": 390, "height": 844})
    failed = next(u for u, part in parts.items() if part == "failed")
    for path in ("/ui/", f"/ui/runs?run_group={GROUP}", f"/ui/runs/{failed}"):
        page.goto(daemon.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
        check_axe(page)
    assert page.locator("#failure-message").is_visible()
