"""Configuration: one TOML file, overridden by ``OMICS_WATCHER_*`` environment variables.

Where the file comes from: ``-c PATH``, else ``$OMICS_WATCHER_CONFIG``, else
``./omics-watcher.toml`` if present, else built-in defaults. Every key can be overridden
from the environment (``OMICS_WATCHER_POLLING__RATE_PER_SECOND=15``; list items by index,
``OMICS_WATCHER_NOTIFIERS__0__URL=...``). Any ``X_file = "/path"`` key is replaced by the
contents of that file as ``X`` before validation (Kubernetes Secret mounts, systemd
``LoadCredential=``), so secret values need not sit in the TOML file.

The three layers are merged here, in plain code, and validated by pydantic once; not with
pydantic-settings' sources, which cannot do this syntax: its environment source cannot address
a list item by index (``NOTIFIERS__0__URL`` fails as "Input should be a valid list"), its
secrets source reads a directory of files named after fields rather than ``X_file`` keys
anywhere in the tree, and its TOML source skips a missing ``-c`` file without a word.

Invariants: validation failures become :class:`ConfigError` with one ``key.path: problem``
line each (the CLI exits 2); secret values never appear in those lines or in
:func:`watcher.secrets.redacted` output (the one walker over these models that knows every
secret). Loading reads files and the given environment only.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from watcher.delivery.muting import parse_clock, parse_weekday
from watcher.display import printable
from watcher.limits import (
    MAX_CONFIG_DEPTH,
    depth_problem,
    label_problems,
    toml_deep_key,
    too_deep,
)
from watcher.notifiers.registry import NotifierSettings
from watcher.routing import RouteSettings
from watcher.statuses import DEFAULT_TERMINAL

ENV_PREFIX = "OMICS_WATCHER_"
DEFAULT_FILE = "omics-watcher.toml"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one ``key.path: message`` each."""

    def __init__(self, problems: list[str]) -> None:
        # One line each, whatever the keys hold (a TOML key may contain a newline or ESC).
        problems = [printable(problem) for problem in problems]
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TencentCloudSettings(_Section):
    endpoint: str = "https://omics.tencentcloudapi.com"
    region: str = "ap-guangzhou"
    project_id: str = ""
    secret_id: SecretStr | None = None
    secret_key: SecretStr | None = None
    token: SecretStr | None = None
    credential_source: Literal["auto", "static", "cvm-role", "tke-oidc"] = "auto"
    language: Literal["zh-CN", "en-US"] | None = None

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class PollingSettings(_Section):
    rate_per_second: float = Field(20.0, gt=0, le=1000)
    interval_seconds: float = Field(30.0, gt=0)
    request_timeout_seconds: float = Field(10.0, gt=0, le=300)
    strategy: Literal["per-run", "batch", "auto"] = "per-run"
    terminal_statuses: tuple[str, ...] = DEFAULT_TERMINAL
    describe_rate_per_second: float = Field(20.0, gt=0, le=1000)
    # GetRunCalls and GetRunJobLog: each action its own limiter at this rate (Tencent: 20/s each).
    calls_rate_per_second: float = Field(20.0, gt=0, le=1000)
    enrich_timeout_seconds: float = Field(10.0, gt=0, le=300)  # failure details hold an event
    batch_size: int = Field(100, ge=1, le=100)

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(self.terminal_statuses)


