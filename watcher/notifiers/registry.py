"""The notifier kinds this build knows, and the configuration union built from them.

Adding a kind is its module (settings model, notifier class, ``KIND``) plus one line in
:data:`KINDS`. :data:`NotifierSettings` is the discriminated union (on ``type``) of every
kind's settings model, derived from :data:`KINDS` so the two cannot drift apart; for type
checkers it is the shared base model, which is what code outside this package relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Union

import aiohttp
from pydantic import Field
from structlog.typing import FilteringBoundLogger

from watcher.notifiers import dingtalk, discord, email, feishu, log, slack, teams, webhook, wecom
from watcher.notifiers.base import Notifier, Rate, rate_per_minute
from watcher.notifiers.common import Deps, Kind, NotifierBase
from watcher.statuses import DEFAULT_STATUSES, Statuses

KINDS: Mapping[str, Kind[Any]] = MappingProxyType(
    {
        "log": log.KIND,
        "webhook": webhook.KIND,
        "slack": slack.KIND,
        "wecom": wecom.KIND,
        "dingtalk": dingtalk.KIND,
        "feishu": feishu.KIND,
        "lark": feishu.KIND,
        "teams": teams.KIND,
        "discord": discord.KIND,
        "email": email.KIND,
    }
)

if TYPE_CHECKING:
    NotifierSettings = NotifierBase
else:
    NotifierSettings = Annotated[
        Union[tuple(dict.fromkeys(kind.settings for kind in KINDS.values()))],  # noqa: UP007
        Field(discriminator="type"),
    ]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def build_notifier(
    settings: NotifierBase,
    *,
    session: aiohttp.ClientSession,
    logger: FilteringBoundLogger,
    clock: Callable[[], datetime] = _utc_now,
    statuses: Statuses = DEFAULT_STATUSES,
) -> Notifier:
    """The notifier ``settings`` describe, sharing ``session``; no I/O happens here.

    ``statuses`` is the daemon's vocabulary (``watcher.options.statuses``); the default is
    that of the default configuration.
    """
    kind = KINDS[settings.type]
    if not isinstance(settings, kind.settings):
        raise TypeError(f"{type(settings).__name__} is not the settings of kind {settings.type!r}")
    deps = Deps(session=session, logger=logger, clock=clock, statuses=statuses)
    return kind.build(settings, deps)


def rates_for(settings: NotifierBase) -> tuple[Rate, ...]:
    """The pace the dispatcher keeps for this notifier: the user's override or the kind's."""
    if settings.rate_per_minute is not None:
        return rate_per_minute(settings.rate_per_minute)
    return KINDS[settings.type].rates
