"""The status page in a real browser: Debian's Chromium driven by Playwright, against a real
daemon polling the simulator and delivering to a webhook receiver, all on 127.0.0.1.

One daemon and one browser (both module scope) serve every test here, so the file
stays fast. axe-core (installed by ``scripts/test-deps`` into ``.test-deps/``) is injected into
each page for the accessibility check.
"""

from __future__ import annotations

import http.client
import re
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from notify_receiver import WebhookReceiver
from playwright.sync_api import (
    BrowserContext,
    Dialog,
    Page,
    expect,
)
from support import (
    Daemon,
    Processes,
    Simulator,
    clean_env,
    daemon_config,
    free_port,
    start_daemon,
    start_simulator,
    wait_for,
    write_config,
)
from ui_support import check_axe, submit_token

ADMIN = "admin-token-for-the-page-0123456789"
VIEWER = "viewer-token-for-the-page-0123456789"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
XSS = "<img src=x onerror=alert(1)>"
INITIAL = 6  # the simulator's runs tracked at the start; one more is tracked by a test
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Stack:
    """The daemon and the simulator it polls; the runs it tracks and the one kept back."""

    def __init__(self, daemon: Daemon, sim: Simulator, receiver: WebhookReceiver) -> None:
        self.daemon = daemon
        self.sim = sim
        self.receiver = receiver
        self.tracked = sim.runs[:INITIAL]
        self.spare = sim.runs[INITIAL]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    procs = Processes()
    receiver = WebhookReceiver(SECRET).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            sim = start_simulator(
                procs, work / "sim", "--runs", str(INITIAL + 1), "--run-seconds", "6"
            )
            port = free_port()
            config = daemon_config(
                work / "daemon",
                sim=sim,
                port=port,
                admin_token=ADMIN,
                server={"viewer_token": VIEWER},
                notifiers=[
                    {"name": "hook", "type": "webhook", "url": receiver.url, "secret": SECRET}
                ],
            )
            path = write_config(work / "daemon" / "omics-watcher.toml", config)
            daemon = start_daemon(
                procs, path, port=port, env=clean_env(work / "daemon"), admin_token=ADMIN
            )
            daemon.wait_ready()
            for uuid in sim.runs[:INITIAL]:
                labels = {"run_group": "batch-7", "note": XSS}
                reply = daemon.admin("POST", "/v1/runs", body={"run_uuid": uuid, "labels": labels})
                assert reply.status == 201, reply.text
            yield Stack(daemon, sim, receiver)
    finally:
        procs.cleanup()
        receiver.close()


def login(page: Page, stack: Stack, token: str = ADMIN) -> None:
    page.goto(stack.daemon.url + "/ui/")
    assert page.url.endswith("/ui/login")  # no session: the login page
    submit_token(page, stack.daemon.url, token)


def finished(stack: Stack) -> dict[str, str]:
    """Each tracked run's final status per the simulator, once the daemon recorded them all."""

    def recorded() -> dict[str, str] | None:
        final = {u: seq[-1] for u, seq in stack.sim.statuses().items() if u in stack.tracked}
        runs = stack.daemon.admin("GET", "/v1/runs?limit=100").json()["runs"]
        seen = {r["run_uuid"]: r["status"] for r in runs if r["terminal"]}
        done = len(final) == INITIAL and all(seen.get(u) == s for u, s in final.items())
        return final if done else None

    return wait_for(recorded, timeout=60, interval=0.25, what="every tracked run recorded finished")


