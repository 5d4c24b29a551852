"""Bounds on what users hand the watcher: how deep configuration values nest, and labels.

Why: every one of these inputs is copied somewhere costly or walked recursively. A value nested
a thousand levels deep made the loader die with ``RecursionError`` (exit 1, which systemd
restarts forever) instead of a configuration error (exit 2); labels are copied into every
event, delivery and log line of their run, so one ``--label`` of a megabyte costs that much
again for each status change. The limits live here, in one place, so ``track``, the admin API,
``[[watch]] labels`` and the store all refuse the same things with the same words.

Everything here is pure and iterative (no recursion on user data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Levels of tables and arrays below the top of the configuration. The deepest real key
#: (``watch[0].filters.Status[0]``) is four levels down; sixteen leaves room for any layout.
MAX_CONFIG_DEPTH = 16

#: Labels: at most this many per run, each key and value at most this many characters.
MAX_LABELS = 32
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256


def too_deep(value: Any, limit: int = MAX_CONFIG_DEPTH, where: str = "") -> str | None:
    """The key path (``notifiers[0].headers``) of the first table or array nested more than
    ``limit`` levels below ``value``; ``None`` if there is none. ``where`` prefixes paths."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict):
            children = [(f"{path}.{key}" if path else str(key), v) for key, v in node.items()]
        elif isinstance(node, list):
            children = [(f"{path}[{index}]", v) for index, v in enumerate(node)]
        else:
            continue
        if depth >= limit:
            return path or "config"
        stack.extend((child, child_path, depth + 1) for child_path, child in reversed(children))
    return None


def depth_problem(path: str, limit: int = MAX_CONFIG_DEPTH) -> str:
    return f"{path}: nested more than {limit} levels deep"


def _skip_string(text: str, start: int) -> int:
    """Index just past the TOML string starting at ``start`` (basic, literal or multi-line)."""
    quote = text[start]
    if text.startswith(quote * 3, start):
        end = start + 3
        while True:
            found = text.find(quote * 3, end)
            if found < 0:
                return len(text)
            if quote == '"' and _escaped(text, found):
                end = found + 1
                continue
            return found + 3
    index = start + 1
    while index < len(text) and text[index] not in (quote, "\n"):
        index += 2 if quote == '"' and text[index] == "\\" else 1
    return index + 1


def _escaped(text: str, index: int) -> bool:
    backslashes = 0
    while index - backslashes - 1 >= 0 and text[index - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def toml_deep_key(text: str, limit: int = MAX_CONFIG_DEPTH) -> str | None:
    """Where a TOML document nests arrays or inline tables more than ``limit`` deep.

    A best-effort scan for the error message only (the parser recurses once per level and
    gives up with ``RecursionError`` long before saying where): ``table.key (line N)``.
    """
    depth, table, key, line = 0, "", "", 1
    index, at_line_start = 0, True
    while index < len(text):
        char = text[index]
        if char == "\n":
            line, at_line_start = line + 1, True
            index += 1
            continue
        if char in " \t\r":
            index += 1
            continue
        if char in "\"'":
            index = _skip_string(text, index)
            at_line_start = False
            continue
        if char == "#":
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline
            continue
        if depth == 0 and at_line_start:
            end = text.find("\n", index)
            end = len(text) if end < 0 else end
            if char == "[":  # a table header
                table = text[index:end].split("#", 1)[0].strip().strip("[]").strip()
            else:
                key = text[index:end].split("=", 1)[0].strip()
        if char in "[{" and not (depth == 0 and at_line_start):
            depth += 1
            if depth > limit:
                name = f"{table}.{key}" if table else key
                return f"{name[:200]} (line {line})"
        elif char in "]}" and depth:
            depth -= 1
        if depth == 0 and at_line_start and char == "[":
            end = text.find("\n", index)
            index = len(text) if end < 0 else end
            continue
        at_line_start = False
        index += 1
    return None


def label_problems(labels: Mapping[str, str], *, name_keys: bool = True) -> list[str]:
    """Why ``labels`` cannot be attached to a run (``[]`` when they can), one reason each.

    Reasons name a label by the start of its key (``name_keys``; the HTTP API, which echoes
    no input, names it by its position instead) and never echo a value.
    """
    problems = []
    if len(labels) > MAX_LABELS:
        problems.append(f"{len(labels)} labels; at most {MAX_LABELS} per run")
    for position, (key, value) in enumerate(labels.items()):
        shown = repr(key[:20] + ("..." if len(key) > 20 else "")) if name_keys else ""
        shown = shown or f"label {position + 1}"
        if not key.strip():
            problems.append("label keys must not be empty")
        elif len(key) > MAX_LABEL_KEY:
            problems.append(f"key {shown} is {len(key)} characters; at most {MAX_LABEL_KEY}")
        if len(value) > MAX_LABEL_VALUE:
            problems.append(
                f"value of {shown} is {len(value)} characters; at most {MAX_LABEL_VALUE}"
            )
    return problems


class LabelError(ValueError):
    """Labels refused by :func:`label_problems`; ``problems`` holds the reasons."""

    def __init__(self, run_uuid: str, problems: list[str]) -> None:
        super().__init__(f"labels of {run_uuid}: {'; '.join(problems)}")
        self.run_uuid = run_uuid
        self.problems = problems


def check_labels(run_uuid: str, labels: Mapping[str, str]) -> None:
    """Raise :class:`LabelError` if ``labels`` are out of bounds."""
    problems = label_problems(labels)
    if problems:
        raise LabelError(run_uuid, problems)
