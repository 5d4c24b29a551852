"""Mute windows: deliveries due inside a notifier's window are held, then sent, never dropped.

Covers the pure time rules of :mod:`watcher.delivery.muting` (wrap past midnight, weekdays,
time zones, daylight saving, touching windows merging, the ``max_age`` clock), the
``[[mute_intervals]]`` configuration (every bad value names its key; the CLI exits 2), and the
dispatcher with an injected wall clock against a real webhook receiver on 127.0.0.1: a digest
notifier gets one message per run group after the window, a plain one every held event, a row
held longer than ``max_age`` is delivered all the same, a reload (SIGHUP's path) picks up new
windows, and the held rows are exported as ``omics_watcher_deliveries_muted``.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import structlog
from aiohttp import web
from notify_receiver import WebhookReceiver
from pydantic import TypeAdapter
from standardwebhooks import Webhook
from support import (
    Processes,
    clean_env,
    daemon_config,
    delivering,
    find_sample,
    free_port,
    list_runs,
    run_cli,
    serve_hook,
    start_daemon,
    start_simulator,
    until,
    wait_for,
    write_config,
)

from watcher.config import ConfigError, load_settings
from watcher.delivery.digest import DigestPolicy
from watcher.delivery.dispatcher import Dispatcher, Policy
from watcher.delivery.muting import (
    MuteInterval,
    TimeRange,
    mute_state,
    parse_clock,
    unmuted_seconds,
    windows,
)
from watcher.events import DIGEST, RUN_GROUP_LABEL, Event, new_event_id
from watcher.notifier_set import NotifierSet
from watcher.notifiers.base import Notifier
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.options import delivery_policy, mute_intervals
from watcher.service.metrics import Metrics
from watcher.store import Store
from watcher.store.api import SqliteStore

BERLIN = ZoneInfo("Europe/Berlin")
SECRET = "whsec_" + base64.b64encode(b"m" * 32).decode()


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def hm(text: str) -> int:
    return parse_clock(text, end=True)


def nights(zone: Any = UTC, days: frozenset[int] | None = None) -> MuteInterval:
    interval = MuteInterval("nights", times=(TimeRange(hm("22:00"), hm("08:00")),), zone=zone)
    return interval if days is None else MuteInterval("nights", days, interval.times, zone)


# ---- the pure rules ----------------------------------------------------------------------------
# 2026-11-27 is a Friday.


def test_a_window_wraps_past_midnight_and_belongs_to_the_day_it_starts() -> None:
    friday_nights = nights(days=frozenset({4}))
    assert mute_state([friday_nights], utc(2026, 11, 27, 23, 30)).until == utc(2026, 11, 28, 8)
    assert mute_state([friday_nights], utc(2026, 11, 28, 7, 59)).until == utc(2026, 11, 28, 8)
    # Half-open: sending again at 08:00 sharp; Saturday night is not Friday's.
    assert mute_state([friday_nights], utc(2026, 11, 28, 8)).until is None
    saturday = mute_state([friday_nights], utc(2026, 11, 28, 23))
    assert saturday.until is None
    assert saturday.valid_until == utc(2026, 12, 4, 22)  # next Friday's window
    # Before the window: not muted, and the answer holds until it opens.
    before = mute_state([friday_nights], utc(2026, 11, 27, 21, 59))
    assert (before.until, before.valid_until) == (None, utc(2026, 11, 27, 22))
    assert mute_state([friday_nights], utc(2026, 11, 27, 22)).until == utc(2026, 11, 28, 8)


def test_weekdays_without_times_mute_whole_days_and_touching_days_merge() -> None:
    weekend = MuteInterval("weekend", weekdays=frozenset({5, 6}))
    friday = mute_state([weekend], utc(2026, 11, 27, 23))
    assert (friday.until, friday.valid_until) == (None, utc(2026, 11, 28))
    # Saturday and Sunday are one span: held until Monday 00:00, not Sunday 00:00.
    assert mute_state([weekend], utc(2026, 11, 28, 10)).until == utc(2026, 11, 30)
    assert mute_state([weekend], utc(2026, 11, 30)).until is None


def test_touching_windows_of_different_intervals_are_one_hold() -> None:
    evenings = MuteInterval(
        "evenings", weekdays=frozenset(range(5)), times=(TimeRange(hm("18:00"), hm("24:00")),)
    )
    mornings = MuteInterval("mornings", times=(TimeRange(hm("00:00"), hm("09:00")),))
    both = [evenings, mornings]
    assert mute_state(both, utc(2026, 11, 27, 19)).until == utc(2026, 11, 28, 9)
    assert windows(both, utc(2026, 11, 27, 12), utc(2026, 11, 28, 12)) == [
        (utc(2026, 11, 27, 18), utc(2026, 11, 28, 9))
    ]
    # Overlapping ranges of one interval merge too.
    overlap = MuteInterval(
        "o", times=(TimeRange(hm("10:00"), hm("12:00")), TimeRange(hm("11:00"), hm("13:00")))
    )
    assert mute_state([overlap], utc(2026, 11, 27, 10, 30)).until == utc(2026, 11, 27, 13)


def test_times_are_read_on_the_intervals_own_clock() -> None:
    shanghai = nights(ZoneInfo("Asia/Shanghai"))  # UTC+8, no daylight saving
    state = mute_state([shanghai], utc(2026, 11, 27, 14, 30))  # 22:30 in Shanghai
    assert state.until == utc(2026, 11, 28, 0)  # 08:00 in Shanghai
    assert mute_state([shanghai], utc(2026, 11, 27, 13, 59)).until is None
    # The weekday is the zone's too: Saturday 06:00 in Shanghai is still Friday in UTC.
    saturday_mornings = MuteInterval(
        "s", frozenset({5}), (TimeRange(hm("00:00"), hm("09:00")),), ZoneInfo("Asia/Shanghai")
    )
    assert mute_state([saturday_mornings], utc(2026, 11, 27, 22)).until == utc(2026, 11, 28, 1)


def test_daylight_saving_nights_follow_the_wall_clock() -> None:
    berlin = nights(BERLIN)
    # Spring forward (2026-03-29 02:00 -> 03:00): 22:00 CET to 08:00 CEST is 9 hours.
    spring = mute_state([berlin], utc(2026, 3, 28, 21, 30))
    assert spring.until == utc(2026, 3, 29, 6)
    # Fall back (2026-10-25 03:00 -> 02:00): 22:00 CEST to 08:00 CET is 11 hours.
    autumn = mute_state([berlin], utc(2026, 10, 24, 20, 30))
    assert autumn.until == utc(2026, 10, 25, 7)
    assert unmuted_seconds([berlin], utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == 13 * 3600


def test_skipped_and_repeated_hours() -> None:
    small_hours = MuteInterval("h", times=(TimeRange(hm("02:00"), hm("03:00")),), zone=BERLIN)
    # The night the clocks skip 02:00-03:00, that range does not exist: nothing is muted.
    assert windows([small_hours], utc(2026, 3, 28, 12), utc(2026, 3, 29, 12)) == []
    assert mute_state([small_hours], utc(2026, 3, 29, 0, 30)).valid_until == utc(2026, 3, 30, 0)
    # The night they repeat it, it is muted twice over: two real hours.
    assert windows([small_hours], utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == [
        (utc(2026, 10, 25, 0), utc(2026, 10, 25, 2))
    ]
    # A time inside the gap is read with the offset before it (02:30 CET = 03:30 CEST).
    late = MuteInterval("l", times=(TimeRange(hm("02:30"), hm("04:00")),), zone=BERLIN)
    assert windows([late], utc(2026, 3, 28, 12), utc(2026, 3, 29, 12)) == [
        (utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2))
    ]


def test_always_muted_is_asked_again_and_stays_muted() -> None:
    always = MuteInterval("always")
    first = mute_state([always], utc(2026, 11, 27, 12))
    assert first.until is not None
    assert first.until >= utc(2026, 12, 5, 12)  # at least the horizon ahead
    again = mute_state([always], first.until)
    assert again.until is not None
    assert again.until > first.until
    assert unmuted_seconds([always], utc(2026, 1, 1), utc(2026, 11, 27)) == 0.0


def test_unmuted_seconds_counts_only_time_outside_windows() -> None:
    berlin = nights(BERLIN)
    day = unmuted_seconds([berlin], utc(2026, 11, 27, 12), utc(2026, 11, 28, 12))
    assert day == 14 * 3600  # a CET night is 10 hours
    assert unmuted_seconds([], utc(2026, 11, 27), utc(2026, 11, 28)) == 86400
    assert unmuted_seconds([berlin], utc(2026, 11, 28), utc(2026, 11, 27)) == 0.0
    # A fortnight of nights: 14 of them, whatever the span's start.
    span = unmuted_seconds([berlin], utc(2026, 11, 27, 7), utc(2026, 12, 11, 7))
    assert span == 14 * 86400 - 14 * 10 * 3600


def test_clock_texts() -> None:
    assert parse_clock("00:00") == 0
    assert parse_clock("23:59") == 1439
    assert parse_clock("24:00", end=True) == 1440
    for bad in ("24:00", "8:00", "12:60", "noon", "12:00:00", ""):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_clock(bad)


# ---- configuration -----------------------------------------------------------------------------

GOOD = """
[[mute_intervals]]
name = "nights"
weekdays = ["Mon", "tue", "wed", "thu", "fri"]
times = [{start = "22:00", end = "08:00"}, {start = "12:00", end = "13:00"}]
timezone = "Europe/Berlin"

