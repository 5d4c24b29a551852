"""Outcome classification, redaction, rates and notifier settings validation (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from watcher.notifiers.base import Permanent, Rate, Retryable
from watcher.notifiers.http import ApiError, classify_http, parse_retry_after
from watcher.notifiers.registry import KINDS, NotifierSettings, rates_for
from watcher.secrets import Scrubber, url_origin, url_secrets

NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
WHERE = "https://hooks.example.org"


def classify(status: int, body: bytes = b"", /, **headers: str) -> None:
    classify_http(status, headers, body, where=WHERE, now=NOW)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    classify(status)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_5xx_are_retryable(status: int) -> None:
    with pytest.raises(Retryable) as caught:
        classify(status, b"busy")
    assert caught.value.retry_after is None
    assert caught.value.reason == f"{WHERE}: HTTP {status} busy"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422])
def test_other_4xx_are_permanent(status: int) -> None:
    with pytest.raises(Permanent):
        classify(status)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_permanent(status: int) -> None:
    with pytest.raises(Permanent, match="redirect"):
        classify(status)


def test_retry_after_seconds_date_and_json() -> None:
    with pytest.raises(Retryable) as caught:
        classify(429, **{"Retry-After": "3"})
    assert caught.value.retry_after == 3.0
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    with pytest.raises(Retryable) as caught:
        classify(503, **{"Retry-After": later})
    assert caught.value.retry_after == 90.0
    with pytest.raises(Retryable) as caught:
        classify(429, b'{"retry_after": 1.5, "global": false}', **{"Retry-After": "2"})
    assert caught.value.retry_after == 2.0  # the longer of the two wishes
    with pytest.raises(Retryable) as caught:
        classify(429, **{"Retry-After": "soon"})
    assert caught.value.retry_after is None


def test_parse_retry_after_edges() -> None:
    assert parse_retry_after(None, now=NOW) is None
    assert parse_retry_after("-5", now=NOW) == 0.0
    assert parse_retry_after("nan", now=NOW) is None
    past = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past, now=NOW) == 0.0


def test_api_error_reader_decides_200_and_4xx_bodies() -> None:
    def reader(body: Any) -> ApiError | None:
        code = body.get("errcode") if isinstance(body, dict) else None
        if not code:
            return None
        return ApiError(str(code), "limited", retryable=code == 45009)

    classify_http(200, {}, b'{"errcode": 0}', where=WHERE, now=NOW, api_error=reader)
    with pytest.raises(Retryable, match="API error 45009"):
        classify_http(200, {}, b'{"errcode": 45009}', where=WHERE, now=NOW, api_error=reader)
    with pytest.raises(Retryable):
        classify_http(400, {}, b'{"errcode": 45009}', where=WHERE, now=NOW, api_error=reader)
    with pytest.raises(Permanent, match="API error 93000"):
        classify_http(200, {}, b'{"errcode": 93000}', where=WHERE, now=NOW, api_error=reader)
    classify_http(200, {}, b"not json", where=WHERE, now=NOW, api_error=reader)


def test_reasons_are_scrubbed_and_bounded() -> None:
    scrub = Scrubber(["SECRETTOKEN99"])
    with pytest.raises(Permanent) as caught:
        classify_http(
            400, {}, b"bad token SECRETTOKEN99 " + b"x" * 5000, where=WHERE, now=NOW, scrub=scrub
        )
    assert "SECRETTOKEN99" not in caught.value.reason
    assert "***" in caught.value.reason
    assert len(caught.value.reason) < 300


def test_url_origin_keeps_scheme_and_host_only() -> None:
    url = "https://user:pw@qyapi.weixin.qq.com:8443/cgi-bin/webhook/send?key=abcd-1234"
    assert url_origin(url) == "https://qyapi.weixin.qq.com:8443"
    assert url_origin("not a url") == "<invalid url>"
    secrets = url_secrets("https://hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/XXXXXXXXXXXX")
    assert {"T0AAAAAAA", "B0BBBBBBB", "XXXXXXXXXXXX"} <= set(secrets)
    assert "abcd-1234" in url_secrets(url)


def test_rate_windows() -> None:
    assert Rate(20, 60.0).windows() == ((20, 60.0),)
    assert Rate(20, 60.0, burst=5).windows() == ((20, 60.0), (5, 15.0))
    with pytest.raises(ValueError, match="rate needs"):
        Rate(0, 1.0)


def settings(raw: dict[str, Any]) -> Any:
    return TypeAdapter(NotifierSettings).validate_python(raw)


def test_rates_per_kind_and_override() -> None:
    assert rates_for(settings({"name": "w", "type": "webhook", "url": "http://x"})) == ()
    wecom = settings({"name": "w", "type": "wecom", "url": "https://q/send?key=k"})
    assert rates_for(wecom) == (Rate(20, 60.0, burst=5),)
    slow = settings({"name": "w", "type": "slack", "url": "https://s/x", "rate_per_minute": 30})
    assert rates_for(slow) == (Rate(1, 2.0),)
    assert all(kind.settings.model_config.get("extra") == "forbid" for kind in KINDS.values())


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"type": "slack", "url": "ftp://SECRETHOST/x"}, "http:// or https://"),
        ({"type": "webhook", "url": "https://x", "secret": "plain"}, "whsec_"),
        ({"type": "webhook", "url": "https://x", "secret": "whsec_AAAA"}, "16 random bytes"),
        ({"type": "webhook", "url": "https://x", "headers": {"webhook-id": "x"}}, "set by"),
        ({"type": "log", "timeout_seconds": 0}, "greater than 0"),
        ({"type": "log", "colour": "red"}, "Extra inputs"),
        (
            {
                "type": "email",
                "host": "h",
                "from_addr": "a@b",
                "to": ["c@d"],
                "security": "none",
                "username": "u",
                "password": "pw",
            },
            "starttls",
        ),
        ({"type": "email", "host": "h", "from_addr": "nobody", "to": ["c@d"]}, "email address"),
    ],
)
def test_invalid_settings(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings({"name": "n", **raw})
    text = str(caught.value)
    assert problem in text
    assert "SECRETHOST" not in str(caught.value.errors(include_input=False, include_url=False))


def test_name_pattern() -> None:
    with pytest.raises(ValidationError):
        settings({"name": "has space", "type": "log"})
    assert settings({"name": "ops-team_1.x", "type": "log"}).name == "ops-team_1.x"
