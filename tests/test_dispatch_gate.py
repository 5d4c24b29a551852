"""The dispatcher's send gate with an email notifier: a daemon without the lease sends no mail.

Replicas gate what leaves the daemon with :func:`watcher.replica.lease_gate`: the HTTP
session's trace hook awaits it, and the dispatcher awaits it right before every attempt, so
a notifier that does not use that session (email over SMTP) is held too. Here the real gate
reads a flag the test flips instead of a lease's clock, in front of a real dispatcher on a
real state file and a real SMTP server (aiosmtpd on 127.0.0.1): while "holding" the mail
arrives; once not, a newly due send reaches the gate and parks there (no SMTP connection,
the row stays pending with no attempt counted) until the dispatcher is cancelled, as a lost
lease cancels the term's work; the next holder then sends it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import structlog
from aiosmtpd.controller import Controller
from pydantic import TypeAdapter
from support import free_port, until

from watcher.delivery.dispatcher import Dispatcher
from watcher.events import Event, new_event_id
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.replica import Gate, lease_gate
from watcher.store import Store
from watcher.store.api import SqliteStore


@dataclass
class Mailbox:
    """What the SMTP server saw (its handler runs in the controller's own thread)."""

    port: int = 0
    greetings: int = 0  # EHLOs: a client began an SMTP session
    event_ids: list[str] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.greetings += 1
        session.host_name = hostname  # what aiosmtpd's own EHLO does before the hook
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.event_ids.append(str(mail["X-Omics-Watcher-Event"]))
        return "250 2.0.0 queued"


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Flag:
    """What the gate reads in place of ``LeaseClaim.holding``, and what it did."""

    holding: bool = True
    reached: int = 0  # sends that came to the gate
    parked_ended: int = 0  # parked sends that the cancellation ended

    def gate(self) -> Gate:
        real = lease_gate(lambda: self.holding)

        async def counted() -> None:
            self.reached += 1
            try:
                await real()
            except asyncio.CancelledError:
                self.parked_ended += 1
                raise

        return counted


def record(store: Store, run: str) -> str:
    now = datetime.now(UTC)
    event = Event(
        type="run.status_changed",
        id=new_event_id(now),
        timestamp=now,
        data={"run_uuid": run, "project_id": "prj-a", "status": "FAILED", "terminal": True},
    )
    assert store.record_event(event, notifiers=["mail"])
    return event.id


def mailer(
    store: Store, mailbox: Mailbox, session: aiohttp.ClientSession, flag: Flag
) -> Dispatcher:
    raw = {
        "name": "mail",
        "type": "email",
        "host": "127.0.0.1",
        "port": mailbox.port,
        "security": "none",
        "from_addr": "watcher@example.org",
        "to": ["oncall@example.org"],
    }
    settings = TypeAdapter(NotifierSettings).validate_python(raw)
    notifier = build_notifier(settings, session=session, logger=structlog.get_logger())
    return Dispatcher(
        store=SqliteStore(store),
        notifiers={"mail": notifier},
        logger=structlog.get_logger(),
        poll_interval=0.1,
        gate=flag.gate(),
    )


async def test_no_mail_begins_without_the_lease_and_the_row_stays_pending(
    store: Store, mailbox: Mailbox, session: aiohttp.ClientSession
) -> None:
    flag = Flag()
    dispatcher = mailer(store, mailbox, session, flag)
    running = asyncio.create_task(dispatcher.run())
    try:
        first = record(store, "run-1")
        dispatcher.notify()
        await until(lambda: mailbox.event_ids == [first])
        await until(lambda: store.pending_deliveries("mail") == [])
        greeted = mailbox.greetings

        flag.holding = False  # the lease's local deadline passed; the term is not cancelled yet
        second = record(store, "run-2")
        dispatcher.notify()
        await asyncio.sleep(2.0)  # time enough for an SMTP exchange on 127.0.0.1
        assert mailbox.event_ids == [first]
        assert mailbox.greetings == greeted  # not even a connection
        await until(lambda: flag.reached == 2)  # yet the send was due: it came to the gate
        (row,) = store.pending_deliveries("mail")
        assert (row.event.id, row.attempts, row.last_error) == (second, 0, None)
        assert not running.done()
    finally:
        running.cancel()  # what a lost lease does to the term's work
        with pytest.raises(asyncio.CancelledError):
            await running
    assert flag.parked_ended == 1  # the parked send ended with the dispatcher
    (row,) = store.pending_deliveries("mail")
    assert (row.event.id, row.attempts) == (second, 0)  # a cancelled send counts for nothing
    assert mailbox.event_ids == [first]

    # The next holder (here the same file, holding again) sends it: at least once.
    flag.holding = True
    again = mailer(store, mailbox, session, flag)
    resumed = asyncio.create_task(again.run())
    try:
        await until(lambda: mailbox.event_ids == [first, second])
        await until(lambda: store.pending_deliveries("mail") == [])
    finally:
        await again.stop(asyncio.get_running_loop().time() + 1.0)
        await resumed
