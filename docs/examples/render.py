"""Render example notifications into this folder: what each destination receives.

For a failed run (with failure details), a successful one, a digest (twelve updates of a run
group folded into one message by a notifier with ``digest = {...}``) and a run group's final
roll-up (``rollup = true``), writes the exact JSON body each chat notifier posts
(``<kind>-<case>.json``), the webhook body (the event itself), the email's text and HTML parts
(``email-<case>.txt`` / ``.html``), and ``README.md``, which shows them all. The digest and
the roll-up are made by the same code the daemon runs (``watcher.delivery.digest.digest_event``,
and ``watcher.rollup.RollupTracker`` over an in-memory state file, its runs recorded through
``watcher.sink.EventSink``). No secrets are configured, so the DingTalk/Feishu signing fields
are absent; see those modules for their form.

Usage (from the repository root)::

    .venv/bin/python docs/examples/render.py
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from pydantic import TypeAdapter

from watcher.delivery.digest import Progress, digest_event
from watcher.events import RUN_GROUP_LABEL, Event, RunState, isoformat_z
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.rollup import RollupTracker
from watcher.sink import EventSink
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.transitions import detect

HERE = Path(__file__).parent
WHEN = datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC)
CHAT_KINDS = ["slack", "wecom", "dingtalk", "feishu", "teams", "discord"]

BASE = {
    "run_uuid": "84232c68-a016-4668-b2e3-168a175d6f29",
    "project_id": "prj-peaceful-pink-bird-631828",
    "previous_status": "RUNNING",
    "terminal": True,
    "observed_at": "2026-11-27T10:00:00.120Z",
    "labels": {"team": "genomics", "pipeline": "wgs-germline"},
}

CASES = {
    "failed": Event(
        type="run.status_changed",
        id="evt_01M8F0000000000000000FAIL1",
        timestamp=WHEN,
        data={
            **BASE,
            "status": "EXECUTOR_ERROR",
            "metadata": {
                "RunId": "run-kx7q2m",
                "Status": "EXECUTOR_ERROR",
                "StartTime": "2026-11-27T07:41:12Z",
                "EndTime": "2026-11-27T09:59:58Z",
                "ErrorMessage": "Workflow failed",
            },
            "failure": {
                "task": "germline.align_reads (shard 7)",
                "message": "Command exited with non-zero status 137\n"
                "The task was killed: out of memory (limit 16 GiB)",
                "stderr_tail": "[M::bwa_idx_load_from_disk] read 0 ALT contigs\n"
                "[M::process] read 1048576 sequences (104857600 bp)...\n"
                "Killed",
            },
        },
    ),
    "success": Event(
        type="run.status_changed",
        id="evt_01M8F00000000000000000OK01",
        timestamp=WHEN,
        data={
            **BASE,
            "status": "SUCCESS",
            "metadata": {
                "RunId": "run-kx7q2m",
                "Status": "SUCCESS",
                "StartTime": "2026-11-27T07:41:12Z",
                "EndTime": "2026-11-27T09:59:58Z",
            },
            "failure": None,
        },
    ),
}


GROUP = "rg-wgs-batch-17"
PROJECT = str(BASE["project_id"])
TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "CANCELED"})
OOM = {
    "task": "germline.align_reads (shard 3)",
    "message": "Command exited with non-zero status 137\nThe task was killed: out of memory",
    "stderr_tail": "Killed",
}
DISK = {
    "task": "germline.haplotype_caller (shard 11)",
    "message": "No space left on device: /cromwell_root/tmp",
    "stderr_tail": "java.io.IOException: No space left on device",
}


def group_runs(count: int) -> list[str]:
    """Stable run UUIDs for the examples."""
    draw = random.Random(17)
    return [str(uuid.UUID(int=draw.getrandbits(128), version=4)) for _ in range(count)]


def group_event(run: str, index: int, previous: str, status: str, failure: Any = None) -> Event:
    moment = WHEN + timedelta(seconds=index)
    return Event(
        type="run.status_changed",
        id=f"evt_01M8F00000000000000000{index:04d}",
        timestamp=moment,
        data={
            "run_uuid": run,
            "project_id": PROJECT,
            "previous_status": previous,
            "status": status,
            "terminal": status in TERMINAL,
            "observed_at": isoformat_z(moment),
            "labels": {RUN_GROUP_LABEL: GROUP, "team": "genomics"},
            "metadata": {"RunId": run, "Status": status},
            "failure": failure,
        },
    )


def digest_case() -> Event:
    """Twelve updates of a 40-run group: 9 finished well, 2 failed, 1 started running."""
    runs = group_runs(40)
    events = [group_event(run, i, "RUNNING", "SUCCESS") for i, run in enumerate(runs[:9])]
    events.append(group_event(runs[9], 9, "RUNNING", "EXECUTOR_ERROR", OOM))
    events.append(group_event(runs[10], 10, "RUNNING", "EXECUTOR_ERROR", DISK))
    events.append(group_event(runs[11], 11, "INITIALIZING", "RUNNING"))
    progress = Progress(total=40, finished=37, succeeded=35, failed=2, other=0, running=3)
    return digest_event(events, group_by="run_group", group=GROUP, progress=progress)


async def rollup_case() -> Event:
    """The roll-up RollupTracker records once all 40 runs of the group finished."""
    with Store.open(":memory:", clock=lambda: WHEN) as store:
        state = SqliteStore(store)
        sink = EventSink(store=state, route=lambda event: ["example"])
        runs = group_runs(40)
        labels = {RUN_GROUP_LABEL: GROUP, "team": "genomics"}
        store.track(TrackRequest(run, PROJECT, labels) for run in runs)
        for index, run in enumerate(runs):
            status, failure = "SUCCESS", None
            if index in (9, 10):
                status, failure = "EXECUTOR_ERROR", OOM if index == 9 else DISK
            elif index == 20:
                status = "CANCELED"
            before = RunState(run, PROJECT, None, WHEN)
            after = RunState(run, PROJECT, status, WHEN, labels=labels)
            event = detect(before, after, terminal=TERMINAL)
            assert event is not None
            if failure is not None:
                event = Event(
                    event.type, event.id, event.timestamp, {**event.data, "failure": failure}
                )
            assert await sink.emit(event, observed=after)
        tracker = RollupTracker(
            store=state,
            sink=sink,
            targets=lambda: {"example"},
            clock=lambda: WHEN,
        )
        rollup = await tracker.check(GROUP)
        assert rollup is not None
        return rollup


def settings(kind: str) -> Any:
    raw: dict[str, Any] = {"name": f"example-{kind}", "type": kind}
    if kind == "email":
        raw |= {
            "host": "smtp.example.org",
            "from_addr": "omics-watcher@example.org",
            "to": ["oncall@example.org"],
        }
    else:
        raw["url"] = "https://hooks.example.org/redacted"
    return TypeAdapter(NotifierSettings).validate_python(raw)


def write(out: Path, name: str, text: str) -> None:
    (out / name).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    print(f"wrote {out / name}")


async def main(out: Path) -> None:
    logger = structlog.get_logger()
    cases = {**CASES, "digest": digest_case(), "rollup": await rollup_case()}
    async with aiohttp.ClientSession() as session:
        for case, event in cases.items():
            for kind in CHAT_KINDS:
                notifier: Any = build_notifier(
                    settings(kind), session=session, logger=logger, clock=lambda: WHEN
                )
                body = json.dumps(notifier.payload(event), ensure_ascii=False, indent=2)
                write(out, f"{kind}-{case}.json", body)
            write(
                out,
                f"webhook-{case}.json",
                json.dumps(event.to_dict(), ensure_ascii=False, indent=2),
            )
            mailer: Any = build_notifier(
                settings("email"), session=session, logger=logger, clock=lambda: WHEN
            )
            mail = mailer.message(event)
            text, html = mail.get_body(("plain",)), mail.get_body(("html",))
            write(out, f"email-{case}.txt", f"Subject: {mail['Subject']}\n\n{text.get_content()}")
            write(out, f"email-{case}.html", html.get_content())
    write(out, "README.md", readme(out, list(cases)))


TITLES = {
    "failed": "A failed run (with the failure details enrichment found)",
    "success": "A successful run",
    "digest": "A digest: twelve updates of run group rg-wgs-batch-17 in one message",
    "rollup": "The roll-up: every run of the group has finished",
}
KIND_NAMES = {
    "wecom": "WeCom (企业微信) group robot",
    "dingtalk": "DingTalk (钉钉) custom robot",
    "feishu": "Feishu / Lark custom bot",
    "slack": "Slack incoming webhook",
    "teams": "Microsoft Teams (Workflows)",
    "discord": "Discord webhook",
}


def _fenced(lang: str, text: str) -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


def readme(out: Path, cases: list[str]) -> str:
    """docs/examples/README.md: every example, readable text first, exact bodies folded."""
    parts = [
        "# What each destination receives",
        "",
        "Rendered by [`render.py`](render.py) from the code the daemon runs "
        "(`.venv/bin/python docs/examples/render.py` regenerates every file here, this one "
        "included). Each chat body is exactly what is POSTed; the webhook body is the event "
        "JSON described in [the README](../../README.md#events); email is sent as text plus HTML.",
        "",
        "Digests and roll-ups are opt-in per notifier:",
        "",
        _fenced(
            "toml",
            "[[notifiers]]\n"
            'name = "lab-wecom"\n'
            'type = "wecom"\n'
            'url_file = "/run/secrets/wecom-url"\n'
            "rollup = true                  # one run_group.completed message per group\n"
            'digest = { window_seconds = 60, group_by = "run_group", max_items = 50 }',
        ),
        "",
        "A run's group is its `run_group` label (`omics-watcher track --label "
        "run_group=rg-... RUN_UUID...`, `POST /v1/runs`, or a `[[watch]]` entry's labels).",
        "",
        "With `digest`, events of one group that arrive within `window_seconds` of the first, "
        "or that queue behind the destination's rate limit, go out as one message of at most "
        "`max_items` events; a group of one event is sent as that event. The title is where "
        "the group stands now (from the registry), the bold line what this message carries; "
        "failed runs are listed with their failure, the others by short id, and a list that "
        "would not fit ends in `+K more` while its label still counts every run. A webhook "
        'notifier with `digest` receives a `type: "digest"` event whose `data.event_ids` '
        "and `data.events` are the folded events in order (deduplicate on those ids; the "
        "digest's own `id` is derived from them), `data.counts` and `data.progress` the "
        "numbers; without `digest`, webhooks stay one request per event. The roll-up is a "
        "`run_group.completed` event (`data.run_group`, `data.progress`, `data.runs`), "
        'recorded once per group; routes select it by `types = ["run_group.completed"]` '
        "or labels, not by `statuses`.",
        "",
    ]
    for case in cases:
        parts += [f"## {TITLES[case]}", ""]
        wecom = json.loads((out / f"wecom-{case}.json").read_text(encoding="utf-8"))
        parts += [
            "WeCom markdown (`msgtype: markdown`), as its content reads:",
            "",
            _fenced("markdown", wecom["markdown"]["content"]),
            "",
            f"Email (plain-text part; the HTML part is [`email-{case}.html`](email-{case}.html)):",
            "",
            _fenced("text", (out / f"email-{case}.txt").read_text(encoding="utf-8")),
            "",
        ]
        for kind in CHAT_KINDS:
            body = (out / f"{kind}-{case}.json").read_text(encoding="utf-8")
            parts += [
                f"<details><summary>{KIND_NAMES[kind]}: <code>{kind}-{case}.json</code></summary>",
                "",
                _fenced("json", body),
                "",
                "</details>",
                "",
            ]
        body = (out / f"webhook-{case}.json").read_text(encoding="utf-8")
        parts += [
            f"<details><summary>Generic webhook: <code>webhook-{case}.json</code></summary>",
            "",
            _fenced("json", body),
            "",
            "</details>",
            "",
        ]
    return "\n".join(parts)


if __name__ == "__main__":
    # Optional argument: another folder (the tests render there and compare with this one).
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