[[mute_intervals]]
name = "weekend"
weekdays = ["sat", "sun"]

[[notifiers]]
name = "chat"
type = "webhook"
url = "https://example.org/hook"
mute_intervals = ["nights", "weekend"]

[[notifiers]]
name = "pager"
type = "webhook"
url = "https://example.org/page"
"""


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "omics-watcher.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_mute_intervals_become_each_notifiers_policy(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, GOOD), environ={})
    known = mute_intervals(settings)
    chat = delivery_policy(settings.notifiers[0], known)
    assert [m.name for m in chat.mute] == ["nights", "weekend"]
    night, weekend = chat.mute
    assert night.weekdays == frozenset(range(5))
    assert night.times == (TimeRange(22 * 60, 8 * 60), TimeRange(12 * 60, 13 * 60))
    assert night.zone == BERLIN
    assert weekend.weekdays == frozenset({5, 6})
    assert weekend.times == (TimeRange(0, 1440),)
    assert str(weekend.zone) == "UTC"
    assert delivery_policy(settings.notifiers[1], known).mute == ()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            'times = [{start = "25:00", end = "08:00"}]',
            'mute_intervals[0].times[0].start: must be a time of day as "HH:MM" (00:00 to 23:59)',
        ),
        (
            'times = [{start = "22:00", end = "8"}]',
            'mute_intervals[0].times[0].end: must be a time of day as "HH:MM" (00:00 to 24:00)',
        ),
        (
            'times = [{start = "00:00", end = "24:00"}, {start = "09:00", end = "09:00"}]',
            "mute_intervals[0].times[1]: start and end are the same time; "
            "leave out times to mute all day",
        ),
        ('times = [{start = "22:00"}]', "mute_intervals[0].times[0].end: Field required"),
        (
            'weekdays = ["mon", "funday"]',
            "mute_intervals[0].weekdays: unknown weekday 'funday'; "
            "expected one of mon, tue, wed, thu, fri, sat, sun",
        ),
        (
            'timezone = "Mars/Olympus"',
            "mute_intervals[0].timezone: unknown time zone 'Mars/Olympus'; "
            "use an IANA name such as 'Europe/Berlin' or 'UTC'",
        ),
        (
            'timezone = "../etc/passwd"',
            "mute_intervals[0].timezone: unknown time zone '../etc/passwd'; "
            "use an IANA name such as 'Europe/Berlin' or 'UTC'",
        ),
        ("days = ['mon']", "mute_intervals[0].days: Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, entry: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, f'[[mute_intervals]]\nname = "n"\n{entry}\n'), environ={})
    assert caught.value.problems == [problem]


def test_notifiers_name_only_defined_intervals_and_names_are_unique(tmp_path: Path) -> None:
    text = GOOD.replace('mute_intervals = ["nights", "weekend"]', 'mute_intervals = ["nights"]')
    unknown = text + 'mute_intervals = ["x"]\n'  # the second notifier's
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, unknown), environ={})
    assert caught.value.problems == ['notifiers[1].mute_intervals: unknown interval "x"']
    twice = GOOD + '[[mute_intervals]]\nname = "nights"\n'
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, twice), environ={})
    assert caught.value.problems == ["mute_intervals[2].name: duplicate name 'nights'"]


def test_check_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = config(tmp_path, GOOD.replace('"22:00"', '"22:0"'))
    done = run_cli("check-config", "-c", path, env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "mute_intervals[0].times[0].start: " in done.stderr
    keys = {"TENCENTCLOUD_SECRET_ID": "AKIDexample", "TENCENTCLOUD_SECRET_KEY": "example"}
    path = config(tmp_path, GOOD)
    done = run_cli("check-config", "-c", path, env=clean_env(tmp_path, keys), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_the_readmes_example_loads_and_holds_from_friday_night_to_monday_morning(
    tmp_path: Path,
) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Mute windows: no chat messages at night", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    url = tmp_path / "wecom_url"
    url.write_text("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k\n", encoding="utf-8")
    settings = load_settings(
        config(tmp_path, example.replace("/run/secrets/wecom_url", str(url))), environ={}
    )
    (chat,) = settings.notifiers
    policy = delivery_policy(chat, mute_intervals(settings))
    friday_night = datetime(2026, 11, 27, 23, tzinfo=BERLIN)
    assert mute_state(policy.mute, friday_night).until == datetime(2026, 11, 30, 8, tzinfo=BERLIN)
    assert mute_state(policy.mute, datetime(2026, 11, 30, 8, tzinfo=BERLIN)).until is None


# ---- the dispatcher, on an injected wall clock -------------------------------------------------

NIGHT = utc(2026, 11, 27, 22, 0, 1)  # one second into Friday night's window (22:00-08:00 UTC)
MORNING = utc(2026, 11, 28, 8, 0, 1)  # one second after it


class Clock:
    """A wall clock the test sets; real time passes underneath it (retries, pacing)."""

    def __init__(self, start: datetime) -> None:
        self.offset = start - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def set(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)


@dataclass
class Hook:
    """A webhook receiver that verifies each signed message and keeps its body."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests with 503 first
    refused: int = 0

    def ids(self) -> list[str]:
        return [body["id"] for body in self.bodies]


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    state = Hook()
    verifier = Webhook(SECRET)

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        verifier.verify(raw, dict(request.headers))
        if state.fail_next:
            state.fail_next -= 1
            state.refused += 1
            return web.Response(status=503)
        state.bodies.append(json.loads(raw))
        return web.Response(status=204)

    async with serve_hook(handle) as url:
        state.url = url
        yield state


