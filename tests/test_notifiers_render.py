"""Message content: default rendering per event type, user templates, and size fitting.

No network: payloads are built by the real notifiers and checked against each destination's
documented limits, including with a 1 MB error message and a 1 MB stderr tail.
"""

from __future__ import annotations

import email.policy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from pydantic import TypeAdapter

from watcher.config import ConfigError, load_settings
from watcher.delivery.digest import digest_event
from watcher.events import Event
from watcher.notifiers import discord, slack
from watcher.notifiers.common import json_bytes
from watcher.notifiers.fitting import fit
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.notifiers.render import (
    Message,
    clip,
    clip_bytes,
    first_line,
    format_duration,
    message_for,
)
from watcher.statuses import DEFAULT_TERMINAL, Statuses, StatusOptions

RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
PROJECT = "prj-peaceful-pink-bird-631828"
URL = "https://hooks.example.org/hook/TOKEN1234567890?key=KEY1234567890"


def event(
    *,
    type_: str = "run.status_changed",
    status: str | None = "EXECUTOR_ERROR",
    previous: str | None = "RUNNING",
    failure: dict[str, str] | None = None,
    **extra: Any,
) -> Event:
    data: dict[str, Any] = {
        "run_uuid": RUN,
        "project_id": PROJECT,
        "previous_status": previous,
        "status": status,
        "terminal": status in ("SUCCESS", "EXECUTOR_ERROR"),
        "observed_at": "2026-11-27T10:00:00.120Z",
        "labels": {"team": "genomics"},
        "metadata": {"Status": status, "StartTime": "2026-11-27T08:58:00Z"},
        "failure": failure,
        **extra,
    }
    return Event(
        type=type_,
        id="evt_01JRENDER00000000000000000",
        timestamp=datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC),
        data=data,
    )


def notifier(raw: dict[str, Any], session: aiohttp.ClientSession) -> Any:
    settings = TypeAdapter(NotifierSettings).validate_python(raw)
    return build_notifier(settings, session=session, logger=structlog.get_logger())


# ---- default content ------------------------------------------------------------------------


def test_status_change_title_and_status_line() -> None:
    message = message_for(event(status="SUCCESS", failure=None))
    assert message.title == f"✅ SUCCESS · run 84232c68 · {PROJECT}"
    assert message.summary == "RUNNING → SUCCESS"
    assert message.severity == "success"
    facts = dict(message.facts)
    assert facts["Run"] == RUN
    assert facts["Duration"] == "1h 02m 00s"  # StartTime → observed_at (no EndTime yet)
    assert facts["Labels"] == "team=genomics"
    assert message.failure is None


def test_first_observation_and_unknown_status() -> None:
    message = message_for(event(status="WEIRD_NEW", previous=None))
    assert message.summary == "new → WEIRD_NEW"
    assert message.severity == "info"


def test_failure_details_and_error_message_fallback() -> None:
    failure = {"task": "align", "message": "boom\nmore", "stderr_tail": "Killed"}
    message = message_for(event(failure=failure))
    assert message.title.startswith("❌ EXECUTOR_ERROR")
    assert message.failure is not None
    assert message.failure.task == "align"
    assert message.failure.stderr_tail == "Killed"
    only_metadata = event(failure=None, metadata={"Status": "FAILED", "ErrorMessage": "quota"})
    fallback = message_for(only_metadata)
    assert fallback.failure is not None
    assert fallback.failure.message == "quota"


def test_stuck_not_found_and_unknown_types() -> None:
    stuck = message_for(
        event(type_="run.stuck", status="QUEUED", since="2026-11-27T08:00:00Z", stuck_seconds=7200)
    )
    assert stuck.title == f"⏰ STUCK in QUEUED · run 84232c68 · {PROJECT}"
    assert dict(stuck.facts)["Stuck for"] == "2h 00m 00s"
    gone = message_for(event(type_="run.not_found", status=None))
    assert gone.title.startswith("❓ NOT FOUND")
    assert "no longer polled" in gone.note
    other = message_for(event(type_="run.digest", status=None, count=7))
    assert other.title.startswith("🔄 run.digest")
    assert dict(other.facts)["count"] == "7"


