"""The log masker: configured secrets never reach a log line, whatever carries them."""

from __future__ import annotations

import io
import json
import logging

import structlog

from watcher.service.logs import SecretMasker, StdlibBridge, configure


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
        _drop_bridges()


def test_json_exceptions_are_one_line_with_type_message_and_place() -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out)
    try:
        log = structlog.get_logger("t")
        try:
            raise OSError(24, "Too many open files\nsecond line")
        except OSError:
            log.exception("http_accept_failed", port=1)
        lines = out.getvalue().splitlines()
        assert len(lines) == 1
        line = json.loads(lines[0])
        assert line["event"] == "http_accept_failed"
        assert line["exception"] == "OSError: [Errno 24] Too many open files second line"
        assert line["exception_at"].startswith("test_logs.py:")
        assert "Traceback" not in lines[0]
    finally:
        structlog.reset_defaults()
        _drop_bridges()


def _drop_bridges() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)


def test_stdlib_records_are_json_lines_rate_limited_per_message() -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out)
    clock = [100.0]
    bridge = StdlibBridge(every=10.0, clock=lambda: clock[0])
    record_logger = logging.getLogger("asyncio.w7test")
    record_logger.propagate = False
    record_logger.addHandler(bridge)
    try:
        for _ in range(500):  # what a storm of failed accept() calls looks like
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                record_logger.exception("socket.accept() out of system resource")
        record_logger.warning("another message %s", "once")
        clock[0] += 10.0
        record_logger.error("socket.accept() out of system resource")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line["event"] for line in lines] == [
            "socket.accept() out of system resource",
            "another message once",
            "socket.accept() out of system resource",
        ]
        assert lines[0]["exception"] == "OSError: [Errno 24] Too many open files"
        assert lines[0]["logger"] == "asyncio.w7test"
        assert lines[0]["level"] == "error"
        assert lines[2]["suppressed"] == 499
    finally:
        record_logger.removeHandler(bridge)
        record_logger.propagate = True
        structlog.reset_defaults()
        _drop_bridges()
