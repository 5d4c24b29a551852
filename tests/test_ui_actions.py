"""The status page's actions in a real browser (issue 16): Debian's Chromium driven by
Playwright against a real daemon polling the simulator and delivering to a signed webhook
receiver, all on 127.0.0.1.

What a user would see: a receiver that was down gets its dead letters once they are
redelivered from ``/ui/dead-letters`` and from the run's page (the same ``webhook-id``s it
refused); a silence made with the form withholds a matching run's events while another run's
still arrive, and its Expire button ends it; Untrack removes the run; a POST without the
session's CSRF token, or from a viewer session, changes nothing (403), and a viewer sees no
action button; axe-core finds no serious or critical violation on the dead letters and
silences pages or on a run page with its buttons.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from notify_receiver import WebhookReceiver
from playwright.sync_api import Browser, BrowserContext, Page
from support import (
    Daemon,
    Processes,
    Simulator,
    clean_env,
    daemon_config,
    free_port,
    start_daemon,
    start_simulator,
    tail,
    wait_for,
    write_config,
)
from ui_support import check_axe
from ui_support import login as sign_in

ADMIN = "admin-token-for-the-actions-0123456789"
VIEWER = "viewer-token-for-the-actions-0123456789"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
QUICK = {"durations": [1.0, 1.0, 1.0], "outcome": "SUCCESS"}
APPLY_BOUND = 2.0  # interface.md: a running daemon applies a silence change within 2 s


class Stack:
    def __init__(self, daemon: Daemon, sim: Simulator, receiver: WebhookReceiver) -> None:
        self.daemon = daemon
        self.sim = sim
        self.receiver = receiver

    def track(self, group: str) -> str:
        """A new short run in the simulator, tracked with the label ``run_group``."""
        run_uuid = str(self.sim.post("/_sim/runs", QUICK)["run_uuid"])
        body = {"run_uuid": run_uuid, "labels": {"run_group": group}}
        reply = self.daemon.admin("POST", "/v1/runs", body=body)
        assert reply.status == 201, reply.text
        return run_uuid

    def history(self, run_uuid: str) -> list[dict[str, Any]]:
        reply = self.daemon.admin("GET", f"/v1/runs/{run_uuid}/events")
        assert reply.status == 200, reply.text
        found: list[dict[str, Any]] = reply.json()
        return found

    def settled(self, run_uuid: str, state: str) -> list[dict[str, Any]] | None:
        """The run's history once it finished and every delivery is in ``state``."""
        if self.daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited: {tail(self.daemon.log)}")
        history = self.history(run_uuid)
        done = bool(history) and any(e["data"].get("terminal") for e in history)
        states = {d["state"] for e in history for d in e["deliveries"]}
        return history if done and states == {state} else None

    def delivered(self) -> set[str]:
        return {hit.webhook_id for hit in self.receiver.hits() if hit.ok and hit.verified}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    procs = Processes()
    receiver = WebhookReceiver(SECRET).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            sim = start_simulator(procs, work / "sim", "--runs", "0", "--seed", "16")
            port = free_port()
            hook = {"name": "hook", "type": "webhook", "url": receiver.url, "secret": SECRET}
            config = daemon_config(
                work / "daemon",
                sim=sim,
                port=port,
                admin_token=ADMIN,
                server={"viewer_token": VIEWER},
                notifiers=[{**hook, "max_age_seconds": 1}],  # dead soon after a refusal
            )
            path = write_config(work / "daemon" / "omics-watcher.toml", config)
            daemon = start_daemon(
                procs, path, port=port, env=clean_env(work / "daemon"), admin_token=ADMIN
            )
            daemon.wait_ready()
            yield Stack(daemon, sim, receiver)
    finally:
        procs.cleanup()
        receiver.close()


def login(context: BrowserContext, stack: Stack, token: str = ADMIN) -> Page:
    page = context.new_page()
    sign_in(page, stack.daemon.url, token)
    return page


