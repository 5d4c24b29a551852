"""What a SIGHUP cannot apply: the key paths that changed outside the reloadable sections.

A reload replaces the notifier set (notifiers, routes, mute intervals) as one; everything
else (polling, state, server, tencentcloud, watch, stuck, daemon, logging) was read once
when the daemon was built and stays as it was until a restart. An operator who edits
``[polling] interval_seconds`` and sends SIGHUP must learn that it did nothing, and which
edit it was, rather than believe it applied: :func:`unapplied_keys` names every key path
whose value differs between the settings in force and the file just read.

Only paths are ever returned, never values, so a changed secret can be named
(``tencentcloud.secret_key``) without being shown. :func:`unapplied_keys` is pure;
:func:`report_unapplied` writes the one log line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

# Top-level sections a reload applies (the notifier set: watcher.notifier_set).
RELOADABLE: frozenset[str] = frozenset({"notifiers", "routes", "mute_intervals"})


def unapplied_keys(
    running: BaseModel, loaded: BaseModel, *, reloadable: frozenset[str] = RELOADABLE
) -> list[str]:
    """Dotted key paths (``polling.interval_seconds``, ``watch[1].labels``) that differ
    between ``running`` and ``loaded`` outside ``reloadable``, in a stable order."""
    old, new = _plain(running), _plain(loaded)
    paths: list[str] = []
    for section in sorted(set(old) | set(new)):
        if section not in reloadable:
            paths.extend(_differences(old.get(section), new.get(section), section))
    return paths


def _plain(settings: BaseModel) -> dict[str, Any]:
    # model_dump keeps SecretStr objects, which compare by their secret value: a changed
    # secret is found without its value ever leaving the model.
    return settings.model_dump()


def _differences(old: Any, new: Any, path: str) -> Iterator[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            yield from _differences(old.get(key), new.get(key), f"{path}.{key}")
    elif _is_list(old) and _is_list(new) and len(old) == len(new):
        for index, (left, right) in enumerate(zip(old, new, strict=True)):
            yield from _differences(left, right, f"{path}[{index}]")
    elif old != new:
        yield path


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def report_unapplied(running: BaseModel, loaded: BaseModel, log: Any) -> list[str]:
    """One ``reload_needs_restart`` warning naming every key a reload left as it was (none
    when nothing else changed); returns the paths."""
    paths = unapplied_keys(running, loaded)
    if paths:
        log.warning(
            "reload_needs_restart",
            keys=paths,
            applied=sorted(RELOADABLE),
            hint="these keys changed in the configuration but take effect only after a "
            "restart; the daemon keeps running with their old values",
        )
    return paths
