"""Fitting a message into a destination's size limit without losing what matters.

:func:`fit` renders a :class:`~watcher.notifiers.render.Message` with the destination's
builder and, while the result is too large, renders smaller versions: first the end of the
stderr is shortened, then the error is cut to its first line and that line shortened, then a
custom body, then the facts. The title and the status line always stay; every cut is marked
with ``…``. Every free-text field is bounded up front, so even a 1 MB error costs only a few
renderings. A message with ``compact_facts`` (digests, roll-ups) tries those first: they
shorten its lists with an explicit ``+K more`` instead of cutting them. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TypeVar

from watcher.notifiers.render import Failure, Message, clip, first_line

DEFAULT_FIELD_MAX = 8000

T = TypeVar("T")


def _cap(message: Message, limit: int) -> Message:
    """Bound every free-text field up front, so even a 1 MB error costs little to fit."""
    failure = message.failure
    if failure is not None:
        failure = Failure(
            task=clip(failure.task, min(limit, 500)),
            message=clip(failure.message, limit),
            stderr_tail=clip(failure.stderr_tail, limit, keep_end=True),
        )
    return dataclasses.replace(
        message,
        summary=clip(message.summary, min(limit, 500)),
        facts=tuple((clip(k, 100), clip(v, min(limit, 1000))) for k, v in message.facts),
        failure=failure,
        note=clip(message.note, min(limit, 1000)),
        body=None if message.body is None else clip(message.body, limit),
        body_html=None if message.body_html is None else clip(message.body_html, limit),
    )


def _halvings(length: int, floor: int) -> Iterator[int]:
    while length > floor:
        length //= 2
        yield max(length, floor)
        if length <= floor:
            return


def _shrinking(message: Message) -> Iterator[Message]:
    """Successively smaller versions of ``message``; the title and summary always stay."""
    current = message
    for facts in message.compact_facts:  # a digest's own smaller forms come first
        current = dataclasses.replace(current, facts=facts)
        yield current
    failure = current.failure
    if failure is not None and failure.stderr_tail:
        for size in _halvings(len(failure.stderr_tail), 64):
            failure = dataclasses.replace(
                failure, stderr_tail=clip(failure.stderr_tail, size, keep_end=True)
            )
            current = dataclasses.replace(current, failure=failure)
            yield current
        failure = dataclasses.replace(failure, stderr_tail="")
        current = dataclasses.replace(current, failure=failure)
        yield current
    if failure is not None and failure.message:
        failure = dataclasses.replace(failure, message=first_line(failure.message))
        current = dataclasses.replace(current, failure=failure)
        yield current
        for size in _halvings(len(failure.message), 80):
            failure = dataclasses.replace(failure, message=clip(failure.message, size))
            current = dataclasses.replace(current, failure=failure)
            yield current
    if current.body is not None:
        for size in _halvings(len(current.body), 40):
            body_html = current.body_html
            if body_html is not None:
                body_html = clip(body_html, size)
            current = dataclasses.replace(
                current, body=clip(current.body, size), body_html=body_html
            )
            yield current
    for size in (200, 60):
        current = dataclasses.replace(
            current, facts=tuple((k, clip(v, size)) for k, v in current.facts)
        )
        yield current
    if failure is not None:
        failure = dataclasses.replace(failure, task=clip(failure.task, 60))
        current = dataclasses.replace(current, failure=failure, note="")
        yield current
    current = dataclasses.replace(current, facts=current.facts[:2], note="")
    yield current
    yield dataclasses.replace(
        current, facts=(), failure=None, body=None if current.body is None else "", body_html=None
    )


def fit(
    message: Message,
    build: Callable[[Message], T],
    fits: Callable[[T], bool],
    *,
    field_max: int = DEFAULT_FIELD_MAX,
) -> T:
    """The largest rendering of ``message`` that ``fits``, shrinking the long parts first.

    If even the bare title and status line do not fit, that bare rendering is returned:
    the builder is expected to hard-clip its own parts to the destination's field limits.
    """
    current = _cap(message, field_max)
    payload = build(current)
    if fits(payload):
        return payload
    for smaller in _shrinking(current):
        payload = build(smaller)
        if fits(payload):
            return payload
    return payload