def test_pages_show_the_simulators_runs_escaped_and_accessible(
    stack: Stack, context: BrowserContext
) -> None:
    final = finished(stack)
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:  # an alert() would mean the label ran as markup
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    login(page, stack)

    # The overview's counts are the simulator's.
    shown = {
        el.get_attribute("data-status"): int(el.inner_text())
        for el in page.query_selector_all("#counts .n")
    }
    assert shown == dict(Counter(final.values()))
    check_axe(page)

    # A failed run's page says why it failed.
    failed = [u for u, s in final.items() if s == "EXECUTOR_ERROR"]
    assert failed, final  # seed 1 gives failures among the first runs
    response = page.goto(f"{stack.daemon.url}/ui/runs/{failed[0]}")
    assert response is not None
    assert response.status == 200
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    message = page.inner_text("#failure-message")
    assert "exited with return code" in message
    check_axe(page)

    # The label is shown as text, never run as markup.
    page.goto(stack.daemon.url + "/ui/runs?run_group=batch-7")
    assert page.get_by_text(f"note={XSS}").count() == INITIAL
    assert page.locator("img").count() == 0
    check_axe(page)
    page.goto(stack.daemon.url + "/ui/login")  # logged in: back to the overview
    assert page.url.endswith("/ui/")
    assert dialogs == []


def test_live_feed_shows_a_new_transition(stack: Stack, context: BrowserContext) -> None:
    page = context.new_page()
    login(page, stack, token=VIEWER)
    assert page.inner_text(".role") == "viewer"
    # A locator wait polls from Playwright's own script world; wait_for_function would eval a
    # string in the page, which the page's CSP (no 'unsafe-eval') refuses whenever it must poll.
    expect(page.locator("#feed-state")).to_have_text(re.compile(r"^Live"), timeout=30_000)
    reply = stack.daemon.admin("POST", "/v1/runs", body={"run_uuid": stack.spare})
    assert reply.status == 201
    # When the daemon recorded the run's first status, the page shows it within 2 s.
    recorded = wait_for(
        lambda: stack.daemon.admin("GET", f"/v1/events?run_uuid={stack.spare}").json() or None,
        timeout=30,
        interval=0.05,
        what="the new run's first event",
    )
    seen_by = time.monotonic()
    page.locator(f"#feed a[href='/ui/runs/{stack.spare}']").first.wait_for(timeout=10_000)
    delay = time.monotonic() - seen_by
    assert delay < 2.0, f"the feed showed {recorded[0]['id']} {delay:.2f} s after it was recorded"


def raw(
    method: str, url: str, *, body: bytes | None = None, cookie: str = ""
) -> tuple[int, Message, str]:
    """One request, redirects not followed: (status, headers, text)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"Cookie": cookie} if cookie else {}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, parts.path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        conn.close()


def test_without_session_or_csrf_token_nothing_happens(stack: Stack) -> None:
    url = stack.daemon.url
    # No session: every page but the login redirects to it; GET / goes to /ui/.
    for path in ("/ui/", "/ui/runs", f"/ui/runs/{stack.tracked[0]}", "/ui/events"):
        status, headers, _ = raw("GET", url + path)
        assert (status, headers["Location"]) == (303, "/ui/login"), path
        assert headers["Content-Security-Policy"] == CSP
    status, headers, _ = raw("GET", url + "/")
    assert (status, headers["Location"]) == (302, "/ui/")
    # A login POST without its CSRF token is refused before the token is looked at.
    form = urllib.parse.urlencode({"token": ADMIN}).encode()
    status, headers, _ = raw("POST", url + "/ui/login", body=form)
    assert status == 403
    assert not headers.get_all("Set-Cookie")
    # With the login form's token it works; a logout without the session's token does not.
    status, headers, text = raw("GET", url + "/ui/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', text)
    assert status == 200
    assert nonce is not None
    login_cookie = headers["Set-Cookie"].split(";")[0]
    form = urllib.parse.urlencode({"token": ADMIN, "csrf": nonce.group(1)}).encode()
    status, headers, _ = raw("POST", url + "/ui/login", body=form, cookie=login_cookie)
    assert status == 303
    session = next(c for c in headers.get_all("Set-Cookie") or [] if "session=" in c)
    assert "HttpOnly" in session
    assert "SameSite=Strict" in session
    assert "Path=/ui" in session
    assert ADMIN not in session
    cookie = session.split(";")[0]
    status, _, _ = raw("POST", url + "/ui/logout", body=b"", cookie=cookie)
    assert status == 403
    status, _, text = raw("GET", url + "/ui/", cookie=cookie)
    assert status == 200
    assert "Overview" in text
    assert ADMIN not in text
