"""What every notifier kind shares: its settings base model, its build dependencies and its
descriptor in the registry.

Settings are frozen pydantic models that forbid unknown keys; templates are compiled while the
configuration is validated, so a broken one is a config error naming its key. Secrets are
``SecretStr`` (``check-config`` prints ``***``); a chat URL that is itself the credential is
one too, and is checked to be http(s) without ever being echoed in the error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import aiohttp
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator
from structlog.typing import FilteringBoundLogger
from yarl import URL

from watcher.notifiers.base import Notifier, Rate
from watcher.notifiers.render import Renderer
from watcher.notifiers.templates import check_template
from watcher.statuses import DEFAULT_STATUSES, Statuses

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


def check_http_url(value: str) -> str:
    """Accept an absolute http(s) URL with a host; the error never repeats the value."""
    try:
        parsed = URL(value.strip())
    except (ValueError, TypeError):
        raise ValueError("must be an http:// or https:// URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an http:// or https:// URL")
    return value.strip()


def _check_secret_url(value: SecretStr) -> SecretStr:
    return SecretStr(check_http_url(value.get_secret_value()))


SecretUrl = Annotated[SecretStr, AfterValidator(_check_secret_url)]
HttpUrl = Annotated[str, AfterValidator(check_http_url)]


class DigestSettings(BaseModel):
    """``digest = {...}`` on a notifier: fold its events into one message per group.

    Events of one group (``group_by``: the ``run_group`` label, the project, or all
    together) wait up to ``window_seconds`` after the first of them for company, and events
    queued behind the destination's rate limit join the next message; at most ``max_items``
    events go into one message. See :mod:`watcher.delivery.digest`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_seconds: float = Field(60.0, ge=0, le=3600)
    group_by: Literal["run_group", "project", "none"] = "run_group"
    max_items: int = Field(50, ge=1, le=1000)


class NotifierBase(BaseModel):
    """Keys every ``[[notifiers]]`` table has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, min_length=1, max_length=64)
    type: str
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    max_age_seconds: float = Field(86400.0, gt=0)
    rate_per_minute: float | None = Field(None, gt=0)
    title_template: str | None = None
    body_template: str | None = None
    digest: DigestSettings | None = None  # off unless given
    rollup: bool = False  # a run_group.completed message when every run of a group finished
    mute_intervals: tuple[str, ...] = ()  # [[mute_intervals]] names: hold deliveries then

    @field_validator("title_template", "body_template")
    @classmethod
    def _template_compiles(cls, value: str | None) -> str | None:
        return check_template(value)


S = TypeVar("S", bound=NotifierBase)


@dataclass(frozen=True, slots=True)
class Deps:
    """What a notifier may use: the shared HTTP session, a logger, a wall clock and the
    status vocabulary its messages are rendered with."""

    session: aiohttp.ClientSession
    logger: FilteringBoundLogger
    clock: Callable[[], datetime]
    statuses: Statuses = DEFAULT_STATUSES


@dataclass(frozen=True, slots=True)
class Kind(Generic[S]):
    """One notifier kind: its settings model, how to build it, and the rate it accepts."""

    settings: type[S]
    build: Callable[[S, Deps], Notifier]
    rates: tuple[Rate, ...] = ()


def renderer(settings: NotifierBase, deps: Deps, *, html: bool = False) -> Renderer:
    """The message maker of the notifier ``settings`` configure: its templates, the
    daemon's status vocabulary, warnings to the notifier's logger."""
    return Renderer(
        notifier=settings.name,
        logger=deps.logger,
        title_template=settings.title_template,
        body_template=settings.body_template,
        html=html,
        statuses=deps.statuses,
    )


def json_bytes(payload: Any) -> bytes:
    """The exact bytes sent: compact UTF-8 JSON, which is also what size limits count."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