def fits_a_phone(page: Page) -> None:
    """At 390 px nothing scrolls sideways (tables become cards, forms wrap)."""
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (page.url, width)
    finally:
        page.set_viewport_size({"width": 1280, "height": 720})


def flash(page: Page) -> str:
    return page.inner_text("#flash")


def test_redeliver_buttons_send_dead_letters_to_a_receiver_that_was_down(
    stack: Stack, context: BrowserContext
) -> None:
    stack.receiver.set_status(503)
    run_uuid = stack.track("redo")
    history = wait_for(
        lambda: stack.settled(run_uuid, "dead"), timeout=60, interval=0.25, what="dead letters"
    )
    event_ids = [e["id"] for e in history]
    refused = {hit.webhook_id for hit in stack.receiver.hits() if not hit.ok}
    assert set(event_ids) <= refused  # each was tried and refused
    stack.receiver.set_status(204)  # the receiver is back

    page = login(context, stack)
    page.click("nav >> text=Dead letters")
    assert page.url == stack.daemon.url + "/ui/dead-letters"
    rows = page.locator("#dead-letters tbody tr")
    assert rows.count() == len(event_ids)
    check_axe(page)
    fits_a_phone(page)
    # Tick the oldest one, redeliver it: only it arrives, under its own webhook-id.
    oldest = page.locator("#dead-letters tbody tr").last
    oldest_event = oldest.locator("td[data-label=Event] .mono").inner_text()
    oldest.locator("input[type=checkbox]").check()
    page.click("#redeliver-selected")
    page.wait_for_url(stack.daemon.url + "/ui/dead-letters")
    assert flash(page).startswith("1 dead letter back in the outbox")
    assert rows.count() == len(event_ids) - 1  # it is pending again, no longer dead
    wait_for(lambda: oldest_event in stack.delivered(), timeout=30, what="the redelivery")
    page.reload()
    assert page.locator("#flash").count() == 0  # a flash is shown once

    # The run's page redelivers the rest of its dead letters.
    page.goto(f"{stack.daemon.url}/ui/runs/{run_uuid}")
    button = page.locator("#redeliver-run")
    assert button.inner_text() == f"Redeliver its {len(event_ids) - 1} dead letters"
    check_axe(page)
    button.click()
    page.wait_for_url(f"{stack.daemon.url}/ui/runs/{run_uuid}")
    assert flash(page).startswith(f"{len(event_ids) - 1} dead letters back in the outbox")
    wait_for(lambda: stack.delivered() >= set(event_ids), timeout=30, what="every redelivery")
    # The receiver got them under the webhook-ids it refused, each once.
    ok = [hit.webhook_id for hit in stack.receiver.hits() if hit.ok and hit.webhook_id in refused]
    assert sorted(ok) == sorted(event_ids)
    wait_for(lambda: stack.settled(run_uuid, "delivered"), timeout=30, what="all delivered")
    page.goto(stack.daemon.url + "/ui/dead-letters")
    assert page.inner_text("#no-dead").startswith("No dead letters")


