"""The notifier set: notifiers, their delivery policies and the routes, replaced as one.

:class:`NotifierSet` is built from the settings at start and again on SIGHUP;
:class:`LiveNotifiers` holds the one in force, so the event sink's routes and the roll-up
targets read the current set at each event without a variable rebound in a closure.
Pending deliveries of a notifier that a reload removed can never be sent:
:func:`forget_removed_notifiers` dead-letters them, loudly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from watcher.config import Settings
from watcher.delivery.dispatcher import Policy
from watcher.events import Event
from watcher.notifiers.base import Notifier
from watcher.notifiers.common import NotifierBase
from watcher.notifiers.log import LogSettings
from watcher.notifiers.registry import build_notifier
from watcher.options import delivery_policy, mute_intervals, status_vocabulary
from watcher.routing import RouteSettings, select
from watcher.store.api import AsyncStore


def notifier_settings(settings: Settings) -> list[NotifierBase]:
    """The configured notifiers; with none, an implied ``log`` notifier."""
    if settings.notifiers:
        return list(settings.notifiers)
    return [LogSettings(name="log", type="log")]


@dataclass
class NotifierSet:
    """Notifiers, their delivery policies and the routes: what SIGHUP replaces as one."""

    notifiers: dict[str, Notifier]
    policies: dict[str, Policy]
    routes: list[RouteSettings]
    rollups: frozenset[str] = frozenset()  # notifiers with rollup = true

    @classmethod
    def build(cls, settings: Settings, *, session: aiohttp.ClientSession) -> NotifierSet:
        logger = structlog.get_logger("watcher.notify")
        configured = notifier_settings(settings)
        statuses = status_vocabulary(settings)
        intervals = mute_intervals(settings)  # per notifier in its policy
        return cls(
            notifiers={
                n.name: build_notifier(
                    n, session=session, logger=logger.bind(notifier=n.name), statuses=statuses
                )
                for n in configured
            },
            policies={n.name: delivery_policy(n, intervals) for n in configured},
            routes=list(settings.routes),
            rollups=frozenset(n.name for n in configured if n.rollup),
        )

    def route(self, event: Event) -> list[str]:
        return select(event, self.routes, self.notifiers)


class LiveNotifiers:
    """The notifier set in force: what routing reads at each event and SIGHUP replaces.

    One holder instead of a variable rebound in a closure, so every reader (the event
    sink's routes, the roll-up targets) sees a reload at its next event.
    """

    def __init__(self, current: NotifierSet) -> None:
        self._current = current

    @property
    def current(self) -> NotifierSet:
        return self._current

    def route(self, event: Event) -> list[str]:
        return self._current.route(event)

    def rollup_targets(self) -> frozenset[str]:
        return self._current.rollups

    def replace(self, fresh: NotifierSet) -> None:
        self._current = fresh


async def forget_removed_notifiers(store: AsyncStore, current: NotifierSet, log: Any) -> None:
    """Rows for notifiers no longer configured can never be sent: dead-letter them, loudly."""
    dropped = await store.dead_letter_removed_notifiers(known_notifiers=set(current.notifiers))
    if dropped:
        log.warning("deliveries_dead_lettered", count=len(dropped), reason="notifier removed")