@pytest.fixture
def clock() -> Clock:
    return Clock(NIGHT)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db", clock=clock) as opened:
        yield opened


def webhook_settings(url: str) -> dict[str, Any]:
    return {"name": "hook", "type": "webhook", "url": url, "secret": SECRET}


def webhook(url: str, session: aiohttp.ClientSession, clock: Clock) -> Notifier:
    """Signed on the real clock: the receiver checks each message's timestamp against its own."""
    settings = TypeAdapter(NotifierSettings).validate_python(webhook_settings(url))
    return build_notifier(settings, session=session, logger=structlog.get_logger())


def record(store: Store, clock: Clock, run: str, status: str, group: str = "rg-1") -> str:
    now = clock()
    event = Event(
        type="run.status_changed",
        id=new_event_id(now),
        timestamp=now,
        data={
            "run_uuid": run,
            "project_id": "prj-a",
            "status": status,
            "labels": {RUN_GROUP_LABEL: group},
        },
    )
    assert store.record_event(event, notifiers=["hook"])
    return event.id


def dispatcher(store: Store, notifier: Notifier, clock: Clock, policy: Policy) -> Dispatcher:
    return Dispatcher(
        store=SqliteStore(store),
        notifiers={"hook": notifier},
        policies={"hook": policy},
        clock=clock,
        logger=structlog.get_logger(),
        poll_interval=0.05,
        uniform=lambda: 0.1,
    )


