"""The status page's login rules without a browser: roles, session bounds, the login throttle,
when the page is served at all, and the health panel's rate. Real aiohttp servers on
127.0.0.1 and a real state file; clocks are injected where time matters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support import serve

from watcher.config import load_settings
from watcher.options import ui_options
from watcher.service.health import Health
from watcher.service.metrics import Metrics
from watcher.service.server import build_app
from watcher.statuses import DEFAULT_STATUSES
from watcher.store import Store
from watcher.store.api import SqliteStore
from watcher.ui.health import RateMeter
from watcher.ui.options import UiOptions
from watcher.ui.pages import StatusPage
from watcher.ui.sessions import LoginThrottle, Sessions, role_for

ADMIN = "admin-token-0123456789"
VIEWER = "viewer-token-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tokens_grant_their_role_and_nothing_else() -> None:
    assert role_for(ADMIN, admin=ADMIN, viewer=VIEWER) == "admin"
    assert role_for(VIEWER, admin=ADMIN, viewer=VIEWER) == "viewer"
    assert role_for(VIEWER, admin=ADMIN, viewer=None) is None
    assert role_for("", admin=ADMIN, viewer=VIEWER) is None
    assert role_for(ADMIN[:-1], admin=ADMIN, viewer=VIEWER) is None
    assert role_for("admin-token-0123456789 ", admin=ADMIN, viewer=VIEWER) is None


def test_sessions_end_after_their_lifetime_and_the_oldest_goes_first() -> None:
    clock = Clock()
    sessions = Sessions(lifetime=60, max_sessions=2, clock=clock)
    first, _ = sessions.create("admin")
    second, _ = sessions.create("viewer")
    third, _ = sessions.create("viewer")
    assert sessions.get(first) is None  # the bound of 2 logged the oldest out
    assert sessions.get(second) is not None
    clock.now += 60
    assert sessions.get(third) is None  # lifetime over
    assert len(sessions) == 1  # `second`, expired too, goes at the next create or get
    assert sessions.get("x" * 500) is None
    assert repr(sessions.create("admin")[1]) == "Session(role='admin')"  # no CSRF token shown


def test_failed_logins_wait_out_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(per_client=3, total=5, window=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 60
    assert throttle.retry_after("10.0.0.2") == 0  # another address may still try
    throttle.failed("10.0.0.2")
    throttle.failed("10.0.0.3")
    assert throttle.retry_after("10.0.0.4") == 60  # 5 failures from everywhere: all wait
    clock.now += 60
    assert throttle.retry_after("10.0.0.1") == 0


def test_rate_meter_answers_once_two_samples_are_a_second_apart() -> None:
    clock, count = Clock(), [0.0]
    meter = RateMeter(lambda: count[0], clock=clock)
    meter.sample()
    assert meter.rate() is None
    clock.now += 2
    count[0] = 40
    meter.sample()
    assert meter.rate() == 20.0


def test_ui_is_off_without_an_admin_token_or_when_switched_off(tmp_path: Path) -> None:
    def options(text: str) -> UiOptions | None:
        path = tmp_path / "c.toml"
        path.write_text(text, encoding="utf-8")
        return ui_options(load_settings(str(path), environ={}))

    assert options("[server]\nui = true\n") is None
    assert options(f'[server]\nadmin_token = "{ADMIN}"\nui = false\n') is None
    on = options(f'[server]\nadmin_token = "{ADMIN}"\nviewer_token = "{VIEWER}"\n')
    assert on is not None
    assert on.viewer_token == VIEWER
    assert ADMIN not in repr(on)
    assert VIEWER not in repr(on)
    same = options(f'[server]\nadmin_token = "{ADMIN}"\nviewer_token = "{ADMIN}"\n')
    assert same is not None
    assert same.viewer_token is None  # the admin token is never a viewer login


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    with Store.open(tmp_path / "state.db") as store:
        adapted = SqliteStore(store)
        metrics = Metrics()
        page = StatusPage(
            UiOptions(admin_token=ADMIN, viewer_token=VIEWER),
            store=adapted,
            metrics=metrics,
            statuses=DEFAULT_STATUSES,
            not_ready_reason=lambda: None,
        )
        app = build_app(
            store=adapted,
            metrics=metrics,
            health=Health(),
            admin_token=ADMIN,
            default_project_id="",
            ui=page.install,
        )
        try:
            async with serve(app) as base:
                yield base
        finally:
            await adapted.close()


async def test_static_files_are_public_and_pages_are_not(served: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(served + "/ui/static/app.css") as css:
            assert css.status == 200
            assert css.content_type == "text/css"
            assert "prefers-color-scheme: dark" in await css.text()
        async with http.get(served + "/ui/static/pages.py", allow_redirects=False) as other:
            assert other.status == 404  # only the shipped CSS and JavaScript
        async with http.get(served + "/ui/runs", allow_redirects=False) as page:
            assert page.status == 303
        async with http.get(served + "/healthz") as probe:  # the admin API's app still answers
            assert probe.status == 200
        async with http.get(served + "/v1/runs") as api:
            assert api.status == 401
