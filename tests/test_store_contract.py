"""The store contract, part 1, on both backends (SQLite file, PostgreSQL): the registry,
compare-and-set recording with its outbox rows, the event log and the outbox.

Moved here from ``test_store.py`` (which keeps what only SQLite has: file identity, WAL,
locks, a crash right after a commit) and run through :class:`~watcher.store.api.AsyncStore`
on each backend (``astore``, see ``astore.py``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from astore import TERMINAL, Backend, astore, backend, observe
from support import FAKE_START, FakeClock

from watcher.events import STUCK, Event, RunState
from watcher.store import TrackRequest
from watcher.store.api import AsyncStore
from watcher.transitions import detect, not_found_event, stuck_event

__all__ = ["astore", "backend"]  # fixtures, used by name

T0 = FAKE_START  # where the ``clock`` fixture starts
RUN_A = "84232c68-a016-4668-b2e3-168a175d6f29"
RUN_B = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


# --- registry ------------------------------------------------------------------------------


async def test_track_is_idempotent_and_merges_labels(astore: AsyncStore, clock: FakeClock) -> None:
    first = await astore.track(
        [
            TrackRequest(RUN_A, labels={"team": "g"}),
            TrackRequest(RUN_B, "prj-1"),
            TrackRequest(RUN_A, labels={"env": "prod"}),  # duplicate in one call: merged
        ]
    )
    assert (first.added, first.existing) == ([RUN_A, RUN_B], [])
    clock.advance(10)
    second = await astore.track([TrackRequest(RUN_A, "prj-2", {"team": "h"}), TrackRequest(RUN_B)])
    assert (second.added, second.existing) == ([], [RUN_A, RUN_B])
    run_a, run_b = await astore.get_run(RUN_A), await astore.get_run(RUN_B)
    assert run_a is not None
    assert run_b is not None
    assert run_a.labels == {"team": "h", "env": "prod"}
    assert run_a.project_id == "prj-2"
    assert run_a.tracked_at == T0  # tracking again is not a new tracking session
    assert run_b.project_id == "prj-1"  # "" never overwrites a known project
    assert [r.run_uuid for r in await astore.list_runs()] == [RUN_A, RUN_B]
    with pytest.raises(ValueError, match="empty"):
        await astore.track([TrackRequest("")])


async def test_untrack_keeps_history_and_retrack_reactivates(
    astore: AsyncStore, clock: FakeClock
) -> None:
    await astore.track([TrackRequest(RUN_A, labels={"team": "g"})])
    await observe(astore, RUN_A, "RUNNING", T0)
    assert await astore.untrack([RUN_A, RUN_B, RUN_A]) == [RUN_A]
    assert await astore.untrack([RUN_A]) == []
    assert await astore.get_run(RUN_A) is None
    assert await astore.list_runs() == []
    assert await astore.active_runs() == []
    assert [e.status for e in await astore.events(run_uuid=RUN_A)] == ["RUNNING"]
    assert await astore.labels_of(RUN_A) == {"team": "g"}
    # An untracked run is never written to by polling.
    late = RunState(RUN_A, "", "SUCCESS", T0)
    assert not await astore.record_observation(late, None, notifiers=[])

    clock.advance(60)
    result = await astore.track([TrackRequest(RUN_A, labels={"team": "new"})])
    assert result.added == [RUN_A]
    run = await astore.get_run(RUN_A)
    assert run is not None
    assert (run.status, run.labels, run.tracked_at) == ("RUNNING", {"team": "new"}, clock.now)
    assert [r.run_uuid for r in await astore.active_runs()] == [RUN_A]


async def test_hundred_thousand_runs_in_one_call(astore: AsyncStore) -> None:
    uuids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(100_000)]
    result = await astore.track(TrackRequest(u, labels={"batch": "1"}) for u in uuids)
    assert result.added == uuids
    assert result.existing == []
    active = await astore.active_runs()
    assert len(active) == 100_000
    assert {run.run_uuid for run in active} == set(uuids)
    assert await astore.count_by_status() == {None: 100_000}
    again = await astore.track(TrackRequest(u) for u in uuids)
    assert (len(again.added), len(again.existing)) == (0, 100_000)
    assert len(await astore.untrack(uuids[:50_000])) == 50_000
    assert len(await astore.active_runs()) == 50_000
    assert await astore.count_by_status() == {None: 50_000}


async def test_daemon_sees_cli_changes_through_changes_since(backend: Backend) -> None:
    daemon, cli = await backend.open(), await backend.open()
    try:
        await cli.track([TrackRequest(RUN_A)])
        cursor, runs = await daemon.snapshot()
        assert [r.run_uuid for r in runs] == [RUN_A]
        assert await daemon.changes_since(cursor) == (cursor, [], [])

        await cli.track([TrackRequest(RUN_B, "prj-9")])
        cursor2, added, removed = await daemon.changes_since(cursor)
        assert cursor2 > cursor
        assert [(r.run_uuid, r.project_id, r.status) for r in added] == [(RUN_B, "prj-9", None)]
        assert removed == []

        await cli.untrack([RUN_A])
        cursor3, added, removed = await daemon.changes_since(cursor2)
        assert (added, removed) == ([], [RUN_A])
        assert await daemon.changes_since(cursor3) == (cursor3, [], [])
        assert (await daemon.snapshot())[0] == cursor3

        # Re-tracking shows up as an activation again; a terminal run does not.
        await cli.track([TrackRequest(RUN_A)])
        await observe(daemon, RUN_B, "SUCCESS", T0)
        await cli.track([TrackRequest(RUN_B, labels={"x": "y"})])
        _, added, removed = await daemon.changes_since(cursor3)
        assert ([r.run_uuid for r in added], removed) == ([RUN_A], [])
    finally:
        await daemon.close()
        await cli.close()


async def test_record_polls_and_errors(astore: AsyncStore) -> None:
    await astore.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    retry_at = T0 + timedelta(seconds=40)
    await astore.record_error(RUN_A, consecutive_errors=3, next_poll_after=retry_at)
    run = await astore.get_run(RUN_A)
    assert run is not None
    assert (run.consecutive_errors, run.next_poll_after) == (3, retry_at)
    active = {r.run_uuid: r for r in await astore.active_runs()}
    assert active[RUN_A].next_poll_after == retry_at.timestamp()

    polled_at = T0 + timedelta(seconds=50)
    await astore.record_polls([(RUN_A, polled_at), (RUN_B, polled_at)])
    run = await astore.get_run(RUN_A)
    assert run is not None
    assert (run.consecutive_errors, run.next_poll_after, run.last_polled_at) == (0, None, polled_at)
    await astore.record_polls([])


async def test_tracked_run_json(astore: AsyncStore) -> None:
    await astore.track([TrackRequest(RUN_A, "prj-1", {"team": "g"})])
    await observe(astore, RUN_A, "SUCCESS", T0 + timedelta(seconds=1.5))
    run = await astore.get_run(RUN_A)
    assert run is not None
    assert run.to_json_dict() == {
        "run_uuid": RUN_A,
        "project_id": "prj-1",
        "status": "SUCCESS",
        "terminal": True,
        "labels": {"team": "g"},
        "tracked_at": "2026-11-27T10:00:00.000Z",
        "last_polled_at": "2026-11-27T10:00:01.500Z",
        "status_since": "2026-11-27T10:00:01.500Z",
        "stopped": False,
    }
    assert await astore.active_runs() == []
    assert await astore.count_by_status() == {"SUCCESS": 1}


# --- recording -----------------------------------------------------------------------------


async def test_observation_writes_status_event_and_outbox(astore: AsyncStore) -> None:
    await astore.track([TrackRequest(RUN_A, labels={"team": "g"})])
    event = await observe(astore, RUN_A, "RUNNING", T0, notifiers=("ops", "chat", "ops"))
    assert event is not None
    assert await astore.events() == [event]
    pending = await astore.pending_deliveries()
    assert [(d.notifier, d.event) for d in pending] == [("ops", event), ("chat", event)]
    # Unchanged status: no event, but the poll time moves.
    later = T0 + timedelta(seconds=30)
    assert await observe(astore, RUN_A, "RUNNING", later) is None
    run = await astore.get_run(RUN_A)
    assert run is not None
    assert (run.status, run.status_since, run.last_polled_at) == ("RUNNING", T0, later)
    assert len(await astore.events()) == 1


async def test_observation_compare_and_set(astore: AsyncStore) -> None:
    await astore.track([TrackRequest(RUN_A)])
    await observe(astore, RUN_A, "RUNNING", T0)
    # A writer that still believes the run was never seen (stale previous status):
    stale = RunState(RUN_A, "", "SUCCESS", T0 + timedelta(seconds=5))
    event = detect(None, stale, terminal=TERMINAL)
    assert event is not None
    assert not await astore.record_observation(stale, event, notifiers=["ops"])
    # ...and a "no change" observation whose status differs from the stored one.
    assert not await astore.record_observation(stale, None, notifiers=["ops"])
    run = await astore.get_run(RUN_A)
    assert run is not None
    assert (run.status, run.last_polled_at) == ("RUNNING", T0)
    assert [e.status for e in await astore.events()] == ["RUNNING"]
    assert len(await astore.pending_deliveries()) == 1
    # The same transition recorded twice (e.g. two daemons) is applied once.
    cur = RunState(RUN_A, "", "SUCCESS", T0 + timedelta(seconds=6))
    prev = RunState(RUN_A, "", "RUNNING", T0)
    first = detect(prev, cur, terminal=TERMINAL)
    second = detect(prev, cur, terminal=TERMINAL)
    assert first is not None
    assert second is not None
    assert await astore.record_observation(cur, first, notifiers=["ops"])
    assert not await astore.record_observation(cur, second, notifiers=["ops"])
    assert (await astore.events())[0].id == first.id
    assert len(await astore.pending_deliveries()) == 2


async def test_two_writers_racing_record_one_transition_once(backend: Backend) -> None:
    """Two stores (two daemons) record the same transition with different event ids at the
    same time: exactly one commits, with its event and its outbox rows."""
    import asyncio

    first_store, second_store = await backend.open(), await backend.open()
    try:
        await first_store.track([TrackRequest(RUN_A)])
        await observe(first_store, RUN_A, "RUNNING", T0)
        cur = RunState(RUN_A, "", "SUCCESS", T0 + timedelta(seconds=6))
        prev = RunState(RUN_A, "", "RUNNING", T0)
        events = [detect(prev, cur, terminal=TERMINAL) for _ in range(2)]
        done = await asyncio.gather(
            *(
                store.record_observation(cur, event, notifiers=["ops", "chat"])
                for store, event in zip((first_store, second_store), events, strict=True)
            )
        )
        assert sorted(done) == [False, True]
        winner = events[done.index(True)]
        assert winner is not None
        assert next(e.id for e in await first_store.events()) == winner.id
        rows = await second_store.pending_deliveries(limit=10)
        assert [(d.event.status, d.notifier) for d in rows] == [
            ("RUNNING", "ops"),
            ("SUCCESS", "ops"),
            ("SUCCESS", "chat"),
        ]
    finally:
        await first_store.close()
        await second_store.close()


async def test_observation_is_atomic(astore: AsyncStore) -> None:
    """A recording that fails after the run row changed leaves nothing behind."""
    await astore.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    cur = RunState(RUN_A, "", "RUNNING", T0)
    event = detect(None, cur, terminal=TERMINAL)
    assert event is not None
    # Another run's event already holds this id: the insert of the event fails after the
    # status update, inside the transaction.
    taken = Event("run.custom", event.id, T0, {"run_uuid": RUN_B})
    assert await astore.record_event(taken, notifiers=[])
    with pytest.raises(ValueError, match="already recorded"):
        await astore.record_observation(cur, event, notifiers=["ops"])
    run = await astore.get_run(RUN_A)
    assert run is not None
    assert (run.status, run.last_polled_at) == (None, None)
    assert await astore.events(run_uuid=RUN_A) == []
    assert await astore.pending_deliveries() == []
    # Invalid notifier names are refused before anything is written.
    fresh = detect(None, cur, terminal=TERMINAL)
    assert fresh is not None
    with pytest.raises(ValueError, match="notifier names"):
        await astore.record_observation(cur, fresh, notifiers=["ops", ""])
    assert await astore.events(run_uuid=RUN_A) == []
    # And the store is still usable afterwards.
    assert await astore.record_observation(cur, fresh, notifiers=["ops"])
    assert await astore.events(run_uuid=RUN_A) == [fresh]


async def test_observation_must_match_its_event(astore: AsyncStore) -> None:
    await astore.track([TrackRequest(RUN_A)])
    event = detect(None, RunState(RUN_A, "", "RUNNING", T0), terminal=TERMINAL)
    with pytest.raises(ValueError, match="does not describe"):
        await astore.record_observation(RunState(RUN_A, "", "QUEUED", T0), event, notifiers=[])


async def test_not_found_stops_polling_until_tracked_again(astore: AsyncStore) -> None:
    await astore.track([TrackRequest(RUN_A, labels={"team": "g"})])
    run = await astore.get_run(RUN_A)
    assert run is not None
    event = not_found_event(run, now=T0)
    assert await astore.record_not_found(RUN_A, event, notifiers=["ops"])
    assert not await astore.record_not_found(RUN_A, not_found_event(run, now=T0), notifiers=["ops"])
    stopped = await astore.get_run(RUN_A)
    assert stopped is not None
    assert stopped.stopped
    assert await astore.active_runs() == []
    assert await astore.events() == [event]
    assert [d.event.id for d in await astore.pending_deliveries()] == [event.id]
    cursor, _ = await astore.snapshot()
    assert (await astore.track([TrackRequest(RUN_A, "prj-right")])).existing == [RUN_A]
    assert [r.project_id for r in (await astore.changes_since(cursor))[1]] == ["prj-right"]
    assert [r.run_uuid for r in await astore.active_runs()] == [RUN_A]


async def test_stuck_once_per_status(astore: AsyncStore, clock: FakeClock) -> None:
    await astore.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    await observe(astore, RUN_A, "QUEUED", T0)
    await observe(astore, RUN_B, "RUNNING", T0)
    now = clock.advance(3600)
    # An hour old, but no poll saw them since: not seen stuck.
    assert await astore.stuck_candidates(after_seconds=1800) == []
    await astore.record_polls([(RUN_A, now)])
    assert await astore.stuck_candidates(after_seconds=0) == []
    assert await astore.stuck_candidates(after_seconds=3601) == []
    candidates = await astore.stuck_candidates(after_seconds=1800)
    assert [r.run_uuid for r in candidates] == [RUN_A]
    run = candidates[0]
    assert run.status_since == T0
    event = stuck_event(run, since=T0, now=now)
    assert await astore.record_event(event, notifiers=["ops"])
    again = stuck_event(run, since=T0, now=now)
    assert not await astore.record_event(again, notifiers=["ops"])
    await astore.record_polls([(RUN_B, now)])
    assert await astore.stuck_candidates(after_seconds=1800) == [await astore.get_run(RUN_B)]
    # The next transition re-arms it for the new status.
    await observe(astore, RUN_A, "RUNNING", now)
    later = clock.advance(3600)
    rearmed = await astore.get_run(RUN_A)
    assert rearmed is not None
    assert rearmed.status_since == now
    assert await astore.record_event(stuck_event(rearmed, since=now, now=later), notifiers=[])
    types = [e.type for e in await astore.events(run_uuid=RUN_A)]
    assert types == [STUCK, "run.status_changed", STUCK, "run.status_changed"]


async def test_record_event_ignores_known_ids(astore: AsyncStore) -> None:
    event = Event("run.custom", "evt_1", T0, {"run_uuid": RUN_A})
    assert await astore.record_event(event, notifiers=["ops"])
    assert not await astore.record_event(event, notifiers=["ops"])
    assert len(await astore.pending_deliveries()) == 1
    assert await astore.has_event("evt_1")
    assert not await astore.has_event("evt_2")


async def test_events_newest_first_with_paging_and_filters(astore: AsyncStore) -> None:
    await astore.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    for i, status in enumerate(["QUEUED", "RUNNING", "SUCCESS"]):
        await observe(astore, RUN_A, status, T0 + timedelta(seconds=i))
        await observe(astore, RUN_B, status, T0 + timedelta(seconds=i))
    statuses = [e.status for e in await astore.events(run_uuid=RUN_A)]
    assert statuses == ["SUCCESS", "RUNNING", "QUEUED"]
    page = await astore.event_log(limit=4)
    assert len(page) == 4
    rest = await astore.event_log(limit=4, before_seq=page[-1][0])
    seqs = [seq for seq, _ in page + rest]
    assert seqs == sorted(seqs, reverse=True)
    assert len(set(seqs)) == 6
    found = await astore.events(limit=1, run_uuid=RUN_B, before_seq=page[0][0])
    assert found[0].status == "RUNNING"
    assert len(await astore.events(event_type="run.status_changed", limit=100)) == 6
    assert await astore.events(event_type="run.stuck") == []
    # The live feed's reads: after a seq, oldest first; the newest seq; a run's newest event.
    assert [s for s, _ in await astore.events_after(seqs[2], limit=10)] == seqs[:2][::-1]
    assert await astore.last_event_seq() == seqs[0]
    last = await astore.last_event_of(RUN_A)
    assert last is not None
    assert last.status == "SUCCESS"


async def test_prune_keeps_undelivered_events(astore: AsyncStore, clock: FakeClock) -> None:
    await astore.track([TrackRequest(RUN_A)])
    await observe(astore, RUN_A, "QUEUED", T0, notifiers=())
    await observe(astore, RUN_A, "RUNNING", T0, notifiers=("ops",))
    clock.advance(10)
    assert await astore.prune_events(before=clock.now) == 1
    assert [e.status for e in await astore.events()] == ["RUNNING"]


# --- outbox --------------------------------------------------------------------------------


async def test_outbox_lifecycle(astore: AsyncStore, clock: FakeClock) -> None:
    await astore.track([TrackRequest(RUN_A), TrackRequest(RUN_B)])
    e1 = await observe(astore, RUN_A, "RUNNING", T0, notifiers=("ops", "chat"))
    clock.advance(1)
    e2 = await observe(astore, RUN_B, "RUNNING", T0, notifiers=("ops",))
    assert e1 is not None
    assert e2 is not None
    now = clock.advance(1)
    assert await astore.outbox_stats(now=now) == (3, 2.0)

    due = await astore.pending_deliveries(limit=10)
    assert [(d.event.id, d.notifier) for d in due] == [
        (e1.id, "ops"),
        (e1.id, "chat"),
        (e2.id, "ops"),
    ]
    assert [d.id for d in due] == sorted(d.id for d in due)
    assert due[0].created_at == T0
    assert due[0].attempts == 0
    assert due[0].next_attempt_at == T0
    assert (await astore.pending_deliveries("chat", limit=1))[0].id == due[1].id
    assert len(await astore.pending_deliveries(limit=2)) == 2

    # Retry: no longer due, still pending and first in per-notifier order.
    await astore.mark_retry(
        due[0].id, attempts=1, next_attempt_at=now + timedelta(seconds=5), error="503"
    )
    pending_ops = await astore.pending_deliveries("ops", limit=10)
    assert [d.id for d in pending_ops] == [due[0].id, due[2].id]
    assert (pending_ops[0].attempts, pending_ops[0].last_error) == (1, "503")
    assert pending_ops[0].next_attempt_at == now + timedelta(seconds=5)

    await astore.mark_delivered(due[2].id)
    await astore.mark_delivered(due[2].id)  # twice is harmless
    await astore.mark_dead(due[1].id, error="400 Bad Request " + "x" * 5000)
    await astore.mark_retry(due[1].id, attempts=9, next_attempt_at=now, error="too late")  # no-op
    dead = await astore.dead_letters()
    assert [d.id for d in dead] == [due[1].id]
    assert dead[0].last_error is not None
    assert dead[0].last_error.startswith("400 Bad Request")
    assert len(dead[0].last_error) == 2000
    assert await astore.outbox_stats(now=now) == (1, 2.0)
    assert await astore.dead_letter_count() == 1

    await astore.mark_delivered(due[0].id)
    assert await astore.outbox_stats(now=now) == (0, 0.0)
    assert await astore.pending_deliveries() == []
    assert len(await astore.events()) == 2  # delivery does not touch the history
    # Settled rows stay as the record of what became of each delivery; attempts is the
    # number of tries made: a delivered row counts its successful one.
    history = await astore.run_history(RUN_A)
    assert history is not None
    assert [(d.notifier, d.state, d.attempts) for d in history[0].deliveries] == [
        ("ops", "delivered", 2),
        ("chat", "dead", 0),
    ]
    other = await astore.run_history(RUN_B)
    assert other is not None
    assert [(d.notifier, d.state, d.attempts) for d in other[0].deliveries] == [
        ("ops", "delivered", 1)
    ]


async def test_dead_letter_removed_notifiers(astore: AsyncStore) -> None:
    await astore.track([TrackRequest(RUN_A)])
    await observe(astore, RUN_A, "RUNNING", T0, notifiers=("ops", "old", "older"))
    ids = {d.notifier: d.id for d in await astore.pending_deliveries()}
    dropped = await astore.dead_letter_removed_notifiers(known_notifiers={"ops"})
    assert dropped == sorted([ids["old"], ids["older"]])
    assert [d.notifier for d in await astore.pending_deliveries()] == ["ops"]
    dead = {d.notifier: d.last_error for d in await astore.dead_letters()}
    assert dead == {
        "old": "notifier 'old' is no longer configured",
        "older": "notifier 'older' is no longer configured",
    }
    assert await astore.dead_letter_removed_notifiers(known_notifiers={"ops"}) == []
