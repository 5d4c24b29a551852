"""``check-config``'s report: which config file was read, which state and credential source ``run``
would use, and (``--probe``) whether one read-only API call with them succeeds.

Why a module of its own: the credential source is found by the very function ``run`` uses
(:func:`watcher.connect.credential_provider`), so ``check-config`` cannot disagree with the
daemon; without credentials both fail the same way (``CredentialsError``, exit 2). Only names
are reported (files, keys, variables), never a value. The probe is one ``DescribeRuns`` with
``Limit 1`` through the project's :class:`~watcher.omics.client.OmicsClient` and its limiter.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher.config import ENV_PREFIX, Settings
from watcher.connect import build_client, build_limiters, credential_provider, http_session
from watcher.omics.client import OmicsClient
from watcher.omics.errors import OmicsError
from watcher.options import state_options

_TC_ENV = f"{ENV_PREFIX}TENCENTCLOUD__"


@dataclass(frozen=True)
class ProbeResult:
    """The probe's outcome: ``ok`` and one line for people."""

    ok: bool
    line: str


def config_file_line(config_file: Path | None) -> str:
    if config_file is None:
        return "config file: none (built-in defaults and OMICS_WATCHER_* environment)"
    return f"config file: {config_file}"


def state_line(settings: Settings) -> str:
    """Which state ``run`` would open: the PostgreSQL database by its name (as the store's
    errors name it; the URL itself is a secret) or the SQLite file."""
    options = state_options(settings)
    if options.url is not None:
        from watcher.store.pg.base import database_name

        return (
            f"state: PostgreSQL database {database_name(options.url)} "
            f"(lease_seconds {options.lease_seconds:g})"
        )
    return f"state: SQLite file {options.path}"


def _file_keys(config_file: Path | None) -> dict[str, Any]:
    """The ``[tencentcloud]`` keys written in the file (names only matter here)."""
    if config_file is None:
        return {}
    try:
        raw = tomllib.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return {}
    for section, value in raw.items():
        if section.lower() == "tencentcloud" and isinstance(value, dict):
            return value
    return {}


def _key_origin(name: str, config_file: Path | None, environ: Mapping[str, str]) -> str:
    """Where ``[tencentcloud] name`` came from: environment override, ``*_file`` or the file.

    The environment overrides the file (config.py's merge), so it is looked at first."""
    env = {key.upper(): key for key in environ if key.upper().startswith(_TC_ENV)}
    for key in (f"{_TC_ENV}{name.upper()}_FILE", f"{_TC_ENV}{name.upper()}"):
        if key in env:
            kind = "*_file named by " if key.endswith("_FILE") else ""
            return f"{kind}environment variable {env[key]}"
    if f"{name}_file" in _file_keys(config_file):
        return f"*_file: [tencentcloud] {name}_file in {config_file}"
    return f"config file {config_file}: [tencentcloud] {name}"


def _describe(
    provider_name: str, settings: Settings, config_file: Path | None, environ: Mapping[str, str]
) -> str:
    """One line naming the source a provider called ``provider_name`` reads."""
    if provider_name == "config":
        origins = [_key_origin(n, config_file, environ) for n in ("secret_id", "secret_key")]
        if settings.tencentcloud.token is not None:
            origins.append(_key_origin("token", config_file, environ))
        return "; ".join(dict.fromkeys(origins))
    if provider_name == "environment":
        names = ["TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY"]
        if environ.get("TENCENTCLOUD_TOKEN", "").strip():
            names.append("TENCENTCLOUD_TOKEN")
        return "environment variables " + ", ".join(names)
    if provider_name.startswith("profile "):
        return f"profile file {provider_name.removeprefix('profile ')} ([default])"
    if provider_name == "tke-oidc":
        return "TKE OIDC web identity (environment variables TKE_*)"
    if provider_name == "cvm-role":
        return "CVM instance role (metadata service; keys are fetched when first used)"
    return provider_name


async def inspect(
    settings: Settings,
    *,
    config_file: Path | None,
    environ: Mapping[str, str],
    probe: bool,
) -> tuple[str, ProbeResult | None]:
    """``("credentials: SOURCE", probe result or None)``.

    Raises :class:`~watcher.omics.credentials.CredentialsError` when there are none, exactly
    as ``run`` does at startup."""
    async with http_session() as session:
        provider = credential_provider(settings, environ=environ, session=session)
        line = "credentials: " + _describe(provider.name, settings, config_file, environ)
        if not probe:
            return line, None
        client = build_client(
            settings, session=session, environ=environ, limiters=build_limiters(settings)
        )
        return line, await _probe(client, settings)


async def _probe(client: OmicsClient, settings: Settings) -> ProbeResult:
    tc = settings.tencentcloud
    where = f"DescribeRuns at {tc.endpoint} (region {tc.region})"
    try:
        total, _ = await client.describe_runs(project_id=tc.project_id, limit=1)
    except OmicsError as exc:
        reason = f"{exc.code}: {exc.message}" if exc.message else exc.code
        return ProbeResult(False, f"probe failed: {where}: {reason}")
    return ProbeResult(True, f"probe OK: {where} answered, {total} runs visible")
