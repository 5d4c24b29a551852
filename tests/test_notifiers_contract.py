"""The notifier contract, for every kind, against real local receivers.

One parametrised test: each kind × each outcome (2xx, 5xx, timeout, 4xx, 429 with
Retry-After: 3). HTTP kinds post to an aiohttp server on 127.0.0.1; email goes to an aiosmtpd
server with STARTTLS and AUTH, using a self-signed certificate made with the ``openssl`` CLI
(the ``cryptography`` package is not installed). Every case also checks that no secret
(URL token, query key, signing secret, SMTP password) reaches a log line or an error.
Webhook signatures are verified by the ``standardwebhooks`` package as an independent peer.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import TypeAdapter
from standardwebhooks.webhooks import Webhook
from support import free_port, serve

from watcher.delivery.retry import attempt
from watcher.events import Event
from watcher.notifiers.base import Notifier, Permanent, Retryable
from watcher.notifiers.registry import KINDS, NotifierSettings, build_notifier

PATH_TOKEN = "PATHSECRETtoken12345"
QUERY_KEY = "QUERYSECRETkey6789"
SIGNING_SECRET = "SECsigningsecret0123456789"
WHSEC_OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
WHSEC_NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
SMTP_USER = "watcher"
SMTP_PASSWORD = "smtp-Password-42!"
HEADER_TOKEN = "Bearer gatewayTOKEN777"
SECRETS = [
    PATH_TOKEN,
    QUERY_KEY,
    SIGNING_SECRET,
    WHSEC_OLD,
    WHSEC_NEW,
    WHSEC_OLD.removeprefix("whsec_"),
    WHSEC_NEW.removeprefix("whsec_"),
    SMTP_PASSWORD,
    "gatewayTOKEN777",
]

HTTP_KINDS = ["webhook", "slack", "wecom", "dingtalk", "feishu", "lark", "teams", "discord"]
OUTCOMES = ["ok", "server_error", "timeout", "client_error", "throttled"]

OK_ANSWERS: dict[str, tuple[int, Any]] = {
    "webhook": (200, None),
    "slack": (200, "ok"),
    "wecom": (200, {"errcode": 0, "errmsg": "ok"}),
    "dingtalk": (200, {"errcode": 0, "errmsg": "ok"}),
    "feishu": (200, {"code": 0, "msg": "success", "data": {}}),
    "lark": (200, {"StatusCode": 0, "StatusMessage": "success"}),
    "teams": (202, None),
    "discord": (204, None),
}


def failed_event() -> Event:
    return Event(
        type="run.status_changed",
        id="evt_01JCONTRACT0000000000000000",
        timestamp=datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC),
        data={
            "run_uuid": "84232c68-a016-4668-b2e3-168a175d6f29",
            "project_id": "prj-peaceful-pink-bird-631828",
            "previous_status": "RUNNING",
            "status": "EXECUTOR_ERROR",
            "terminal": True,
            "observed_at": "2026-11-27T10:00:00.120Z",
            "labels": {"team": "genomics"},
            "metadata": {
                "RunId": "run-1",
                "Status": "EXECUTOR_ERROR",
                "StartTime": "2026-11-27T08:00:00Z",
                "EndTime": "2026-11-27T09:59:59Z",
            },
            "failure": {
                "task": "align.bwa_mem",
                "message": "exit code 137\nout of memory",
                "stderr_tail": "[bwa] reading index\nKilled",
            },
        },
    )


# ---- receivers ------------------------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    base: str
    mode: str = "ok"
    ok: tuple[int, Any] = (200, None)
    requests: list[Recorded] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(base="")

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        state.requests.append(
            Recorded(request.path, dict(request.query), dict(request.headers), body)
        )
        if state.mode == "server_error":
            return web.Response(status=503, text="upstream unavailable")
        if state.mode == "client_error":
            return web.Response(status=400, text="invalid_payload")
        if state.mode == "throttled":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "3"})
        if state.mode == "timeout":
            await state.release.wait()
        status, answer = state.ok
        if answer is None:
            return web.Response(status=status)
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        return web.json_response(answer, status=status)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_route("POST", "/{tail:.*}", handle)
    async with serve(app) as state.base:
        yield state
        state.release.set()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class SmtpHandler:
    def __init__(self) -> None:
        self.mode = "ok"
        self.messages: list[bytes] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.mode == "server_error":
            return "451 4.3.0 mailbox busy, try later"
        if self.mode == "client_error":
            return "550 5.7.1 message refused"
        if self.mode == "throttled":
            return "452 4.5.3 too many messages, slow down"
        if self.mode == "timeout":
            await asyncio.sleep(0.7)
        self.messages.append(envelope.original_content or envelope.content)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 queued"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = (
        isinstance(data, LoginPassword)
        and data.login == SMTP_USER.encode()
        and data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@dataclass
class Smtp:
    handler: SmtpHandler
    port: int
    ca: str


@pytest.fixture
def smtp(tls_files: tuple[Path, Path]) -> Iterator[Smtp]:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = SmtpHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticate,
    )
    controller.start()
    try:
        yield Smtp(handler=handler, port=port, ca=cert.read_text())
    finally:
        controller.stop()


# ---- per-kind settings and shape checks -----------------------------------------------------


def settings_for(kind: str, base: str, smtp: Smtp | None) -> dict[str, Any]:
    if kind == "log":
        return {"name": "audit", "type": "log"}
    if kind == "email":
        assert smtp is not None
        return {
            "name": "mail",
            "type": "email",
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "starttls",
            "username": SMTP_USER,
            "password": SMTP_PASSWORD,
            "tls_ca": smtp.ca,
            "from_addr": "watcher@example.org",
            "to": ["oncall@example.org", "lab@example.org"],
        }
    url = f"{base}/hook/{PATH_TOKEN}?key={QUERY_KEY}"
    settings: dict[str, Any] = {"name": f"to-{kind}", "type": kind, "url": url}
    if kind == "webhook":
        settings["secret"] = f"{WHSEC_OLD} {WHSEC_NEW}"
        settings["headers"] = {"Authorization": HEADER_TOKEN}
    if kind in ("dingtalk", "feishu", "lark"):
        settings["secret"] = SIGNING_SECRET
    return settings


def build(
    kind: str, raw: dict[str, Any], session: aiohttp.ClientSession, now: datetime
) -> Notifier:
    settings = TypeAdapter(NotifierSettings).validate_python(raw)
    return build_notifier(
        settings, session=session, logger=structlog.get_logger(), clock=lambda: now
    )


def check_http_shape(kind: str, got: Recorded, event: Event, now: datetime) -> None:
    assert got.path == f"/hook/{PATH_TOKEN}"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("omics-watcher/")
    body = json.loads(got.body)
    if kind == "webhook":
        assert got.body == event.to_json().encode()
        assert got.headers["webhook-id"] == event.id
        assert got.headers["webhook-timestamp"] == str(int(now.timestamp()))
        assert got.headers["Authorization"] == HEADER_TOKEN
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        for secret in (WHSEC_OLD, WHSEC_NEW):  # either secret verifies: rotation works
            Webhook(secret).verify(got.body, got.headers)
    elif kind == "slack":
        assert "EXECUTOR_ERROR" in body["text"]
        assert body["blocks"][0]["type"] == "header"
        assert all(b["type"] in ("header", "section", "context") for b in body["blocks"])
        assert any("exit code 137" in b.get("text", {}).get("text", "") for b in body["blocks"])
    elif kind == "wecom":
        assert body["msgtype"] == "markdown"
        content = body["markdown"]["content"]
        assert "EXECUTOR_ERROR" in content
        assert "align.bwa_mem" in content
        assert len(content.encode()) <= 4096
    elif kind == "dingtalk":
        assert body["msgtype"] == "markdown"
        assert "EXECUTOR_ERROR" in body["markdown"]["title"]
        assert "exit code 137" in body["markdown"]["text"]
        assert body["at"] == {"atMobiles": [], "atUserIds": [], "isAtAll": False}
        millis = int(now.timestamp() * 1000)
        assert got.query["key"] == QUERY_KEY
        assert got.query["timestamp"] == str(millis)
        # The formula, written out independently: base64(HMAC(secret, f"{ms}\n{secret}")).
        expected = base64.b64encode(
            hmac.new(
                SIGNING_SECRET.encode(), f"{millis}\n{SIGNING_SECRET}".encode(), hashlib.sha256
            ).digest()
        ).decode()
        assert got.query["sign"] == expected  # aiohttp has URL-decoded it
    elif kind in ("feishu", "lark"):
        assert body["msg_type"] == "interactive"
        card = body["card"]
        assert card["header"]["template"] == "red"
        assert "EXECUTOR_ERROR" in card["header"]["title"]["content"]
        assert card["elements"][-1]["tag"] == "note"
        seconds = int(now.timestamp())
        assert body["timestamp"] == str(seconds)
        expected = base64.b64encode(
            hmac.new(f"{seconds}\n{SIGNING_SECRET}".encode(), b"", hashlib.sha256).digest()
        ).decode()
        assert body["sign"] == expected
    elif kind == "teams":
        assert body["type"] == "message"
        (attachment,) = body["attachments"]
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = attachment["content"]
        assert card["type"] == "AdaptiveCard"
        assert card["version"] == "1.4"
        assert card["body"][0]["color"] == "Attention"
        assert any(block["type"] == "FactSet" for block in card["body"])
    elif kind == "discord":
        (embed,) = body["embeds"]
        assert embed["color"] == 0xE01E5A
        assert "EXECUTOR_ERROR" in embed["title"]
        assert "exit code 137" in embed["description"]
        assert body["allowed_mentions"] == {"parse": []}
    else:  # pragma: no cover
        raise AssertionError(kind)


def check_mail(smtp: Smtp, event: Event) -> None:
    (raw,) = smtp.handler.messages
    assert smtp.handler.envelopes == [
        ("watcher@example.org", ["oncall@example.org", "lab@example.org"])
    ]
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    subject = str(mail["Subject"])
    assert "EXECUTOR_ERROR" in subject
    assert "84232c68" in subject
    assert "prj-peaceful-pink-bird-631828" in subject
    assert mail["Message-ID"] == f"<{event.id}@example.org>"
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "exit code 137" in text.get_content()
    assert "align.bwa_mem" in html.get_content()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret[:6]}… leaked into: {text[:200]}"


# ---- the contract ---------------------------------------------------------------------------


def cases() -> Iterator[Any]:
    yield pytest.param("log", "ok", id="log-ok")
    for kind in [*HTTP_KINDS, "email"]:
        for outcome in OUTCOMES:
            yield pytest.param(kind, outcome, id=f"{kind}-{outcome}")


@pytest.mark.parametrize(("kind", "outcome"), list(cases()))
async def test_contract(
    kind: str, outcome: str, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    smtp: Smtp | None = request.getfixturevalue("smtp") if kind == "email" else None
    if smtp is not None:
        smtp.handler.mode = outcome
    receiver.mode = outcome
    receiver.ok = OK_ANSWERS.get(kind, (200, None))
    event = failed_event()
    now = datetime.now(UTC).replace(microsecond=0)
    error: Retryable | Permanent | None = None
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            notifier = build(kind, settings_for(kind, receiver.base, smtp), session, now)
            assert notifier.kind == kind
            try:
                await attempt(notifier, event, time_limit=0.4 if outcome == "timeout" else 10)
            except (Retryable, Permanent) as exc:
                error = exc

    if outcome == "ok":
        assert error is None
        if kind == "log":
            (line,) = [entry for entry in logs if entry["event"] == "notify_event"]
            assert line["run_uuid"] == event.run_uuid
            assert line["status"] == "EXECUTOR_ERROR"
            assert line["error"].startswith("exit code 137")
        elif smtp is not None:
            check_mail(smtp, event)
        else:
            (got,) = receiver.requests
            check_http_shape(kind, got, event, now)
    elif outcome in ("server_error", "timeout"):
        assert isinstance(error, Retryable), error
        if outcome == "timeout":
            assert "timed out" in error.reason
    elif outcome == "client_error":
        assert isinstance(error, Permanent), error
    elif outcome == "throttled":
        assert isinstance(error, Retryable), error
        assert error.retry_after == (None if kind == "email" else 3.0)

    texts = [json.dumps(logs, default=str)]
    if error is not None:
        texts += [str(error), repr(error), error.reason]
        if smtp is None and outcome != "timeout":
            assert error.reason.startswith(receiver.base), error.reason  # scheme + host only
    assert_no_secret(*texts)


def test_every_kind_is_covered() -> None:
    assert set(KINDS) == {"log", *HTTP_KINDS, "email"}


# ---- kind-specific behaviour the contract does not reach -----------------------------------


@pytest.mark.parametrize(
    ("kind", "answer", "expected"),
    [
        ("wecom", {"errcode": 45009, "errmsg": "api freq out of limit"}, Retryable),
        ("wecom", {"errcode": 93000, "errmsg": "invalid webhook url"}, Permanent),
        ("dingtalk", {"errcode": 410100, "errmsg": "send too fast"}, Retryable),
        ("dingtalk", {"errcode": 130101, "errmsg": "send too fast, exceed 20/min"}, Retryable),
        ("dingtalk", {"errcode": 310000, "errmsg": "sign not match"}, Permanent),
        ("feishu", {"code": 11232, "msg": "frequency limited"}, Retryable),
        ("feishu", {"code": 19021, "msg": "sign match fail"}, Permanent),
        ("lark", {"StatusCode": 19024, "StatusMessage": "Key Words Not Found"}, Permanent),
    ],
)
async def test_chat_api_errors_in_a_200_body_are_read(
    kind: str, answer: dict[str, Any], expected: type[Exception], receiver: Receiver
) -> None:
    receiver.ok = (200, answer)
    now = datetime.now(UTC)
    async with aiohttp.ClientSession() as session:
        notifier = build(kind, settings_for(kind, receiver.base, None), session, now)
        with pytest.raises(expected) as caught:
            await attempt(notifier, failed_event(), time_limit=5)
    assert str(next(iter(v for k, v in answer.items() if "code" in k.lower()))) in str(caught.value)
    assert_no_secret(str(caught.value))


async def test_redirect_is_permanent_and_not_followed(receiver: Receiver) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(location=f"/elsewhere?key={QUERY_KEY}")

    app = web.Application()
    app.router.add_post("/{tail:.*}", moved)
    async with serve(app) as base, aiohttp.ClientSession() as session:
        notifier = build("slack", settings_for("slack", base, None), session, datetime.now(UTC))
        with pytest.raises(Permanent, match="redirect"):
            await attempt(notifier, failed_event(), time_limit=5)


async def test_connection_refused_is_retryable_and_redacted() -> None:
    port = free_port()  # nothing listens there
    async with aiohttp.ClientSession() as session:
        raw = settings_for("discord", f"http://127.0.0.1:{port}", None)
        notifier = build("discord", raw, session, datetime.now(UTC))
        with pytest.raises(Retryable) as caught:
            await attempt(notifier, failed_event(), time_limit=5)
    assert caught.value.reason.startswith(f"http://127.0.0.1:{port}: ")
    assert_no_secret(str(caught.value))


async def test_discord_json_retry_after(receiver: Receiver) -> None:
    receiver.mode = "ok"
    receiver.ok = (429, {"message": "You are being rate limited.", "retry_after": 4.25})
    async with aiohttp.ClientSession() as session:
        notifier = build(
            "discord", settings_for("discord", receiver.base, None), session, datetime.now(UTC)
        )
        with pytest.raises(Retryable) as caught:
            await attempt(notifier, failed_event(), time_limit=5)
    assert caught.value.retry_after == 4.25


async def test_dingtalk_sign_is_url_encoded_on_the_wire(receiver: Receiver) -> None:
    """``+``, ``/`` and ``=`` in the base64 must arrive percent-encoded, not as spaces."""
    receiver.ok = OK_ANSWERS["dingtalk"]
    # Find a timestamp whose signature contains a character that needs encoding.
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    from watcher.notifiers.dingtalk import signature

    while "+" not in signature(SIGNING_SECRET, int(moment.timestamp() * 1000)):
        moment = moment.replace(microsecond=moment.microsecond + 1000)
    async with aiohttp.ClientSession() as session:
        notifier = build("dingtalk", settings_for("dingtalk", receiver.base, None), session, moment)
        await attempt(notifier, failed_event(), time_limit=5)
    (got,) = receiver.requests
    expected = signature(SIGNING_SECRET, int(moment.timestamp() * 1000))
    # The server's query parser reads a raw "+" as a space: equality proves it came as %2B.
    assert got.query["sign"] == expected


async def test_email_implicit_tls_and_plain(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    for security in ("tls", "none"):
        handler = SmtpHandler()
        port = free_port()
        controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            ssl_context=server_context if security == "tls" else None,
        )
        controller.start()
        try:
            async with aiohttp.ClientSession() as session:
                raw = {
                    "name": "mail",
                    "type": "email",
                    "host": "127.0.0.1",
                    "port": port,
                    "security": security,
                    "tls_ca": cert.read_text(),
                    "from_addr": "watcher@example.org",
                    "to": ["oncall@example.org"],
                }
                notifier = build("email", raw, session, datetime.now(UTC))
                await attempt(notifier, failed_event(), time_limit=10)
            assert len(handler.messages) == 1
        finally:
            controller.stop()


async def test_email_wrong_password_is_permanent_and_secret_free(smtp: Smtp) -> None:
    raw = settings_for("email", "", smtp)
    raw["password"] = "wrong-" + SMTP_PASSWORD
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            notifier = build("email", raw, session, datetime.now(UTC))
            with pytest.raises(Permanent) as caught:
                await attempt(notifier, failed_event(), time_limit=10)
    assert "535" in caught.value.reason
    assert_no_secret(str(caught.value), json.dumps(logs, default=str))
    assert raw["password"] not in str(caught.value)


async def test_email_untrusted_certificate_is_retryable(smtp: Smtp) -> None:
    raw = settings_for("email", "", smtp)
    del raw["tls_ca"]  # the self-signed certificate is not trusted by default
    async with aiohttp.ClientSession() as session:
        notifier = build("email", raw, session, datetime.now(UTC))
        with pytest.raises(Retryable):
            await attempt(notifier, failed_event(), time_limit=10)
    assert smtp.handler.messages == []