class StateSettings(_Section):
    path: Path = Path("omics-watcher.db")
    # PostgreSQL instead of the file (replicas share it); a secret: it may carry a password.
    url: SecretStr | None = None
    # How long the active daemon's lease lasts unrenewed (PostgreSQL): a standby's takeover time.
    lease_seconds: float = Field(15.0, gt=0, allow_inf_nan=False)
    # Finished runs leave the state (with their events) this long after they finished; 0: never.
    retention_days: float = Field(30.0, ge=0, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Never quotes the value: it may carry a password.
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// URL")
        if value is not None:
            try:  # what the store splits it with: a bad IPv6 host or port raises there
                urlsplit(value.get_secret_value()).port  # noqa: B018
            except ValueError:
                raise ValueError("not a valid URL (host or port)") from None
        return value


class ServerSettings(_Section):
    listen: str = "127.0.0.1:9477"
    admin_listen: str | None = None  # the admin API's own HOST:PORT; None: on ``listen``
    admin_token: SecretStr | None = None
    ui: bool = True  # the status page under /ui/ (only with an admin_token)
    viewer_token: SecretStr | None = None  # read-only logins to the status page

    @field_validator("listen", "admin_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT with a port from 0 to 65535")
        return value

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """``admin_listen`` as (host, port) when it differs from ``listen``, else None."""
        if self.admin_listen is None or self.admin_listen == self.listen:
            return None
        host, _, port = self.admin_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class StuckSettings(_Section):
    """``run.stuck`` limits in seconds; 0 = off. See :mod:`watcher.stuck` for precedence."""

    after_seconds: float = Field(0, ge=0)
    per_status: dict[str, float] = Field(default_factory=dict)
    per_label: dict[str, float] = Field(default_factory=dict)  # {"team=genomics" = 3600}

    @field_validator("per_status", "per_label")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, seconds in value.items():
            if seconds < 0:
                raise ValueError(f"{key}: must be >= 0 seconds")
        return value

    @field_validator("per_label")
    @classmethod
    def _label_keys(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            name, sep, _ = key.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{key!r}: keys are KEY=VALUE label selectors")
        return value


WatchFilterName = Literal["RunGroupId", "ApplicationId", "Status", "UserDefinedId"]


class WatchSettings(_Section):
    project_id: str = ""
    filters: dict[WatchFilterName, list[str]] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    interval_seconds: float = Field(60.0, gt=0)
    notify_existing: bool = False

    @field_validator("labels")
    @classmethod
    def _bounded_labels(cls, value: dict[str, str]) -> dict[str, str]:
        problems = label_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value


class DaemonSettings(_Section):
    shutdown_grace_seconds: float = Field(10.0, gt=0, le=3600)


class LoggingSettings(_Section):
    format: Literal["auto", "console", "json"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MuteTimeSettings(_Section):
    """One ``times`` entry of a mute interval: ``end`` not after ``start`` wraps past midnight."""

    start: str
    end: str

    @field_validator("start")
    @classmethod
    def _start_clock(cls, value: str) -> str:
        parse_clock(value)
        return value

    @field_validator("end")
    @classmethod
    def _end_clock(cls, value: str) -> str:
        parse_clock(value, end=True)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> MuteTimeSettings:
        if parse_clock(self.start) == parse_clock(self.end, end=True):
            raise ValueError("start and end are the same time; leave out times to mute all day")
        return self


class MuteIntervalSettings(_Section):
    """``[[mute_intervals]]``: when notifiers that name it hold their deliveries
    (:mod:`watcher.delivery.muting`); no ``weekdays``: every day, no ``times``: all day."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)
    weekdays: tuple[str, ...] = ()
    times: tuple[MuteTimeSettings, ...] = ()
    timezone: str = "UTC"

    @field_validator("weekdays")
    @classmethod
    def _known_days(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for day in value:
            parse_weekday(day)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            if value != "UTC":  # UTC needs no zone database
                ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a zone key at all
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
            ) from None
        return value


class Settings(BaseModel):
    """The whole configuration; immutable once loaded (:func:`load_settings` builds it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    tencentcloud: TencentCloudSettings = TencentCloudSettings()
    polling: PollingSettings = PollingSettings()
    state: StateSettings = StateSettings()
    server: ServerSettings = ServerSettings()
    stuck: StuckSettings = StuckSettings()
    watch: list[WatchSettings] = Field(default_factory=list)
    daemon: DaemonSettings = DaemonSettings()
    logging: LoggingSettings = LoggingSettings()
    notifiers: list[NotifierSettings] = Field(default_factory=list)
    routes: list[RouteSettings] = Field(default_factory=list)
    mute_intervals: list[MuteIntervalSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        # The first problem stops validation; the loader then lists all of them
        # (_raw_cross_problems, the same checks on the unvalidated input).
        for key, message in _name_problems(
            [(n.name, n.mute_intervals) for n in self.notifiers],
            [route.notifiers for route in self.routes],
            [interval.name for interval in self.mute_intervals],
        ):
            raise _KeyedError(key, message)
        if self.state.url is not None and "path" in self.state.model_fields_set:
            raise _KeyedError("state.url", "give either [state] path or url, not both")
        return self


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple) else []


def _name_problems(
    notifiers: Sequence[tuple[object, object]],
    routes: Sequence[object],
    intervals: Sequence[object],
) -> list[tuple[str, str]]:
    """Notifier and mute interval names are unique, routes name only configured notifiers and
    notifiers only defined intervals. ``notifiers``: each one's ``(name, mute_intervals)``;
    ``routes``: each route's notifier names; ``intervals``: each interval's name. Works on
    validated settings and on raw input alike (values of another type are passed over)."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, (name, _) in enumerate(notifiers):
        if isinstance(name, str) and name in seen:
            problems.append((f"notifiers[{index}].name", f"duplicate notifier name {name!r}"))
        seen.update(_strings([name]))
    for index, wanted in enumerate(routes):
        for name in _strings(wanted):
            if name not in seen:
                problems.append((f"routes[{index}].notifiers", f"unknown notifier {name!r}"))
    defined: set[str] = set()
    for index, name in enumerate(intervals):
        if isinstance(name, str) and name in defined:
            problems.append((f"mute_intervals[{index}].name", f"duplicate name {name!r}"))
        defined.update(_strings([name]))
    for index, (_, wanted) in enumerate(notifiers):
        for name in _strings(wanted):
            if name not in defined:
                key = f"notifiers[{index}].mute_intervals"
                problems.append((key, f"unknown interval {json.dumps(name)}"))
    return problems


class _KeyedError(ValueError):
    """A cross-field problem that knows the key path it belongs to."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if environ.get("OMICS_WATCHER_CONFIG"):
        return Path(environ["OMICS_WATCHER_CONFIG"])
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """``OMICS_WATCHER_A__B__0__C=v`` as ``{"a": {"b": {"0": {"c": v}}}}``.

    Values that look like JSON arrays or objects are parsed, so list and table keys can be
    overridden too; everything else stays a string for pydantic to coerce.
    """
    layer: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "OMICS_WATCHER_CONFIG":
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        if len(path) > MAX_CONFIG_DEPTH:
            problems.append(depth_problem(key))
            continue
        parsed: Any = value
        if value.strip()[:1] in ("[", "{"):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            except RecursionError:  # the JSON parser recurses once per level
                problems.append(depth_problem(key))
                continue
            deep = too_deep(parsed, MAX_CONFIG_DEPTH - len(path), ".".join(path))
            if deep is not None:
                problems.append(f"{key}: {depth_problem(deep)}")
                continue
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = parsed
    if problems:
        raise ConfigError(problems)
    return layer


def _merge(base: Any, over: Any, path: str = "") -> Any:
    """Deep-merge ``over`` into ``base``; dict keys that are digits address list items.

    ``path`` is where ``base`` sits (``notifiers[0]``), for error messages.
    """
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            where = f"{path}.{key}" if path else key
            merged[key] = _merge(base[key], value, where) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(over, dict) and all(k.isdigit() for k in over):
        items = list(base)
        for key, value in sorted(over.items(), key=lambda kv: int(kv[0])):
            index = int(key)
            if index < len(items):
                items[index] = _merge(items[index], value, f"{path}[{index}]")
            elif index == len(items):
                items.append(value)
            else:
                raise ConfigError(
                    [
                        f"{path}[{index}]: list index out of range in environment override "
                        f"(the list has {len(items)} items; the next one is [{len(items)}])"
                    ]
                )
        return items
    if isinstance(over, dict) and base is None and over and all(k.isdigit() for k in over):
        return _merge([], over, path)
    return over


def _resolve_files(node: Any, path: str, problems: list[str]) -> Any:
    """Replace every ``X_file`` key by ``X`` = the file's contents (trailing newline dropped)."""
    if isinstance(node, list):
        return [_resolve_files(item, f"{path}[{i}]", problems) for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        out[key] = _resolve_files(value, f"{path}.{key}" if path else key, problems)
    for key in [k for k in out if k.endswith("_file")]:
        target = key[: -len("_file")]
        where = f"{path}.{key}" if path else key
        file_path = out.pop(key)
        if not isinstance(file_path, str) or not file_path:
            problems.append(f"{where}: must be a file path")
            continue
        if out.get(target):
            problems.append(f"{where}: give either {target} or {key}, not both")
            continue
        try:
            out[target] = Path(file_path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            problems.append(f"{where}: cannot read {file_path}: {reason}")
        except ValueError:  # a NUL character in the path
            problems.append(f"{where}: not a usable file path (it contains a NUL character)")
    return out


def _loc_to_key(loc: tuple[int | str, ...], raw: Mapping[str, Any]) -> str:
    """``('notifiers', 1, 'webhook', 'url')`` → ``notifiers[1].url``.

    Discriminated unions add the variant tag to the location; it names no key, so drop it.
    """
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if isinstance(node, dict) and item not in node and node.get("type") == item:
            continue  # the union's tag
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def _lower_sections(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Section names match in any case (``[Polling]``), as the environment's do."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.lower()
        out[name] = _merge(out[name], value, name) if name in out else value
    return out


def _state_beside_file(raw: dict[str, Any], config_file: Path) -> dict[str, Any]:
    """A relative ``[state] path`` written in a config file names a file in that file's
    folder (interface.md), so ``-c /etc/omics-watcher/config.toml`` finds the same state from
    any working directory. Defaults and environment overrides stay relative to the working
    directory: they are not written in the file."""
    state = raw.get("state")
    if not isinstance(state, dict):
        return raw
    value = state.get("path")
    if not isinstance(value, str) or not value or value == ":memory:" or Path(value).is_absolute():
        return raw
    return {**raw, "state": {**state, "path": str(config_file.parent / value)}}


def load_settings(
    config_path: str | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load, merge and validate; raises :class:`ConfigError` with every problem found."""
    environ = os.environ if environ is None else environ
    path = find_config_file(config_path, environ)
    raw: dict[str, Any] = {}
    if path is not None:
        text = ""
        try:
            text = path.read_text(encoding="utf-8")
            raw = tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError([f"config: file {path} does not exist"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"config: cannot read {path}: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config: {path} is not valid TOML: {exc}"]) from None
        except RecursionError:  # tomllib recurses once per level of arrays and inline tables
            where = toml_deep_key(text) or f"config {path}"
            raise ConfigError([depth_problem(where)]) from None
        deep = too_deep(raw)
        if deep is not None:
            raise ConfigError([depth_problem(deep)])
    raw = _lower_sections(raw)
    if path is not None:
        raw = _state_beside_file(raw, path)
    merged = _merge(raw, _env_layer(environ))
    problems: list[str] = []
    merged = _resolve_files(merged, "", problems)
    if problems:
        raise ConfigError(problems)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        lines = _raw_cross_problems(merged)
        for error in exc.errors(include_url=False, include_input=False):
            ctx_error = (error.get("ctx") or {}).get("error")
            if isinstance(ctx_error, _KeyedError):
                lines.append(f"{ctx_error.key}: {ctx_error}")
                continue
            key = _loc_to_key(tuple(error["loc"]), merged) or "config"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                ctx = error.get("ctx") or {}
                key += ".type"
                message = (
                    f"unknown type {ctx.get('tag', '')!r}; expected one of "
                    f"{ctx.get('expected_tags', '')}"
                    if error["type"] == "union_tag_invalid"
                    else "missing; every notifier needs a type"
                )
            lines.append(f"{key}: {message}")
        raise ConfigError(list(dict.fromkeys(lines))) from None


def _raw_cross_problems(raw: Mapping[str, Any]) -> list[str]:
    """Every name problem (:func:`_name_problems`) on the unvalidated input.

    ``Settings._cross_checks`` only runs once every field is valid, and stops at the first
    problem; these are all reported in the same run as the other problems.
    """

    def entries(key: str) -> list[dict[str, Any]]:
        value = raw.get(key)
        items = value if isinstance(value, list) else []
        return [item if isinstance(item, dict) else {} for item in items]

    problems = _name_problems(
        [(n.get("name"), n.get("mute_intervals")) for n in entries("notifiers")],
        [route.get("notifiers") for route in entries("routes")],
        [interval.get("name") for interval in entries("mute_intervals")],
    )
    return [f"{key}: {message}" for key, message in problems]
