"""The store's one-call reads, on both backends: ``state_figures`` (what ``/metrics`` reports
of the state) and ``run_dead_letters`` (what the run page's Redeliver button sends again).

What a user would see: the same figures the separate reads gave (runs by status, the
outbox's pending rows and the oldest one's age, redeliveries by notifier) on a state with
pending, dead, delivered and silenced rows and redeliveries, and the same ``/metrics`` text;
a run's dead letters are exactly the dead rows of its history, whatever other runs hold; and
on a run with more events than its page shows (and no ``run_group`` label), the page's button
counts every dead letter of the run and, posted with the page's form and CSRF token after a
login, puts back exactly those.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from astore import astore, backend
from support import FakeClock

from watcher.events import RunState
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.service.state_metrics import StateGauges
from watcher.statuses import DEFAULT_STATUSES
from watcher.store import TrackRequest
from watcher.store.api import AsyncStore
from watcher.store.figures import StateFigures
from watcher.store.history import DeadLetter, Redelivery
from watcher.transitions import detect
from watcher.ui.options import UiOptions
from watcher.ui.pages import StatusPage

__all__ = ["astore", "backend"]  # fixtures, used by name

TERMINAL = frozenset({"SUCCESS", "FAILED"})
RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
OTHER = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
QUIET = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
NOTIFIERS = ("hook", "mail")
ADMIN = "admin-token-for-the-reads-0123456789"
STATE_FAMILIES = (
    "omics_watcher_tracked_runs",
    "omics_watcher_outbox_pending",
    "omics_watcher_oldest_pending_delivery_seconds",
    "omics_watcher_redeliveries_total",
)
BUSY_EVENTS = 150  # more than the run page shows (its newest 100)


async def change(
    store: AsyncStore, clock: FakeClock, run: str, prev: str | None, status: str
) -> str:
    """One status change of ``run`` recorded for both notifiers; its event id."""
    clock.advance(1)
    before = RunState(run, "prj", prev, clock.now) if prev else None
    current = RunState(run, "prj", status, clock.now)
    event = detect(before, current, terminal=TERMINAL)
    assert event is not None
    assert await store.record_observation(current, event, notifiers=NOTIFIERS)
    return event.id


async def busy_run(store: AsyncStore, clock: FakeClock, run: str, events: int) -> None:
    """``events`` status changes, back and forth between two active statuses."""
    status: str | None = None
    for i in range(events):
        new = "RUNNING" if i % 2 == 0 else "QUEUED"
        await change(store, clock, run, status, new)
        status = new


async def settle(store: AsyncStore, *, dead: set[tuple[str, int]]) -> None:
    """Every pending row: dead if ``(notifier, its event's index in the log)`` is in ``dead``,
    else delivered, except mail's rows of OTHER, silenced, and its last one, left pending."""
    rows = await store.pending_deliveries(limit=10_000)
    order = {eid: i for i, eid in enumerate(dict.fromkeys(r.event.id for r in rows))}
    others = [r for r in rows if r.event.run_uuid == OTHER and r.notifier == "mail"]
    for row in rows:
        if row is others[-1]:
            continue
        if (row.notifier, order[row.event.id]) in dead:
            await store.mark_dead(row.id, error="HTTP 503", attempts=3)
        elif row.event.run_uuid == OTHER and row.notifier == "mail":
            await store.mark_silenced(row.id, "silenced by 1")
        else:
            await store.mark_delivered(row.id)


async def dead_of(store: AsyncStore, run: str) -> list[DeadLetter]:
    """The run's dead letters as the whole list gives them."""
    return [d for d in await store.list_dead_letters(limit=10_000) if d.run_uuid == run]


# --- state_figures -------------------------------------------------------------------------


async def test_state_figures_are_what_the_separate_reads_give(
    astore: AsyncStore, clock: FakeClock
) -> None:
    assert await astore.state_figures(now=clock.now) == StateFigures({}, 0, 0.0, {})
    await astore.track([TrackRequest(RUN, "prj"), TrackRequest(OTHER, "prj"), TrackRequest(QUIET)])
    await busy_run(astore, clock, RUN, 3)
    await busy_run(astore, clock, OTHER, 2)
    await settle(astore, dead={("hook", 0), ("mail", 1), ("hook", 3)})
    (first, *_) = await astore.list_dead_letters()
    assert await astore.redeliver(Redelivery(ids=(first.id,))) == [first.id]  # pending again
    clock.advance(90)

    figures = await astore.state_figures(now=clock.now)
    assert figures.runs_by_status == await astore.count_by_status()
    assert figures.runs_by_status == {"RUNNING": 1, "QUEUED": 1, None: 1}
    assert (figures.outbox_pending, figures.oldest_pending_seconds) == await astore.outbox_stats(
        now=clock.now
    )
    assert figures.outbox_pending == 2  # the redelivered row and OTHER's last mail row
    assert figures.oldest_pending_seconds == 90.0  # both made with OTHER's last change
    assert figures.redeliveries == {first.notifier: 1}


async def test_metrics_text_of_the_state(astore: AsyncStore, clock: FakeClock) -> None:
    await astore.track([TrackRequest(RUN, "prj"), TrackRequest(OTHER, "prj"), TrackRequest(QUIET)])
    await busy_run(astore, clock, RUN, 3)
    await busy_run(astore, clock, OTHER, 2)
    await settle(astore, dead={("hook", 0), ("mail", 1)})
    await astore.redeliver(Redelivery(notifier="hook"))
    clock.advance(30)
    metrics = Metrics()
    StateGauges(astore, clock=clock).install(metrics)
    text = (await metrics.scrape()).decode()
    lines = [line for line in text.splitlines() if any(f in line for f in STATE_FAMILIES)]
    assert lines == [  # as the three separate reads gave it (same scenario, the tree before)
        "# HELP omics_watcher_tracked_runs "
        "Tracked runs by last seen status ('unknown' before the first poll).",
        "# TYPE omics_watcher_tracked_runs gauge",
        'omics_watcher_tracked_runs{status="QUEUED"} 1.0',
        'omics_watcher_tracked_runs{status="RUNNING"} 1.0',
        'omics_watcher_tracked_runs{status="unknown"} 1.0',
        "# HELP omics_watcher_outbox_pending Deliveries waiting in the outbox.",
        "# TYPE omics_watcher_outbox_pending gauge",
        "omics_watcher_outbox_pending 2.0",
        "# HELP omics_watcher_oldest_pending_delivery_seconds "
        "Age of the oldest pending delivery (0 when none).",
        "# TYPE omics_watcher_oldest_pending_delivery_seconds gauge",
        "omics_watcher_oldest_pending_delivery_seconds 30.0",
        "# HELP omics_watcher_redeliveries_total "
        "Dead letters put back in the outbox (redeliver, POST /v1/dead-letters/redeliver).",
        "# TYPE omics_watcher_redeliveries_total counter",
        'omics_watcher_redeliveries_total{notifier="hook"} 1.0',
    ]


# --- run_dead_letters ----------------------------------------------------------------------


async def test_a_runs_dead_letters_are_the_dead_rows_of_its_history(
    astore: AsyncStore, clock: FakeClock
) -> None:
    await astore.track([TrackRequest(RUN, "prj"), TrackRequest(OTHER, "prj"), TrackRequest(QUIET)])
    await busy_run(astore, clock, RUN, BUSY_EVENTS)
    await busy_run(astore, clock, OTHER, 4)
    last = BUSY_EVENTS - 1
    await settle(
        astore,
        dead={("hook", 0), ("mail", 0), ("hook", 7), ("mail", last), ("hook", BUSY_EVENTS + 2)},
    )
    history = await astore.run_history(RUN)
    assert history is not None
    from_history = sorted(
        (d.id for entry in history for d in entry.deliveries if d.state == "dead"), reverse=True
    )
    found = await astore.run_dead_letters(RUN)
    assert found is not None
    assert [d.id for d in found] == from_history
    assert len(found) == 4
    assert found == await dead_of(astore, RUN)  # the same letters, most recent first
    assert await astore.run_dead_letters(OTHER) == await dead_of(astore, OTHER) != []
    assert await astore.run_dead_letters(QUIET) == []  # tracked, nothing recorded
    assert await astore.run_dead_letters("00000000-0000-4000-8000-000000000000") is None


# --- the run page's Redeliver button -------------------------------------------------------


@pytest.fixture
async def client(astore: AsyncStore) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    metrics = Metrics()
    page = StatusPage(
        UiOptions(admin_token=ADMIN),
        store=astore,
        metrics=metrics,
        statuses=DEFAULT_STATUSES,
        not_ready_reason=lambda: None,
        notifier_names=lambda: NOTIFIERS,
    )
    app = build_app(
        store=astore,
        metrics=metrics,
        health=Health(),
        admin_token=ADMIN,
        default_project_id="prj",
        notifier_names=lambda: NOTIFIERS,
        ui=page.install,
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def csrf_of(html: str, action: str) -> str:
    """The CSRF token of the page's form posting to ``action``."""
    form = re.search(rf'<form method="post" action="{re.escape(action)}">(.*?)</form>', html, re.S)
    assert form is not None, action
    token = re.search(r'name="csrf" value="([^"]+)"', form.group(1))
    assert token is not None
    return token.group(1)


async def test_the_run_pages_button_redelivers_exactly_its_dead_letters(
    astore: AsyncStore, clock: FakeClock, client: TestClient[web.Request, web.Application]
) -> None:
    await astore.track([TrackRequest(RUN, "prj"), TrackRequest(OTHER, "prj")])
    await busy_run(astore, clock, RUN, BUSY_EVENTS)
    await busy_run(astore, clock, OTHER, 4)
    last = BUSY_EVENTS - 1  # the oldest of RUN's dead letters are older than its page shows
    await settle(astore, dead={("hook", 0), ("mail", 3), ("hook", last), ("hook", BUSY_EVENTS)})
    owed = await dead_of(astore, RUN)
    others = await dead_of(astore, OTHER)
    assert (len(owed), len(others)) == (3, 1)

    login = await client.get("/ui/login")
    token = csrf_of(await login.text(), "/ui/login")
    signed = await client.post("/ui/login", data={"csrf": token, "token": ADMIN})
    assert signed.status == 200  # redirected to the overview, signed in
    page = await client.get(f"/ui/runs/{RUN}")
    html = await page.text()
    assert "Redeliver its 3 dead letters" in html  # older ones than the page shows, too
    action = f"/ui/runs/{RUN}/redeliver"
    posted = await client.post(action, data={"csrf": csrf_of(html, action)}, allow_redirects=False)
    assert (posted.status, posted.headers["Location"]) == (303, f"/ui/runs/{RUN}")

    after = await client.get(f"/ui/runs/{RUN}")
    assert "3 dead letters back in the outbox" in await after.text()
    assert await astore.run_dead_letters(RUN) == []
    assert await dead_of(astore, OTHER) == others  # another run's stay dead
    pending = {d.id: d for d in await astore.pending_deliveries(limit=10_000)}
    assert all(pending[d.id].attempts == 0 for d in owed)  # back in the outbox, tries anew
    figures = await astore.state_figures(now=clock.now)
    assert figures.redeliveries == {"hook": 2, "mail": 1}