async def a_night(store: Store, clock: Clock, target: Dispatcher, held: int) -> None:
    """Let the dispatcher see every recorded row at least once while the window is open."""
    target.notify()
    await until(lambda: target.muted() == {"hook": held})


async def test_a_window_holds_a_groups_events_then_releases_one_digest_per_group(
    hook: Hook, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    policy = Policy(mute=(nights(),), digest=DigestPolicy(window=1.0, max_items=50))
    target = dispatcher(store, webhook(hook.url, session, clock), clock, policy)
    expected: dict[str, list[str]] = {"rg-1": [], "rg-2": []}
    with structlog.testing.capture_logs() as logs:
        async with delivering(target, grace=1.0):
            for hour, (run, status, group) in enumerate(
                [
                    ("r1", "RUNNING", "rg-1"),
                    ("r2", "RUNNING", "rg-1"),
                    ("r3", "RUNNING", "rg-2"),
                    ("r1", "SUCCEEDED", "rg-1"),
                    ("r2", "FAILED", "rg-1"),
                    ("r3", "SUCCEEDED", "rg-2"),
                ]
            ):
                clock.set(NIGHT + timedelta(hours=hour, minutes=30))
                expected[group].append(record(store, clock, run, status, group))
                await a_night(store, clock, target, held=hour + 1)
            clock.set(MORNING - timedelta(seconds=2))  # the group windows are long over
            await a_night(store, clock, target, held=6)
            assert hook.bodies == []  # nothing went during the night
            clock.set(MORNING)
            await until(lambda: store.outbox_stats(now=clock())[0] == 0)
    assert target.muted() == {}
    # One digest per group, each carrying every event of its group in order.
    assert len(hook.bodies) == 2, [body["type"] for body in hook.bodies]
    by_group = {body["data"]["group"]: body for body in hook.bodies}
    assert set(by_group) == {"rg-1", "rg-2"}
    for group, body in by_group.items():
        assert body["type"] == DIGEST
        assert body["data"]["event_ids"] == expected[group]
    assert store.dead_letters() == []
    muted = [line for line in logs if line["event"] == "notify_muted"]
    unmuted = [line for line in logs if line["event"] == "notify_unmuted"]
    assert [line["until"] for line in muted] == [MORNING.replace(second=0).isoformat()]
    assert [line["released"] for line in unmuted] == [6]


async def test_a_plain_notifier_gets_every_held_event_after_the_window(
    hook: Hook, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    target = dispatcher(store, webhook(hook.url, session, clock), clock, Policy(mute=(nights(),)))
    recorded: list[str] = []
    async with delivering(target, grace=1.0):
        for index in range(6):
            clock.set(NIGHT + timedelta(hours=index))
            recorded.append(record(store, clock, f"r{index % 2}", f"S{index}"))
        await a_night(store, clock, target, held=6)
        assert hook.bodies == []
        clock.set(MORNING)
        await until(lambda: len(hook.bodies) == 6)
    assert sorted(hook.ids()) == sorted(recorded)
    for run in ("r0", "r1"):  # each run's events in the order they were recorded
        ids = [body["id"] for body in hook.bodies if body["data"]["run_uuid"] == run]
        assert ids == [event for event in recorded if event in ids]
    assert all(body["type"] == "run.status_changed" for body in hook.bodies)


async def test_a_row_held_longer_than_max_age_is_delivered_not_dead_lettered(
    hook: Hook, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    policy = Policy(max_age=600.0, mute=(nights(),))  # ten minutes, the night is ten hours
    target = dispatcher(store, webhook(hook.url, session, clock), clock, policy)
    async with delivering(target, grace=1.0):
        held = record(store, clock, "r1", "SUCCEEDED")
        await a_night(store, clock, target, held=1)
        # The first attempt after the window fails: the row is 10 hours old, but only its
        # unmuted seconds count towards max_age, so it is retried, then delivered.
        hook.fail_next = 1
        clock.set(MORNING)
        await until(lambda: hook.ids() == [held])
    assert hook.refused == 1
    assert store.dead_letters() == []


async def test_outside_its_windows_max_age_still_runs(
    hook: Hook, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    """The hold stops the age clock only while muted: a row failing all day is given up."""
    clock.set(MORNING)
    policy = Policy(max_age=600.0, mute=(nights(),))
    target = dispatcher(store, webhook(hook.url, session, clock), clock, policy)
    hook.fail_next = 1_000_000
    async with delivering(target, grace=1.0):
        record(store, clock, "r1", "SUCCEEDED")
        await until(lambda: hook.refused >= 1)
        clock.set(MORNING + timedelta(hours=2))
        await until(lambda: len(store.dead_letters()) == 1)


async def test_a_reload_brings_new_windows_to_a_running_dispatcher(
    hook: Hook, store: Store, clock: Clock, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """SIGHUP's path: settings loaded again, a NotifierSet built, replace_notifiers."""
    muted_text = "\n".join(
        [
            "[[mute_intervals]]",
            'name = "nights"',
            'times = [{start = "22:00", end = "08:00"}]',
            "[[notifiers]]",
            *(f"{key} = {json.dumps(value)}" for key, value in webhook_settings(hook.url).items()),
            'mute_intervals = ["nights"]',
            "",
        ]
    )
    path = config(tmp_path, muted_text)
    fresh = NotifierSet.build(load_settings(path, environ={}), session=session)
    target = Dispatcher(
        store=SqliteStore(store),
        notifiers=fresh.notifiers,
        policies=fresh.policies,
        clock=clock,
        logger=structlog.get_logger(),
        poll_interval=0.05,
    )
    metrics = Metrics()
    metrics.watch_muted(target.muted)
    async with delivering(target, grace=1.0):
        first = record(store, clock, "r1", "RUNNING")
        await a_night(store, clock, target, held=1)
        assert 'omics_watcher_deliveries_muted{notifier="hook"} 1.0' in metrics.render().decode()
        # The interval is removed from the notifier: what it held goes at once, mid-night.
        config(tmp_path, muted_text.replace('mute_intervals = ["nights"]\n', ""))
        fresh = NotifierSet.build(load_settings(path, environ={}), session=session)
        target.replace_notifiers(fresh.notifiers, fresh.policies)
        await until(lambda: hook.ids() == [first])
        assert 'omics_watcher_deliveries_muted{notifier="hook"} 0.0' in metrics.render().decode()
        # And back: the next event is held again.
        config(tmp_path, muted_text)
        fresh = NotifierSet.build(load_settings(path, environ={}), session=session)
        target.replace_notifiers(fresh.notifiers, fresh.policies)
        record(store, clock, "r1", "SUCCEEDED")
        await a_night(store, clock, target, held=1)
        assert hook.ids() == [first]
    assert len(store.pending_deliveries("hook")) == 1  # kept for the next start, not dropped


async def test_a_stop_inside_a_window_sends_nothing_and_keeps_every_row(
    hook: Hook, store: Store, clock: Clock, session: aiohttp.ClientSession
) -> None:
    target = dispatcher(store, webhook(hook.url, session, clock), clock, Policy(mute=(nights(),)))
    async with delivering(target, grace=1.0):
        for index in range(3):
            record(store, clock, f"r{index}", "SUCCEEDED")
        await a_night(store, clock, target, held=3)
    assert hook.bodies == []
    assert len(store.pending_deliveries("hook")) == 3
    assert store.dead_letters() == []


# ---- a running daemon: held until a SIGHUP lifts the window ------------------------------------


def muted_gauge(text: str) -> float | None:
    return find_sample(text, 'omics_watcher_deliveries_muted{notifier="hook"}')


def test_a_daemon_holds_a_muted_notifiers_events_until_a_sighup_lifts_the_window(
    tmp_path: Path, procs: Processes
) -> None:
    """Real time, so the window is one that is always open (no weekdays, no times)."""
    sim = start_simulator(
        procs, tmp_path / "sim", "--runs", "3", "--seed", "5", "--run-seconds", "3"
    )
    receiver = WebhookReceiver(SECRET).start()
    try:
        port = free_port()
        notifier = {**webhook_settings(receiver.url), "mute_intervals": ["always"]}
        settings = daemon_config(
            tmp_path, sim=sim, port=port, notifiers=[notifier], mute_intervals=[{"name": "always"}]
        )
        path = write_config(tmp_path / "watcher.toml", settings)
        env = clean_env(tmp_path)
        done = run_cli("track", "-c", str(path), *sim.runs, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        daemon = start_daemon(procs, path, port=port, env=env)
        daemon.wait_ready()

        def everything_held() -> float | None:
            runs = list_runs(path, env=env)
            text = daemon.metrics()
            held = muted_gauge(text)
            active = [r for r in runs if not r["terminal"]]
            # Every run finished (no event to come) and every pending row is held.
            if active or held is None or held < len(runs):
                return None
            return held if held == find_sample(text, "omics_watcher_outbox_pending") else None

        held = wait_for(everything_held, timeout=60, what="every run's events held")
        assert receiver.hits() == []
        assert [line["notifier"] for line in daemon.logs() if line["event"] == "notify_muted"]
        # The notifier no longer names the interval: SIGHUP releases what it held, at once.
        settings["notifiers"] = [webhook_settings(receiver.url)]
        write_config(path, settings)
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(receiver.accepted()) >= held, timeout=30, what="the held events")
        assert muted_gauge(daemon.metrics()) == 0.0
        assert all(hit.verified for hit in receiver.hits())
        assert len({hit.webhook_id for hit in receiver.accepted()}) == held
    finally:
        receiver.close()
