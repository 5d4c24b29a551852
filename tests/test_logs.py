"""The log masker: configured secrets never reach a log line, whatever carries them."""

from __future__ import annotations

import io
import json

import structlog

from watcher.service.logs import SecretMasker, configure


def test_masks_secrets_in_values_nested_values_and_exceptions() -> None:
    masker = SecretMasker(["s3cr3t-key-value", "abc"])  # "abc" is too short to mask safely
    event = masker(
        None,
        "info",
        {
            "event": "poll_failed",
            "error": "server said: bad key s3cr3t-key-value",
            "nested": {"list": ["x s3cr3t-key-value y"]},
            "exc": ValueError("s3cr3t-key-value"),
            "word": "abc",
        },
    )
    text = json.dumps(event)
    assert "s3cr3t-key-value" not in text
    assert event["error"] == "server said: bad key ***"
    assert event["word"] == "abc"


def test_secrets_added_later_are_masked_end_to_end() -> None:
    out = io.StringIO()
    masker = configure(fmt="json", secrets=["first-secret-1"], stream=out)
    try:
        log = structlog.get_logger("t")
        masker.add(["second-secret-2"])
        log.info("reloaded", a="first-secret-1", b="url?token=second-secret-2")
        line = json.loads(out.getvalue().splitlines()[-1])
        assert line["a"] == "***"
        assert line["b"] == "url?token=***"
    finally:
        structlog.reset_defaults()
