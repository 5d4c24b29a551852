"""Email over SMTP (aiosmtplib): a text/plain part and a text/html alternative.

``security`` is ``starttls`` (default, port 587), ``tls`` (implicit TLS, port 465) or
``none`` (port 25; a password is refused there, as it would cross the network in clear).
``tls_ca`` holds extra trusted certificates in PEM (use ``tls_ca_file = "/path"``), for a
relay with a private CA. The subject carries status, run and project; the ``Message-ID`` is
derived from the event id, so a retried delivery can be recognised as the same mail.

SMTP outcomes: 4xx replies, lost connections and connection failures are retryable; 5xx
replies (bad recipient, authentication failed, message refused) are permanent. When some
recipients are refused and others accepted, the mail counts as delivered (sending again
would duplicate it for the others) and the refusal is logged.
"""

from __future__ import annotations

import html
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Literal

import aiosmtplib
from pydantic import Field, SecretStr, field_validator, model_validator

from watcher.events import Event
from watcher.notifiers.base import Permanent, Retryable
from watcher.notifiers.common import Deps, Kind, NotifierBase, renderer
from watcher.notifiers.fitting import fit
from watcher.notifiers.render import Message, plain_text
from watcher.secrets import Scrubber, secret_parts
from watcher.statuses import Severity

FIELD_MAX = 32 * 1024  # characters per long field (error, stderr, custom body)
TEXT_MAX_BYTES = 128 * 1024  # the text part; the HTML part carries the same content
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
COLOURS: dict[Severity, str] = {
    "success": "#2eb67d",
    "failure": "#e01e5a",
    "warning": "#ecb22e",
    "info": "#36c5f0",
}


def _address(value: str) -> str:
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(c in value for c in "\r\n"):
        raise ValueError("must be an email address")
    return value


class EmailSettings(NotifierBase):
    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: str | None = None  # PEM; usually given as tls_ca_file
    from_addr: str
    to: list[str] = Field(min_length=1)

    @field_validator("from_addr")
    @classmethod
    def _from_is_address(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _to_are_addresses(cls, value: list[str]) -> list[str]:
        return [_address(item) for item in value]

    @model_validator(mode="after")
    def _no_clear_text_password(self) -> EmailSettings:
        if self.password is not None and self.security == "none":
            raise ValueError("a password needs security = 'starttls' or 'tls'")
        if self.password is not None and not self.username:
            raise ValueError("a password needs a username")
        return self


def subject(message: Message) -> str:
    return " ".join(message.title.split())


def html_body(message: Message) -> str:
    e = html.escape
    colour = COLOURS[message.severity]
    parts = [
        '<!DOCTYPE html><html><body style="font-family:sans-serif;font-size:14px">',
        f'<h2 style="border-left:6px solid {colour};padding-left:8px">{e(message.title)}</h2>',
    ]
    if message.body is not None:
        if message.body_html is not None:
            parts.append(f"<div>{message.body_html}</div>")
        else:
            parts.append(f'<pre style="white-space:pre-wrap">{e(message.body)}</pre>')
    else:
        parts.append(f"<p><strong>{e(message.summary)}</strong></p>")
        if message.facts:
            rows = "".join(
                f'<tr><th align="left" style="padding-right:12px">{e(k)}</th><td>{e(v)}</td></tr>'
                for k, v in message.facts
            )
            parts.append(f"<table>{rows}</table>")
        failure = message.failure
        if failure:
            parts += failure.lines(
                "<p><strong>Failed task:</strong> <code>{}</code></p>",
                f'<p><strong>Error:</strong> <span style="color:{colour}">{{}}</span></p>',
                e,
            )
            if failure.stderr_tail:
                parts.append(
                    '<pre style="background:#f6f6f6;padding:8px;white-space:pre-wrap">'
                    f"{e(failure.stderr_tail)}</pre>"
                )
        if message.note:
            parts.append(f"<p>{e(message.note)}</p>")
    parts.append(f'<p style="color:#888;font-size:12px">event {e(message.event_id)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


class EmailNotifier:
    kind = "email"

    def __init__(self, settings: EmailSettings, deps: Deps) -> None:
        self.name = settings.name
        self._settings = settings
        self._deps = deps
        self._password = settings.password.get_secret_value() if settings.password else None
        self._scrub = Scrubber(secret_parts(self._password) if self._password else [])
        self._port = settings.port or DEFAULT_PORTS[settings.security]
        self._tls: ssl.SSLContext | None = None
        if settings.security != "none":
            self._tls = ssl.create_default_context()
            if settings.tls_ca:
                self._tls.load_verify_locations(cadata=settings.tls_ca)
        self._renderer = renderer(settings, deps, html=True)

    def message(self, event: Event) -> EmailMessage:
        message = fit(
            self._renderer.render(event), lambda m: m, lambda _: True, field_max=FIELD_MAX
        )
        mail = EmailMessage()
        mail["Subject"] = subject(message)
        mail["From"] = self._settings.from_addr
        mail["To"] = ", ".join(self._settings.to)
        mail["Date"] = format_datetime(self._deps.clock())
        domain = self._settings.from_addr.rpartition("@")[2]
        mail["Message-ID"] = f"<{event.id}@{domain}>" if event.id else make_msgid()
        mail["X-Omics-Watcher-Event"] = event.id
        mail.set_content(f"{message.title}\n\n{plain_text(message)}\n\nevent {event.id}\n")
        mail.add_alternative(html_body(message), subtype="html")
        return mail

    async def send(self, event: Event) -> None:
        settings = self._settings
        where = f"smtp://{settings.host}:{self._port}"
        try:
            errors, _ = await aiosmtplib.send(
                self.message(event),
                hostname=settings.host,
                port=self._port,
                username=settings.username,
                password=self._password,
                use_tls=settings.security == "tls",
                start_tls=settings.security == "starttls",
                tls_context=self._tls,
                timeout=None,  # the dispatcher bounds each attempt
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refused.code for refused in exc.recipients]
            reason = f"{where}: all recipients refused ({', '.join(map(str, codes))})"
            if any(400 <= code < 500 for code in codes):
                raise Retryable(reason) from None
            raise Permanent(reason) from None
        except aiosmtplib.SMTPResponseException as exc:
            reason = f"{where}: SMTP {exc.code} {self._scrub(' '.join(exc.message.split()))}"
            if 400 <= exc.code < 500:
                raise Retryable(reason) from None
            raise Permanent(reason) from None
        except (
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPTimeoutError,
        ) as exc:
            raise Retryable(f"{where}: {type(exc).__name__}") from None
        except aiosmtplib.SMTPException as exc:
            # STARTTLS not offered, AUTH not supported, ...: configuration, not weather.
            raise Permanent(f"{where}: {type(exc).__name__}: {self._scrub(str(exc))}") from None
        except ssl.SSLError as exc:
            raise Retryable(f"{where}: TLS error {exc.reason or type(exc).__name__}") from None
        except OSError as exc:
            raise Retryable(f"{where}: {exc.strerror or type(exc).__name__}") from None
        if errors:
            self._deps.logger.warning(
                "notify_partially_refused",
                notifier=self.name,
                event_id=event.id,
                run_uuid=event.run_uuid,
                refused=sorted(errors),
            )


def _build(settings: EmailSettings, deps: Deps) -> EmailNotifier:
    return EmailNotifier(settings, deps)


KIND = Kind(settings=EmailSettings, build=_build)
