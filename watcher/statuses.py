"""The run-status vocabulary: what each status means, decided in one place.

Renderers (``✅``/``❌``/``⚠️``/``🔄``), enrichment (look for a failure reason or not), digests and
run-group roll-ups (succeeded / failed / other / running) all ask one :class:`Statuses`, built
from :class:`StatusOptions` by the composition root and passed to them, so they cannot
disagree about a status.

The rules, from the configured terminal statuses (``[polling] terminal_statuses``) and the
names the watcher knows:

- **severity** (``success`` / ``failure`` / ``warning`` / ``info`` = in progress), by name,
  case-insensitively: a success name (``SUCCESS``, ``COMPLETE``, ``SUCCEEDED``, ``COMPLETED``) is
  a success; a failure name (``EXECUTOR_ERROR``, ``FAILED``, ... and anything ending in
  ``_ERROR``) a failure; a warning name (cancellation, preemption) a warning. A *terminal*
  status with a name the watcher does not know (an operator added ``ABORTED``) is a warning:
  the run finished but the watcher cannot tell how, so it asks for a look (⚠️) rather than
  raising a false alarm (❌) or showing it as still running (🔄). Any other status is ``info``.
- **is failing** (enrichment looks for the failing task): terminal *and* a failure. So a
  configured ``SUCCEEDED`` or ``COMPLETED`` is never enriched, and what is enriched is exactly
  what renders ❌ and counts as failed.
- **category** of a run in digests and roll-ups: ``attention`` (no longer known to the API),
  ``running`` (not terminal), else ``failed`` / ``succeeded`` by severity, else ``other``.

``PREEMPTED`` is a warning, not a failure: the platform reclaimed the run's machines. Nothing in
the workflow failed, so there is no failing task to find (GetRunCalls would show tasks killed
from outside, and their stderr ends wherever the kill landed, which reads like a cause and is
not one); the operator's remedy is to resubmit, as after a cancellation. It renders ⚠️, counts
as "other finished" beside ``CANCELED``, and costs no GetRunCalls/GetRunJobLog requests.

Pure: no I/O; a :class:`Statuses` is immutable and shared by every component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["success", "failure", "warning", "info"]
Category = Literal["failed", "attention", "other", "succeeded", "running"]

DEFAULT_TERMINAL: tuple[str, ...] = (
    "SUCCESS",
    "COMPLETE",
    "EXECUTOR_ERROR",
    "SYSTEM_ERROR",
    "COMPLETE_ERROR",
    "CANCELED",
    "FAILED",
    "PREEMPTED",
)
SUCCESS_NAMES = frozenset({"SUCCESS", "COMPLETE", "SUCCEEDED", "COMPLETED"})
FAILURE_NAMES = frozenset({"EXECUTOR_ERROR", "SYSTEM_ERROR", "COMPLETE_ERROR", "FAILED", "ERROR"})
WARNING_NAMES = frozenset({"CANCELED", "CANCELLED", "CANCELING", "PREEMPTED"})
FAILURE_SUFFIX = "_ERROR"


@dataclass(frozen=True, slots=True)
class StatusOptions:
    """What the vocabulary is built from: the configured terminal statuses and the known names.

    ``terminal`` is compared exactly (as :func:`watcher.transitions.is_terminal` does); the
    name sets are compared upper-cased.
    """

    terminal: frozenset[str] = frozenset(DEFAULT_TERMINAL)
    success: frozenset[str] = SUCCESS_NAMES
    failure: frozenset[str] = FAILURE_NAMES
    warning: frozenset[str] = WARNING_NAMES


class Statuses:
    """Severity, category and "is failing" of run statuses; see the module docstring."""

    __slots__ = ("_failing", "_failure", "_success", "_terminal", "_warning")

    def __init__(self, options: StatusOptions | None = None) -> None:
        options = options or StatusOptions()
        self._terminal = frozenset(options.terminal)
        self._success = frozenset(s.upper() for s in options.success)
        self._failure = frozenset(s.upper() for s in options.failure)
        self._warning = frozenset(s.upper() for s in options.warning)
        self._failing = frozenset(s for s in self._terminal if self.is_failing(s))

    @property
    def terminal(self) -> frozenset[str]:
        """The configured terminal statuses."""
        return self._terminal

    @property
    def failing(self) -> frozenset[str]:
        """The configured terminal statuses whose transition gets a failure reason."""
        return self._failing

    def is_terminal(self, status: str | None) -> bool:
        return status is not None and status in self._terminal

    def severity(self, status: str | None) -> Severity:
        if status is None:
            return "info"
        upper = status.upper()
        if upper in self._success:
            return "success"
        if upper in self._failure or upper.endswith(FAILURE_SUFFIX):
            return "failure"
        if upper in self._warning or status in self._terminal:
            return "warning"
        return "info"

    def is_failing(self, status: str | None) -> bool:
        """Whether a transition into ``status`` is a failure worth explaining (enrichment)."""
        return self.is_terminal(status) and self.severity(status) == "failure"

    def is_failed_call(self, status: str | None) -> bool:
        """Whether a task (GetRunCalls item) with this status failed.

        By name only: calls have no configured terminal set (Cromwell's own ``Failed``,
        WES-style ``EXECUTOR_ERROR``).
        """
        return self.severity(status) == "failure"

    def category(self, status: str | None, *, terminal: bool, stopped: bool = False) -> Category:
        """How a run counts in a digest or roll-up; ``terminal`` and ``stopped`` as recorded."""
        if stopped:
            return "attention"
        if not terminal:
            return "running"
        severity = self.severity(status)
        if severity == "failure":
            return "failed"
        if severity == "success":
            return "succeeded"
        return "other"


# The vocabulary of the default configuration, for callers that are given none (tests,
# examples, one-off renderings). Immutable, so sharing it is safe.
DEFAULT_STATUSES = Statuses()
