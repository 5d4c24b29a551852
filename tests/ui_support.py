"""Shared pieces of the browser tests: Debian's Chromium launched by Playwright with the
flags every UI test uses, a fresh context per test, the token login form, and the axe-core
accessibility check (axe is installed by ``scripts/test-deps`` into ``.test-deps/``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).resolve().parent.parent / ".test-deps/node_modules/axe-core/axe.min.js"


def launch(pw: Playwright) -> Browser:
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for a module-scoped fixture (not session: Playwright's loop would
    outlive the module and break the asyncio tests a worker runs after it)."""
    assert Path(CHROMIUM).exists(), "Chromium missing: run ./scripts/test-deps"
    with sync_playwright() as pw:
        yield launch(pw)


@contextlib.contextmanager
def fresh_context(browser: Browser) -> Iterator[BrowserContext]:
    """A new context is a new, empty profile (cookies, storage) for each test."""
    opened = browser.new_context()
    try:
        yield opened
    finally:
        opened.close()


def submit_token(page: Page, base_url: str, token: str) -> None:
    """Sign in from the login page already shown."""
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/ui/")


def login(page: Page, base_url: str, token: str) -> None:
    page.goto(base_url + "/ui/login")
    submit_token(page, base_url, token)


def check_axe(page: Page) -> None:
    """No serious or critical axe-core violation; and the page, with its CSS and JavaScript,
    stays under 150 KB."""
    static = (Path(__file__).resolve().parent.parent / "watcher/ui/static").glob("*")
    weight = len(page.content().encode()) + sum(f.stat().st_size for f in static)
    assert weight < 150_000, weight
    assert AXE.exists(), "axe-core missing: run ./scripts/test-deps"
    # Evaluated through the DevTools protocol: the page's CSP (no inline script) stays on.
    page.evaluate(AXE.read_text(encoding="utf-8"))
    result: dict[str, Any] = page.evaluate("async () => await axe.run(document)")
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, bad
