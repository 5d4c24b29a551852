"""Settings → the Omics client: credentials, per-action limiters, the shared HTTP session.

Used by every command that talks to the Omics API (``run`` through :mod:`watcher.app`,
``status`` through :func:`one_status`). Part of the composition root, so it reads
:mod:`watcher.config`; the client itself (:mod:`watcher.omics.client`) never does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from watcher import __version__
from watcher.config import Settings
from watcher.omics.client import OmicsClient, RequestObserver
from watcher.omics.credentials import (
    CredentialProvider,
    CredentialsError,
    default_profile_paths,
    static_provider,
)
from watcher.omics.limiter import PacingLimiter
from watcher.polling.common import STATUS_GROUP

STATUS_ACTION = "GetRunStatus"


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def credential_provider(
    settings: Settings, *, environ: Mapping[str, str], session: aiohttp.ClientSession
) -> CredentialProvider:
    """The configured credential source; ``auto`` = static chain, then TKE OIDC if set up."""
    from watcher.omics.cloud_credentials import CvmRoleProvider, TkeOidcProvider

    tc = settings.tencentcloud
    source = tc.credential_source
    if source == "cvm-role":
        return CvmRoleProvider(session=session)
    if source == "tke-oidc":
        tke = TkeOidcProvider.from_environ(environ, session=session)
        if tke is None:
            raise CredentialsError("credential_source = tke-oidc but TKE_* variables are not set")
        return tke
    home = Path(environ.get("HOME") or Path.home())
    try:
        return static_provider(
            secret_id=_secret(tc.secret_id),
            secret_key=_secret(tc.secret_key),
            token=_secret(tc.token),
            environ=environ,
            profile_paths=default_profile_paths(home),
        )
    except CredentialsError as exc:
        if source == "auto":
            tke = TkeOidcProvider.from_environ(environ, session=session)
            if tke is not None:
                return tke
            raise CredentialsError(
                f"{exc}; TKE OIDC (TKE_* variables). On a CVM instance with a role, "
                'set [tencentcloud] credential_source = "cvm-role"'
            ) from None
        raise


def build_limiters(settings: Settings) -> dict[str, PacingLimiter]:
    """One limiter per action: Tencent counts its 20/s budget per action, so GetRunCalls and
    GetRunJobLog each get their own at ``calls_rate_per_second``. GetRunStatus permits go
    out in groups (``STATUS_GROUP``); the other actions are rarer, one per wake-up."""
    polling = settings.polling
    limiters = {
        STATUS_ACTION: PacingLimiter(polling.rate_per_second, group=STATUS_GROUP),
        "DescribeRuns": PacingLimiter(polling.describe_rate_per_second),
        "GetRunCalls": PacingLimiter(polling.calls_rate_per_second),
        "GetRunJobLog": PacingLimiter(polling.calls_rate_per_second),
        "default": PacingLimiter(polling.calls_rate_per_second),
    }
    return limiters


@contextlib.asynccontextmanager
async def http_session(
    *, trace_configs: Sequence[aiohttp.TraceConfig] = ()
) -> AsyncIterator[aiohttp.ClientSession]:
    """The one shared client session: TLS verification on, bounded connection pool.

    ``trace_configs``: hooks run around each request (a replica's lease gate,
    :func:`watcher.replica.lease_trace`)."""
    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
    async with aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": f"omics-watcher/{__version__}"},
        trace_configs=list(trace_configs) or None,
    ) as session:
        yield session


def build_client(
    settings: Settings,
    *,
    session: aiohttp.ClientSession,
    environ: Mapping[str, str],
    limiters: Mapping[str, PacingLimiter],
    observer: RequestObserver | None = None,
) -> OmicsClient:
    tc = settings.tencentcloud
    return OmicsClient(
        session=session,
        endpoint=tc.endpoint,
        region=tc.region,
        credentials=credential_provider(settings, environ=environ, session=session),
        limiters=limiters,
        timeout=settings.polling.request_timeout_seconds,
        language=tc.language,
        observer=observer,
    )


async def one_status(
    settings: Settings, run_uuid: str, project_id: str, *, environ: Mapping[str, str]
) -> dict[str, Any]:
    """``omics-watcher status``: one GetRunStatus, the Metadata object as returned."""
    async with http_session() as session:
        client = build_client(
            settings, session=session, environ=environ, limiters=build_limiters(settings)
        )
        metadata = await client.get_run_status(run_uuid, project_id)
        return dict(metadata.raw)
