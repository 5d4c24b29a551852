"""Routes: which notifiers an event goes to. Pure: no I/O, no state.

With no routes, every event goes to every notifier. Otherwise an event goes to the union of
the notifiers of every route that matches it, in the order the notifiers are configured,
without duplicates. A route matches when *all* of the filters it gives match:

* ``types``: the event type (``run.status_changed``, ``run.stuck``, ``run.not_found``);
* ``statuses``: the event's ``status``; ``from_statuses``: its ``previous_status``
  (a first observation has none, so ``from_statuses`` never matches it);
* ``terminal_only``: the new status is terminal;
* ``projects``: the run's project id;
* ``labels``: every given ``key = "value"`` is among the run's labels.

Status and type comparisons are exact (Tencent's statuses are upper case).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from watcher.events import Event


class RouteSettings(BaseModel):
    """One ``[[routes]]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    notifiers: list[str] = Field(min_length=1)
    statuses: list[str] | None = None
    from_statuses: list[str] | None = None
    terminal_only: bool = False
    projects: list[str] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    types: list[str] | None = None

    def matches(self, event: Event) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        if self.statuses is not None and event.status not in self.statuses:
            return False
        if self.from_statuses is not None and event.previous_status not in self.from_statuses:
            return False
        if self.terminal_only and not event.terminal:
            return False
        if self.projects is not None and event.project_id not in self.projects:
            return False
        if self.labels:
            labels = event.labels
            if any(labels.get(key) != value for key, value in self.labels.items()):
                return False
        return True


def select(
    event: Event, routes: Sequence[RouteSettings], notifier_names: Iterable[str]
) -> list[str]:
    """The notifiers ``event`` goes to, in ``notifier_names`` order, each once.

    Names a route lists that are not in ``notifier_names`` are ignored (configuration
    validation refuses them; this keeps a reload race harmless).
    """
    names = list(dict.fromkeys(notifier_names))
    if not routes:
        return names
    wanted: set[str] = set()
    for route in routes:
        if route.matches(event):
            wanted.update(route.notifiers)
    return [name for name in names if name in wanted]