async def test_renderers_ask_the_configured_vocabulary() -> None:
    """Configured success names render ✅; PREEMPTED and an unknown terminal status ⚠️.

    Through a real notifier built with the daemon's vocabulary, and in a digest.
    """
    statuses = Statuses(
        StatusOptions(terminal=frozenset(DEFAULT_TERMINAL) | {"SUCCEEDED", "COMPLETED", "ABORTED"})
    )
    cases = {
        "SUCCEEDED": ("success", "✅"),
        "COMPLETED": ("success", "✅"),
        "PREEMPTED": ("warning", "⚠️"),
        "ABORTED": ("warning", "⚠️"),  # terminal, but the watcher cannot tell how it ended
        "EXECUTOR_ERROR": ("failure", "❌"),
    }
    events = []
    async with aiohttp.ClientSession() as session:
        settings = TypeAdapter(NotifierSettings).validate_python(
            {"name": "s", "type": "slack", "url": URL}
        )
        slack_hook = build_notifier(
            settings, session=session, logger=structlog.get_logger(), statuses=statuses
        )
        assert isinstance(slack_hook, slack.SlackNotifier)
        for index, (status, (severity, emoji)) in enumerate(cases.items()):
            changed = event(status=status, failure=None, terminal=True)
            changed = Event(
                changed.type,
                f"evt_{index}",
                changed.timestamp,
                {**changed.data, "run_uuid": f"{index:08d}-run"},
            )
            events.append(changed)
            message = message_for(changed, statuses)
            assert (message.severity, message.title.split()[0]) == (severity, emoji), status
            assert statuses.is_failing(status) is (severity == "failure")
            assert f"{emoji} {status}" in json.dumps(
                slack_hook.payload(changed), ensure_ascii=False
            )
    # The same vocabulary counts them in a digest: 2 ✅, 1 ❌, 2 other.
    digest = message_for(
        digest_event(events, group_by="none", group="", progress=None, statuses=statuses),
        statuses,
    )
    assert "2 ✅ 1 ❌ 2 ⚠️" in digest.title, digest.title
    # Unknown and not terminal: still in progress.
    assert Statuses().severity("PAUSED_BY_ADMIN") == "info"


def test_helpers() -> None:
    assert clip("abcdef", 4) == "abc…"
    assert clip("abcdef", 4, keep_end=True) == "…def"
    assert clip_bytes("汉字汉字", 9) == "汉字…"  # 6 bytes + 3-byte ellipsis, no split character
    assert first_line("one\ntwo") == "one …"
    assert format_duration(59) == "59s"
    assert format_duration(3 * 86400 + 3600 + 60) == "3d 1h 01m"


# ---- fitting --------------------------------------------------------------------------------

HUGE = "x" * 1_000_000
CHINESE = "错误" * 300_000  # 1.8 MB of 3-byte characters


@pytest.mark.parametrize(
    "failure",
    [
        {"task": "t", "message": "exit 137: out of memory\n" + HUGE, "stderr_tail": HUGE},
        {"task": "t" * 5000, "message": HUGE, "stderr_tail": CHINESE},
        {"task": "t", "message": CHINESE, "stderr_tail": ""},
    ],
    ids=["long-tail", "one-huge-line", "utf8"],
)
async def test_a_megabyte_error_fits_every_destination(failure: dict[str, str]) -> None:
    big = event(failure=failure)
    title = f"❌ EXECUTOR_ERROR · run 84232c68 · {PROJECT}"
    async with aiohttp.ClientSession() as session:
        payload = notifier({"name": "s", "type": "slack", "url": URL}, session).payload(big)
        assert slack.fits(payload)
        assert payload["blocks"][0]["text"]["text"] == title
        assert payload["blocks"][1]["text"]["text"] == "*RUNNING → EXECUTOR_ERROR*"

        payload = notifier({"name": "d", "type": "discord", "url": URL}, session).payload(big)
        embed = payload["embeds"][0]
        assert discord.embed_size(embed) <= 6000
        assert len(embed["description"]) <= 4096
        assert embed["title"] == title
        assert embed["description"].startswith("**RUNNING → EXECUTOR_ERROR**")

        raw: dict[str, Any]
        for msgtype, limit in (("markdown", 4096), ("text", 2048)):
            raw = {"name": "w", "type": "wecom", "url": URL, "msgtype": msgtype}
            payload = notifier(raw, session).payload(big)
            content = payload[msgtype]["content"]
            assert len(content.encode()) <= limit
            assert title in content
            assert "EXECUTOR_ERROR" in content.split("\n")[1]

        for kind, limit in (("dingtalk", 20_000), ("feishu", 20_000), ("teams", 28_000)):
            raw = {"name": "c", "type": kind, "url": URL}
            payload = notifier(raw, session).payload(big)
            text = json.dumps(payload, ensure_ascii=False)
            assert len(json_bytes(payload)) <= limit
            assert title in text
            assert "RUNNING → EXECUTOR_ERROR" in text

        raw = {"name": "m", "type": "email", "host": "h", "from_addr": "a@b.c", "to": ["d@e.f"]}
        mail = notifier(raw, session).message(big)
        assert len(mail.as_bytes(policy=email.policy.SMTP)) < 512 * 1024
        assert title in str(mail["Subject"])


