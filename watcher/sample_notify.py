"""``omics-watcher test-notify``: one realistic sample event through one notifier.

The same notifier object and retry rules as the daemon (:func:`watcher.delivery.retry.send_now`),
without a state file: nothing is recorded, so a test message never reaches the outbox.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from watcher.config import Settings
from watcher.connect import http_session
from watcher.events import Event
from watcher.notifier_set import notifier_settings
from watcher.notifiers.registry import build_notifier
from watcher.options import status_vocabulary


def sample_event(now: datetime) -> Event:
    """A realistic failed-run event for ``test-notify``: every field a template may use."""
    from watcher.events import isoformat_z, new_event_id

    run_uuid = "84232c68-a016-4668-b2e3-168a175d6f29"
    return Event(
        type="run.status_changed",
        id=new_event_id(now),
        timestamp=now,
        data={
            "run_uuid": run_uuid,
            "project_id": "prj-peaceful-pink-bird-631828",
            "previous_status": "RUNNING",
            "status": "EXECUTOR_ERROR",
            "terminal": True,
            "observed_at": isoformat_z(now),
            "labels": {"source": "omics-watcher test-notify"},
            "metadata": {
                "RunId": run_uuid,
                "RunType": "Workflow",
                "CallName": "main_workflow",
                "Status": "EXECUTOR_ERROR",
                "SubmitTime": "2026-11-27T10:00:00+08:00",
                "StartTime": "2026-11-27T10:00:05+08:00",
                "EndTime": "2026-11-27T11:42:10+08:00",
                "ErrorMessage": '[{"message": "Task main_workflow.align:0:1 failed"}]',
            },
            "failure": {
                "task": "main_workflow.align",
                "message": "Task main_workflow.align:0:1 failed: exit code 137",
                "stderr_tail": "bwa mem: out of memory\nKilled",
            },
        },
    )


async def send_test_notification(settings: Settings, name: str, *, stop: asyncio.Event) -> int:
    """``omics-watcher test-notify NAME``: one sample event through one notifier, with retries.

    Returns 0 once delivered, 1 when the notifier refused it or retries ran out (the reason
    is logged as ``test_notify_failed``).
    """
    from watcher.delivery.retry import send_now
    from watcher.notifiers.base import NotifyError

    log = structlog.get_logger("watcher.test_notify")
    chosen = next(n for n in notifier_settings(settings) if n.name == name)
    loop = asyncio.get_running_loop()
    async with http_session() as session:
        notifier = build_notifier(
            chosen,
            session=session,
            logger=log.bind(notifier=name),
            statuses=status_vocabulary(settings),
        )
        event = sample_event(datetime.now(UTC))
        sending = asyncio.ensure_future(
            send_now(
                notifier,
                event,
                deadline=loop.time() + 60,
                time_limit=chosen.timeout_seconds,
            )
        )
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({sending, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not sending.done():
            sending.cancel()
            return 1
        try:
            attempts = sending.result()
        except NotifyError as exc:
            log.error("test_notify_failed", notifier=name, reason=str(exc))
            return 1
    log.info("test_notify_delivered", notifier=name, event_id=event.id, attempts=attempts)
    return 0