def test_a_silence_made_in_the_form_withholds_matching_events_until_expired(
    stack: Stack, context: BrowserContext
) -> None:
    stack.receiver.set_status(204)
    page = login(context, stack)
    page.click("nav >> text=Silences")
    assert page.inner_text("#no-silences") == "No silence in force."
    check_axe(page)
    # A wrong form is shown again with the reason, the values kept, nothing made.
    page.fill("input[name=label_name] >> nth=0", "run_group")
    page.fill("input[name=label_value] >> nth=0", "quiet")
    page.fill("input[name=duration]", "soon")
    page.click("#add-silence")
    assert "duration 'soon'" in page.inner_text("#form-error")
    assert page.input_value("input[name=label_value] >> nth=0") == "quiet"
    assert page.locator("#no-silences").count() == 1
    page.fill("input[name=duration]", "1h")
    page.fill("input[name=comment]", "rerunning the quiet group")
    page.click("#add-silence")
    page.wait_for_url(stack.daemon.url + "/ui/silences")
    assert flash(page).startswith("Silence ")
    assert "label.run_group=quiet" in flash(page)
    (row,) = page.locator("tbody tr[id^=silence-]").all()
    assert row.locator("td[data-label=State]").inner_text() == "active"
    check_axe(page)
    fits_a_phone(page)

    applied = time.monotonic()
    wait_for(lambda: time.monotonic() - applied > APPLY_BOUND + 0.5, timeout=10, what="applied")
    quiet, loud = stack.track("quiet"), stack.track("loud")
    wait_for(lambda: stack.settled(loud, "delivered"), timeout=60, what="the loud run delivered")
    history = wait_for(lambda: stack.settled(quiet, "silenced"), timeout=60, what="silenced")
    assert not {e["id"] for e in history} & {hit.webhook_id for hit in stack.receiver.hits()}
    loud_ids = {e["id"] for e in stack.history(loud)}
    assert loud_ids <= stack.delivered()

    row.get_by_role("button", name="Expire").click()
    page.wait_for_url(stack.daemon.url + "/ui/silences")
    assert "expired" in flash(page)
    assert page.inner_text("#no-silences") == "No silence in force."
    ended = page.locator("section[aria-labelledby=ended-h] td[data-label=State]")
    assert ended.all_inner_texts() == ["expired"]


def test_no_action_without_the_csrf_token_or_from_a_viewer(stack: Stack, browser: Browser) -> None:
    run_uuid = stack.track("kept")
    actions = [
        f"/ui/runs/{run_uuid}/untrack",
        f"/ui/runs/{run_uuid}/redeliver",
        "/ui/dead-letters/redeliver",
        "/ui/silences",
        "/ui/silences/1/expire",
    ]
    admin, viewer = browser.new_context(), browser.new_context()
    try:
        page = login(admin, stack)
        for path in actions:  # an admin session, but no CSRF token: refused
            reply = admin.request.post(stack.daemon.url + path, form={"all": "1"}, max_redirects=0)
            assert reply.status == 403, path
            assert "CSRF" in reply.text()
        # With it, the same session acts (here: nothing ticked, nothing redelivered).
        token = page.get_attribute("input[name=csrf]", "value")
        assert token
        reply = admin.request.post(
            stack.daemon.url + "/ui/dead-letters/redeliver", form={"csrf": token}, max_redirects=0
        )
        assert (reply.status, reply.headers["location"]) == (303, "/ui/dead-letters")
        # A viewer sees no action button and is refused even with its CSRF token.
        seen = login(viewer, stack, VIEWER)
        token = seen.get_attribute("input[name=csrf]", "value")
        assert token
        seen.goto(f"{stack.daemon.url}/ui/runs/{run_uuid}")
        assert seen.locator("main button, main form[method=post]").count() == 0
        for path in ("/ui/dead-letters", "/ui/silences"):
            seen.goto(stack.daemon.url + path)
            assert seen.locator("main button, main input[type=checkbox]").count() == 0
        for path in actions:
            reply = viewer.request.post(
                stack.daemon.url + path, form={"csrf": token, "all": "1"}, max_redirects=0
            )
            assert reply.status == 403, path
            assert "read-only session" in reply.text()  # the token was right, the role not
        assert stack.daemon.admin("GET", f"/v1/runs/{run_uuid}").status == 200

        # The admin's links prefill the silence form; Untrack removes the run.
        page.goto(f"{stack.daemon.url}/ui/runs/{run_uuid}")
        page.click("#silence-group")
        assert page.input_value("input[name=label_name] >> nth=0") == "run_group"
        assert page.input_value("input[name=label_value] >> nth=0") == "kept"
        page.go_back()
        page.click("#silence-run")
        assert page.input_value("input[name=run_uuid]") == run_uuid
        page.go_back()
        page.click("#untrack-run")
        page.wait_for_url(stack.daemon.url + "/ui/runs")
        assert flash(page) == f"Run {run_uuid} untracked: it is no longer polled."
        assert stack.daemon.admin("GET", f"/v1/runs/{run_uuid}").status == 404
    finally:
        admin.close()
        viewer.close()