async def test_first_line_of_the_error_survives_when_it_can() -> None:
    failure = {"task": "align", "message": "exit 137: out of memory\n" + HUGE, "stderr_tail": HUGE}
    async with aiohttp.ClientSession() as session:
        raw = {"name": "w", "type": "wecom", "url": URL}
        content = notifier(raw, session).payload(event(failure=failure))["markdown"]["content"]
    assert "exit 137: out of memory …" in content
    assert "xxxxxxxxxx" not in content  # the rest of the message and the stderr were cut


def test_fit_keeps_title_and_summary_even_when_nothing_else_fits() -> None:
    message = message_for(event(failure={"message": HUGE}))
    result = fit(message, lambda m: m, lambda m: False)
    assert isinstance(result, Message)
    assert result.title == message.title
    assert result.summary == message.summary
    assert result.failure is None
    assert result.facts == ()


# ---- templates ------------------------------------------------------------------------------


async def test_templates_render_with_the_documented_names() -> None:
    raw = {
        "name": "s",
        "type": "slack",
        "url": URL,
        "title_template": "{{ status }} for {{ run }} ({{ labels.team }})",
        "body_template": "{{ previous_status }} → {{ status }}; task {{ failure.task }}",
    }
    async with aiohttp.ClientSession() as session:
        payload = notifier(raw, session).payload(event(failure={"task": "align", "message": "m"}))
    assert payload["blocks"][0]["text"]["text"] == "EXECUTOR_ERROR for 84232c68 (genomics)"
    assert payload["blocks"][1]["text"]["text"] == "RUNNING → EXECUTOR_ERROR; task align"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ event.__class__ }}",
        "{{ no_such_name }}",
        "{{ failure.task }}",  # failure is None for a success: StrictUndefined
    ],
)
async def test_template_failures_fall_back_to_the_default_and_log(template: str) -> None:
    raw = {"name": "d", "type": "discord", "url": URL, "body_template": template}
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            payload = notifier(raw, session).payload(event(status="SUCCESS"))
    assert payload["embeds"][0]["description"].startswith("**RUNNING → SUCCESS**")
    assert "object" not in payload["embeds"][0]["description"]
    (line,) = [entry for entry in logs if entry["event"] == "notify_template_failed"]
    assert line["notifier"] == "d"
    assert line["template"] == "body_template"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{{ status | no_such_filter }}", "no filter 'no_such_filter'"),
        ("{% if terminal %}{{ status | nope }}{% endif %}", "no filter 'nope'"),
        ("{% if status is nope %}x{% endif %}", "no test 'nope'"),
        ("{{ status ", "invalid template (line 1)"),
    ],
)
def test_broken_template_is_a_config_error_naming_the_key(
    template: str, problem: str, tmp_path: Path
) -> None:
    config = tmp_path / "omics-watcher.toml"
    config.write_text(
        f"""
[[notifiers]]
name = "a"
type = "log"

[[notifiers]]
name = "b"
type = "slack"
url = "{URL}"

[[notifiers]]
name = "c"
type = "discord"
url = "{URL}"
body_template = {json.dumps(template)}
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(str(config), environ={})
    (line,) = caught.value.problems
    assert line.startswith("notifiers[2].body_template: ")
    assert problem in line
    assert "TOKEN1234567890" not in line


async def test_email_html_autoescapes_template_values() -> None:
    raw = {
        "name": "m",
        "type": "email",
        "host": "smtp.example.org",
        "from_addr": "a@example.org",
        "to": ["b@example.org"],
        "body_template": "<b>{{ failure.message }}</b>",
    }
    evil = event(failure={"message": "<script>alert(1)</script>"})
    async with aiohttp.ClientSession() as session:
        mail = notifier(raw, session).message(evil)
    html = mail.get_body(("html",))
    text = mail.get_body(("plain",))
    assert html is not None
    assert text is not None
    assert "<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>" in html.get_content()
    assert "<script>" not in html.get_content()
    assert "<b><script>alert(1)</script></b>" in text.get_content()


async def test_webhook_body_template_replaces_the_body() -> None:
    raw = {
        "name": "w",
        "type": "webhook",
        "url": "https://example.org/in",
        "body_template": '{"text": {{ (status ~ " " ~ run) | tojson }}}',
    }
    async with aiohttp.ClientSession() as session:
        body = notifier(raw, session).body(event(status="SUCCESS"))
    assert json.loads(body) == {"text": "SUCCESS 84232c68"}
