"""Render example notifications into this folder: what each destination receives.

For a failed run (with failure details) and a successful one, writes the exact JSON body each
chat notifier posts (``<kind>-<case>.json``), the webhook body (the event itself), and the
email's text and HTML parts (``email-<case>.txt`` / ``.html``). No secrets are configured, so
the DingTalk/Feishu signing fields are absent; see those modules for their form.

Usage (from the repository root)::

    .venv/bin/python docs/examples/render.py
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from pydantic import TypeAdapter

from watcher.events import Event
from watcher.notifiers.registry import NotifierSettings, build_notifier

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


def write(name: str, text: str) -> None:
    (HERE / name).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    print(f"wrote docs/examples/{name}")


async def main() -> None:
    logger = structlog.get_logger()
    async with aiohttp.ClientSession() as session:
        for case, event in CASES.items():
            for kind in CHAT_KINDS:
                notifier: Any = build_notifier(
                    settings(kind), session=session, logger=logger, clock=lambda: WHEN
                )
                body = json.dumps(notifier.payload(event), ensure_ascii=False, indent=2)
                write(f"{kind}-{case}.json", body)
            write(f"webhook-{case}.json", json.dumps(event.to_dict(), ensure_ascii=False, indent=2))
            mailer: Any = build_notifier(
                settings("email"), session=session, logger=logger, clock=lambda: WHEN
            )
            mail = mailer.message(event)
            text, html = mail.get_body(("plain",)), mail.get_body(("html",))
            write(f"email-{case}.txt", f"Subject: {mail['Subject']}\n\n{text.get_content()}")
            write(f"email-{case}.html", html.get_content())


if __name__ == "__main__":
    asyncio.run(main())
