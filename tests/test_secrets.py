"""One set of secret rules: the same value is masked, or not, alike in logs, client errors,
notifier errors and ``check-config``.

A local aiohttp server plays the Omics API (its error message echoes the temporary token it
was sent) and a webhook receiver (its 400 answer echoes the URL's query key); the log line
goes through the real structlog configuration with the masker fed by ``secret_values``.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import structlog
from aiohttp import web
from support import make_client, serve

from watcher.config import Settings
from watcher.events import Event
from watcher.notifiers.base import Permanent
from watcher.notifiers.registry import build_notifier
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.errors import OmicsError
from watcher.secrets import (
    MIN_SECRET_LENGTH,
    Scrubber,
    redact_url,
    redacted,
    secret_parts,
    secret_values,
    url_origin,
    url_secrets,
)
from watcher.service.logs import configure

SECRET_ID = "AKIDsecretsTest000000000000000"
SECRET_KEY = "sk-secrets-test-0123456789abcdef"


@dataclass(frozen=True)
class Endpoint:
    endpoint: str
    secret_id: str = SECRET_ID
    secret_key: str = SECRET_KEY


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """``POST /``: an Omics API error echoing ``X-TC-Token``; ``POST /hook``: a 400 echoing
    the query's ``key``."""

    async def omics(request: web.Request) -> web.Response:
        token = request.headers.get("X-TC-Token", "")
        error = {"Code": "InvalidParameter", "Message": f"leak={token}"}
        return web.json_response({"Response": {"Error": error, "RequestId": "r-1"}})

    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=400, text=f"leak={request.query.get('key', '')}")

    app = web.Application()
    app.router.add_post("/", omics)
    app.router.add_post("/hook", hook)
    async with serve(app) as base:
        yield base


def logged(secrets: list[str], text: str) -> str:
    out = io.StringIO()
    configure(fmt="json", secrets=secrets, stream=out)
    try:
        structlog.get_logger("t").warning("leak_test", error=text)
    finally:
        structlog.reset_defaults()
    return str(json.loads(out.getvalue().splitlines()[-1])["error"])


# A value one character under the minimum and one at it: the same verdict everywhere.
@pytest.mark.parametrize("value", ["k3y9z", "k3y9z7"])
async def test_one_rule_for_logs_client_errors_and_notifier_errors(
    value: str, echo_server: str, session: aiohttp.ClientSession
) -> None:
    expected = "leak=***" if len(value) >= MIN_SECRET_LENGTH else f"leak={value}"
    url = f"{echo_server}/hook?key={value}"
    settings = Settings.model_validate(
        {
            "tencentcloud": {"secret_id": SECRET_ID, "secret_key": SECRET_KEY, "token": value},
            "notifiers": [{"name": "ops", "type": "webhook", "url": url}],
        }
    )

    # Logs: the masker knows what the settings walker found (the token, the URL's key).
    assert logged(secret_values(settings), f"leak={value}") == expected

    # Client errors: the temporary token echoed by the API.
    provider = StaticProvider(Credential(SECRET_ID, SECRET_KEY, token=value), name="t")
    client = make_client(Endpoint(echo_server), session, credentials=provider)
    with pytest.raises(OmicsError) as api_error:
        await client.get_run_status("84232c68-a016-4668-b2e3-168a175d6f29")
    assert api_error.value.message == expected

    # Notifier errors: the URL's query key echoed by the receiver.
    hook = build_notifier(settings.notifiers[0], session=session, logger=structlog.get_logger())
    event = Event.from_dict(
        {"type": "run.status_changed", "id": "evt_1", "timestamp": "2026-11-27T10:00:00Z"}
        | {"data": {"run_uuid": "r", "status": "SUCCESS"}}
    )
    with pytest.raises(Permanent) as refused:
        await hook.send(event)
    assert refused.value.reason.endswith(expected), refused.value.reason
    assert refused.value.reason.startswith(url_origin(url) + ":")

    # check-config shows the URL with the key masked whatever its length (it is a key).
    shown = redacted(settings)
    assert shown["notifiers"][0]["url"] == f"{echo_server}/hook?key=***"
    assert shown["tencentcloud"]["token"] == "***"


def test_url_views_mask_what_url_secrets_finds() -> None:
    url = "https://ops:hunter2-pass@hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/XXXXXXXXXXXX?x=1"
    found = url_secrets(url)
    assert {"hunter2-pass", "T0AAAAAAA", "B0BBBBBBB", "XXXXXXXXXXXX"} <= set(found)
    assert "services" not in found  # a plain word names the endpoint
    assert redact_url(url) == "https://ops:***@hooks.slack.com/services/***/***/***?x=***"
    assert url_origin(url) == "https://hooks.slack.com"
    # A token given as the user name (no password) is a credential too.
    assert url_secrets("https://ghp_Token123456@example.org/x") == ["ghp_Token123456"]
    assert redact_url("https://ghp_Token123456@example.org/x") == "https://***@example.org/x"
    scrub = Scrubber(found)
    assert "T0AAAAAAA" not in scrub(f"POST {url} failed")


def test_signing_secrets_are_masked_whole_and_in_parts() -> None:
    old, new = "whsec_b2xkb2xkb2xkb2xk", "whsec_bmV3bmV3bmV3bmV3"
    parts = secret_parts(f"{old} {new}")
    assert {old, new, old.removeprefix("whsec_"), new.removeprefix("whsec_")} <= set(parts)
    text = Scrubber(parts)(f"key {new.removeprefix('whsec_')} and {old}")
    assert text == "key *** and ***"
