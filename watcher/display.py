"""Text for people's terminals: control characters escaped, in one place.

Why: labels, run UUIDs given on the command line, project ids, TOML keys and API answers are
other people's text. Printed raw, an ESC (``\\x1b``) or a C1 control (``\\x9b``) in a label
re-programs the reader's terminal (colours, title, cursor, on some terminals far worse), and
a right-to-left override (U+202E) makes ``list`` show something other than what is stored.
Every human-readable output (``list``, error lines, ``status``/``check-config`` JSON, the
console log) goes through :func:`printable`; machine output stays as stored, because JSON
already escapes C0 controls and ``--json`` readers want the exact value.

The escaped form is Python's (``\\x1b``, ``\\u202e``), or JSON's (``\\u001b``) inside JSON
text, where it stays valid JSON meaning the same string. Backslashes are left alone, so
escaping twice changes nothing (error lines that already hold a ``repr`` stay readable).
Times on a terminal are relative (:func:`ago`): "3m ago" answers "is it still polled?" at a
glance; machine output keeps ISO 8601.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

# C0 controls, DEL, C1 controls, line/paragraph separators, and the bidirectional controls
# (embeddings, overrides, isolates, marks) that reorder what the terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, json_text: bool = False, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as an escape sequence.

    ``json_text``: ``text`` is JSON; escapes are JSON's (``\\u009b``), so it stays valid.
    ``keep_newlines``: leave ``\\n`` as it is (multi-line log fields such as tracebacks).
    """

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if (keep_newlines and char == "\n") or (json_text and char < " "):
            return char  # JSON escapes C0 inside strings itself; outside, it is layout
        code = ord(char)
        if json_text or code > 0xFF:
            return f"\\u{code:04x}"
        return f"\\x{code:02x}"

    return _UNSAFE.sub(escape, text)


def printable_json(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON for a terminal: readable non-ASCII text, escaped controls."""
    return printable(json.dumps(value, ensure_ascii=False, indent=indent), json_text=True)


def ago(moment: datetime | None, now: datetime) -> str:
    """``moment`` relative to ``now`` for a terminal: ``12s ago``, ``3m ago``, ``5h ago``,
    ``4d ago``; ``-`` for none. A moment a little ahead (another clock) is ``just now``."""
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
