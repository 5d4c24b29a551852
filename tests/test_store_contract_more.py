"""The store contract, part 2, on both backends: delivery history and redelivery, silences,
retention steps, held deliveries, registry pages (filters, cursors, JSON), discovery, run
groups, status references and the status page's reads.

Moved here from ``test_history_store.py``, ``test_silences.py`` and ``test_discovery.py``
where they only talked to the store; the retention steps are the ones
:mod:`watcher.retention` drives (its own tests keep the pruner and the SQLite file checks).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from astore import TERMINAL, Backend, astore, backend, observe
from support import FAKE_START, FakeClock

from watcher.events import Event, RunState, new_event_id
from watcher.store import DiscoveredRun, TrackRequest
from watcher.store.api import AsyncStore
from watcher.store.history import Redelivery
from watcher.store.outbox import HELD_NEXT_ATTEMPT
from watcher.store.registry import RunFilter
from watcher.transitions import detect, not_found_event

__all__ = ["astore", "backend"]  # fixtures, used by name

T0 = FAKE_START
DAY = timedelta(days=1)
RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
OTHER = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


async def record(
    store: AsyncStore, clock: FakeClock, run: str, prev: str | None, status: str, *notifiers: str
) -> Event:
    at = clock.now
    before = RunState(run, "prj", prev, at) if prev else None
    event = detect(before, RunState(run, "prj", status, at), terminal=TERMINAL)
    assert event is not None
    state = RunState(run, "prj", status, at)
    assert await store.record_observation(state, event, notifiers=notifiers)
    return event


# --- delivery history and redelivery -------------------------------------------------------


async def test_history_shows_every_state_and_dead_letters_go_back_with_their_event(
    astore: AsyncStore, clock: FakeClock
) -> None:
    await astore.track([TrackRequest(RUN, "prj"), TrackRequest(OTHER, "prj")])
    first = await record(astore, clock, RUN, None, "RUNNING", "hook", "chat", "mail")
    second = await record(astore, clock, RUN, "RUNNING", "FAILED", "hook")
    other = await record(astore, clock, OTHER, None, "RUNNING", "hook")
    rows = {(d.event.id, d.notifier): d for d in await astore.pending_deliveries(limit=10)}
    await astore.mark_delivered(rows[first.id, "hook"].id)
    await astore.mark_silenced(rows[first.id, "chat"].id, "silenced by 3 (night rerun)")
    await astore.mark_retry(
        rows[first.id, "mail"].id, attempts=4, next_attempt_at=clock.now, error="503"
    )
    await astore.mark_dead(rows[first.id, "mail"].id, error="gave up: 503", attempts=5)
    await astore.mark_dead(rows[other.id, "hook"].id, error="HTTP 410", attempts=1)
    await astore.mark_silenced(rows[first.id, "hook"].id, "too late")  # settled: unchanged
    assert await astore.outbox_stats(now=clock.now) == (1, 0.0)  # only the pending one counts

    history = await astore.run_history(RUN)
    assert history is not None
    assert [entry.event for entry in history] == [first, second]  # oldest first
    assert [(d.notifier, d.state, d.attempts, d.last_error) for d in history[0].deliveries] == [
        ("hook", "delivered", 1, None),  # the tries made: the successful one counts
        ("chat", "silenced", 0, "silenced by 3 (night rerun)"),
        ("mail", "dead", 5, "gave up: 503"),
    ]
    assert [(d.notifier, d.state) for d in history[1].deliveries] == [("hook", "pending")]
    assert await astore.run_history("never-tracked") is None

    dead = await astore.list_dead_letters()
    assert [(d.notifier, d.event_id, d.run_uuid, d.type) for d in dead] == [
        ("hook", other.id, OTHER, "run.status_changed"),
        ("mail", first.id, RUN, "run.status_changed"),
    ]
    assert dead[1].dead_at == clock.now
    assert [d.notifier for d in await astore.list_dead_letters(notifier="mail")] == ["mail"]
    assert [d.id for d in await astore.list_dead_letters(before_id=dead[0].id)] == [dead[1].id]

    later = clock.advance(3600)
    mail_row = rows[first.id, "mail"].id
    # A delivered row, an unknown id and a pending row are left alone.
    chosen = Redelivery(ids=(rows[first.id, "hook"].id, 999, mail_row))
    assert await astore.redeliver(chosen) == [mail_row]
    assert await astore.redeliver(Redelivery(ids=(mail_row,))) == []  # no longer dead
    again = {d.id: d for d in await astore.pending_deliveries(limit=10)}[mail_row]
    assert (again.event, again.notifier, again.attempts, again.last_error) == (
        first,
        "mail",
        0,
        None,
    )
    assert again.created_at == later  # the max_age clock starts again
    assert await astore.redeliver(Redelivery(notifier="nobody")) == []
    hook_only = Redelivery(all=True, configured=frozenset({"mail"}))
    assert await astore.redeliver(hook_only) == []  # hook is not configured: stays dead
    assert await astore.redeliver(Redelivery(all=True)) == [rows[other.id, "hook"].id]
    assert await astore.list_dead_letters() == []
    assert (await astore.state_figures(now=clock.now)).redeliveries == {"hook": 1, "mail": 1}
    await astore.mark_dead(mail_row, error="down again")
    assert await astore.redeliver(Redelivery(notifier="mail")) == [mail_row]
    assert (await astore.state_figures(now=clock.now)).redeliveries == {"hook": 1, "mail": 2}


async def test_prune_events_keeps_owed_and_dead_deliveries(
    astore: AsyncStore, clock: FakeClock
) -> None:
    await astore.track([TrackRequest(RUN)])
    await record(astore, clock, RUN, None, "QUEUED", "hook")
    await record(astore, clock, RUN, "QUEUED", "RUNNING", "hook")
    await record(astore, clock, RUN, "RUNNING", "SUCCESS", "hook")
    first, second, _third = await astore.pending_deliveries(limit=10)
    await astore.mark_delivered(first.id)
    await astore.mark_dead(second.id, error="HTTP 500")
    clock.advance(10)
    assert await astore.prune_events(before=clock.now) == 1  # only the delivered one
    history = await astore.run_history(RUN)
    assert history is not None
    assert [[d.state for d in entry.deliveries] for entry in history] == [["dead"], ["pending"]]


# --- silences ------------------------------------------------------------------------------


async def test_store_adds_lists_expires_and_keeps_ended_silences_for_7_days(
    astore: AsyncStore, clock: FakeClock
) -> None:
    version = await astore.silence_version()
    first = await astore.add_silence(
        matchers={"label.team": "a"},
        ends_at=clock.now + timedelta(hours=2),
        notifiers=["ops"],
        comment="rerun",
    )
    second = await astore.add_silence(
        matchers={"type": "run.stuck"}, ends_at=clock.now + timedelta(days=30)
    )
    assert second.id > first.id
    assert await astore.silence_version() > version
    assert [s.id for s in await astore.current_silences()] == [first.id, second.id]
    assert (first.notifiers, first.comment, first.starts_at) == (("ops",), "rerun", clock.now)
    assert first.matchers == {"label.team": "a"}

    clock.advance(60)
    version = await astore.silence_version()
    expired = await astore.expire_silence(first.id)
    assert expired is not None
    assert expired.ends_at == clock.now
    assert expired.state(clock.now) == "expired"
    assert await astore.silence_version() > version
    assert [s.id for s in await astore.current_silences()] == [second.id]
    assert [s.id for s in await astore.silences()] == [first.id, second.id]  # for the record
    assert await astore.expire_silence(999) is None
    got = await astore.get_silence(second.id)
    assert got is not None
    assert got.matchers == {"type": "run.stuck"}

    clock.advance(7 * 86400 - 120)  # ended 7 days ago less a minute: still listed
    assert [s.id for s in await astore.silences()] == [first.id, second.id]
    clock.advance(121)
    assert [s.id for s in await astore.silences()] == [second.id]
    assert await astore.get_silence(first.id) is None
    third = await astore.add_silence(matchers={"status": "X"}, ends_at=clock.now + DAY)
    assert third.id > second.id  # ids are never reused, pruned or not


# --- retention steps -----------------------------------------------------------------------


async def test_retention_steps_remove_finished_runs_with_their_history(
    astore: AsyncStore, backend: Backend, clock: FakeClock
) -> None:
    done, active, gone, recent = "run-done", "run-active", "run-gone", "run-recent"
    await astore.track([TrackRequest(r, "prj", {"team": "ngs"}) for r in (done, active, gone)])
    await record(astore, clock, done, None, "RUNNING", "hook", "mail")
    clock.advance(3600)
    await record(astore, clock, done, "RUNNING", "FAILED", "hook", "mail")
    dead, _delivered_below = await astore.pending_deliveries(limit=2)
    await astore.mark_dead(dead.id, error="HTTP 500")  # a dead letter and a delivery
    await record(astore, clock, active, None, "QUEUED", "hook", "mail")
    gone_run = await astore.get_run(gone)
    assert gone_run is not None
    event = not_found_event(gone_run, now=clock.now)
    assert await astore.record_not_found(gone, event, notifiers=["hook"])
    digest = Event("digest", new_event_id(T0), T0, {"run_group": "g1", "runs": []})
    assert await astore.record_event(digest, notifiers=["hook"])
    clock.advance((T0 + 31 * DAY - clock.now).total_seconds())
    await astore.track([TrackRequest(recent, "prj")])
    await record(astore, clock, recent, None, "SUCCESS", "hook", "mail")
    assert await backend.table_counts() == {"runs": 4, "events": 6, "outbox": 10}
    # Every delivery settled: one still owed keeps its run (test_retention_owed.py).
    for delivery in await astore.pending_deliveries(limit=100):
        await astore.mark_delivered(delivery.id)

    cutoff = clock.now - 30 * DAY
    first = await astore.prune_finished_runs(finished_before=cutoff, limit=1)
    assert (first.runs, first.more) == (1, True)
    second = await astore.prune_finished_runs(finished_before=cutoff, limit=1)
    assert (second.runs, second.more) == (1, True)
    last = await astore.prune_finished_runs(finished_before=cutoff, limit=1)
    assert (last.runs, last.events, last.more) == (0, 0, False)
    assert first.events + second.events == 3
    # Run-less events (the digest) go by age, in bounded scans along the log.
    deleted, after = 0, 0
    scans = 0
    while True:
        step, next_after = await astore.prune_orphan_events(
            recorded_before=cutoff, after_seq=after, limit=2
        )
        deleted, scans = deleted + step, scans + 1
        if next_after is None:
            break
        after = next_after
    assert deleted == 1
    assert [r.run_uuid for r in await astore.list_runs()] == [active, recent]
    assert {e.run_uuid for e in await astore.events(limit=100)} == {active, recent}
    assert await astore.dead_letters() == []
    assert await backend.table_counts() == {"runs": 2, "events": 2, "outbox": 4}
    assert await astore.count_by_status() == {"QUEUED": 1, "SUCCESS": 1}
    assert await astore.release_free_pages(100) >= 0


# --- held deliveries -----------------------------------------------------------------------


async def test_held_rows_wait_and_a_release_stores_the_details_once(
    astore: AsyncStore, clock: FakeClock
) -> None:
    await astore.track([TrackRequest(RUN), TrackRequest(OTHER)])
    event = await observe(
        astore, RUN, "FAILED", T0, notifiers=("hook",), held_until=T0 + timedelta(seconds=30)
    )
    assert event is not None
    later = await observe(astore, OTHER, "RUNNING", T0, notifiers=("hook",))
    assert later is not None
    run = await astore.get_run(RUN)
    assert run is not None
    assert run.status == "FAILED"  # the status does not wait for the details
    rows = await astore.pending_deliveries(limit=10)
    assert [(d.event.id, d.next_attempt_at.timestamp()) for d in rows] == [
        (event.id, HELD_NEXT_ATTEMPT),
        (later.id, T0.timestamp()),
    ]
    assert await astore.held_runs([RUN, OTHER, "x"]) == {RUN}
    assert await astore.held_runs([]) == set()
    assert [e.id for e in await astore.held_events()] == [event.id]

    with pytest.raises(ValueError, match="keep the event's id"):
        await astore.release_event(event.id, later)
    enriched = Event(event.type, event.id, event.timestamp, {**event.data, "failure": {"x": 1}})
    assert await astore.release_event(event.id, enriched)
    assert not await astore.release_event(event.id, event)  # once released, never rewritten
    rows = await astore.pending_deliveries(limit=10)
    assert rows[0].event == enriched
    assert rows[0].next_attempt_at == T0
    assert await astore.held_runs([RUN]) == set()

    third = await observe(
        astore, OTHER, "SUCCESS", T0, notifiers=("hook",), held_until=T0 + timedelta(seconds=5)
    )
    assert third is not None
    assert await astore.release_held() == 1
    assert await astore.held_events() == []
    assert (await astore.pending_deliveries(limit=10))[-1].event == third


# --- registry pages ------------------------------------------------------------------------


def run_uuid(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


async def test_pages_filters_cursors_and_json(astore: AsyncStore, clock: FakeClock) -> None:
    uuids = [run_uuid(n) for n in range(25)]
    await astore.track(
        TrackRequest(u, f"prj-{n % 2}", {"run_group": f"g{n % 3}", "n": str(n)})
        for n, u in enumerate(uuids)
    )
    for n, u in enumerate(uuids[:10]):
        await observe(astore, u, "SUCCESS" if n % 2 else "RUNNING", T0 + timedelta(seconds=n))
    # Every run once, in tracking order, whatever the page size; the walk survives changes.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await astore.page_runs(limit=4, cursor=cursor)
        seen += [r.run_uuid for r in page.runs]
        if len(seen) == 8:
            await astore.untrack([uuids[0], uuids[20]])  # one already read, one ahead
            await astore.track([TrackRequest(run_uuid(99))])  # a newcomer at the end
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [u for u in uuids if u != uuids[20]] + [run_uuid(99)]

    async def select(where: RunFilter) -> list[str]:
        return [r.run_uuid async for r in astore.iter_runs(where, page=3)]

    assert await select(RunFilter(status="RUNNING")) == uuids[2:10:2]
    assert await select(RunFilter(status="RUNNING", project_id="prj-1")) == []
    assert await select(RunFilter(project_id="prj-1")) == uuids[1:25:2]
    assert await select(RunFilter(labels={"run_group": "g1", "n": "4"})) == [uuids[4]]
    assert await select(RunFilter(uuid_prefix="0000000")) == uuids[1:16]
    active = await select(RunFilter(active=True))
    assert uuids[1] not in active
    assert uuids[2] in active
    # The JSON pages are byte for byte each run's to_json_dict, with the same cursors.
    where = RunFilter(labels={"run_group": "g2"})
    plain = await astore.page_runs(limit=3, where=where)
    rendered = await astore.page_runs_json(limit=3, where=where)
    assert rendered.runs == [
        json.dumps(r.to_json_dict(), ensure_ascii=False, separators=(",", ":")) for r in plain.runs
    ]
    assert rendered.next_cursor == plain.next_cursor
    for bad in ("", "x", "cjE6", "r1:5", "a" * 50):
        with pytest.raises(ValueError, match="cursor"):
            await astore.page_runs(limit=3, cursor=bad)
    with pytest.raises(ValueError, match="limit"):
        await astore.page_runs_json(limit=0)
    assert await astore.tracked_among([uuids[0], uuids[1], "nope"]) == {uuids[1]}


async def test_counts_follow_tracking_recording_and_pruning(
    astore: AsyncStore, clock: FakeClock
) -> None:
    uuids = [run_uuid(n) for n in range(6)]
    await astore.track(TrackRequest(u) for u in uuids)
    assert await astore.count_by_status() == {None: 6}
    await observe(astore, uuids[0], "RUNNING", T0)
    await observe(astore, uuids[1], "RUNNING", T0)
    await observe(astore, uuids[2], "SUCCESS", T0)
    await astore.untrack(uuids[:1])
    assert await astore.count_by_status() == {None: 3, "RUNNING": 1, "SUCCESS": 1}
    await astore.track([TrackRequest(uuids[0])])  # re-tracked: counted again under its status
    for delivery in await astore.pending_deliveries(limit=100):
        await astore.mark_delivered(delivery.id)  # settled: retention may take the run
    clock.advance(86400)
    step = await astore.prune_finished_runs(finished_before=clock.now, limit=10)
    assert step.runs == 1
    assert await astore.count_by_status() == {None: 3, "RUNNING": 2}


# --- discovery, groups, references, the status page ---------------------------------------


async def test_track_discovered_inserts_only_runs_never_seen(astore: AsyncStore) -> None:
    run_a, run_b, run_c = run_uuid(1), run_uuid(2), run_uuid(3)
    await astore.track([TrackRequest(run_a, "prj-user", {"owner": "me"}), TrackRequest(run_b)])
    await astore.untrack([run_b])
    cursor, _ = await astore.snapshot()
    found = [
        DiscoveredRun(run_a, "prj-w", "RUNNING", {"team": "w"}),
        DiscoveredRun(run_b, "prj-w", "RUNNING", {"team": "w"}),
        DiscoveredRun(run_c, "prj-w", "SUCCESS", {"team": "w"}),
        DiscoveredRun(run_c, "prj-w", "SUCCESS", {"team": "w"}),
    ]
    assert await astore.track_discovered(found, baseline=True, terminal=TERMINAL) == [run_c]
    assert await astore.track_discovered(found, baseline=True, terminal=TERMINAL) == []
    a = await astore.get_run(run_a)
    assert a is not None
    assert (a.project_id, a.labels, a.status) == ("prj-user", {"owner": "me"}, None)
    assert await astore.get_run(run_b) is None  # the user's untrack stands
    c = await astore.get_run(run_c)
    assert c is not None
    assert (c.project_id, c.labels, c.status, c.terminal) == (
        "prj-w",
        {"team": "w"},
        "SUCCESS",
        True,
    )
    assert c.last_polled_at is not None
    assert await astore.events(limit=10) == []
    _, active, removed = await astore.changes_since(cursor)
    assert (active, removed) == ([], [])
    run_d = run_uuid(4)
    new = [DiscoveredRun(run_d, "prj-w", "RUNNING")]
    assert await astore.track_discovered(new, baseline=False, terminal=TERMINAL) == [run_d]
    _, active, _ = await astore.changes_since(cursor)
    assert [(r.run_uuid, r.status, r.last_polled_at) for r in active] == [(run_d, None, None)]
    assert not await astore.discovery_done("k")
    await astore.mark_discovery_done("k")
    await astore.mark_discovery_done("k")
    assert await astore.discovery_done("k")


async def test_groups_references_and_overview_reads(astore: AsyncStore, clock: FakeClock) -> None:
    uuids = [run_uuid(n) for n in range(5)]
    await astore.track(TrackRequest(u, "prj", {"run_group": "g1"}) for u in uuids[:3])
    await astore.track([TrackRequest(uuids[3], "prj", {"run_group": "g2"}), TrackRequest(uuids[4])])
    await observe(astore, uuids[0], "RUNNING", T0, notifiers=("hook",))
    clock.advance(60)
    await observe(astore, uuids[1], "FAILED", clock.now, notifiers=("hook", "mail"))
    clock.advance(60)
    await observe(astore, uuids[3], "FAILED", clock.now, notifiers=())
    members = await astore.group_members("g1")
    assert [(m.run_uuid, m.status, m.finished) for m in members] == [
        (uuids[0], "RUNNING", False),
        (uuids[1], "FAILED", True),
        (uuids[2], None, False),
    ]
    assert await astore.group_members("nope") == []
    assert await astore.groups_finished_since(T0) == ["g1", "g2"]
    assert await astore.groups_finished_since(clock.now) == ["g2"]

    refs = await astore.status_references()
    assert refs == {uuids[0]: (None, T0.timestamp())}
    assert await astore.status_references([uuids[1], uuids[2]]) == {}

    groups = await astore.active_groups(limit=10)
    assert sorted(groups) == ["g1"]  # g2's only run is finished
    assert sorted((c.status, c.runs) for c in groups["g1"] if c.status) == [
        ("FAILED", 1),
        ("RUNNING", 1),
    ]
    latest = await astore.latest_in_statuses(["FAILED", "EXECUTOR_ERROR"], limit=5)
    assert [r.run_uuid for r in latest] == [uuids[3], uuids[1]]
    rows = await astore.pending_deliveries(limit=10)
    await astore.mark_retry(rows[1].id, attempts=1, next_attempt_at=clock.now, error="503")
    await astore.mark_dead(rows[2].id, error="HTTP 410")
    outboxes = {o.notifier: o for o in await astore.notifier_outboxes()}
    assert (outboxes["hook"].pending, outboxes["hook"].retrying) == (2, 1)
    assert outboxes["hook"].last_error == "503"
    assert (outboxes["mail"].pending, outboxes["mail"].dead) == (0, 1)
    assert outboxes["mail"].last_error == "HTTP 410"


async def test_window_pages_give_every_matching_run_once_and_say_how_far_they_searched(
    astore: AsyncStore,
) -> None:
    uuids = [run_uuid(n * 7919 % 1000) for n in range(120)]
    await astore.track(
        TrackRequest(u, f"prj-{n % 3}", {"run_group": f"g{n % 4}", "team": f"t{n % 5}"})
        for n, u in enumerate(uuids)
    )
    runs = await astore.list_runs()
    filters = [
        RunFilter(),
        RunFilter(project_id="prj-1"),
        RunFilter(labels={"team": "t2"}),
        RunFilter(labels={"run_group": "g3"}),
        RunFilter(uuid_prefix=runs[42].run_uuid[:3]),
        RunFilter(uuid_prefix=runs[42].run_uuid[:10]),
    ]
    for where in filters:
        expected = [r.run_uuid async for r in astore.iter_runs(where)]
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(len(runs)):
            page = await astore.page_runs_window(where, limit=5, cursor=cursor, windows=(17, 29))
            assert len(page.runs) <= 5
            seen += [r.run_uuid for r in page.runs]
            if page.searched_to is not None:
                assert page.next_cursor is not None
                assert page.searched_from <= page.searched_to < page.newest
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == expected, where
