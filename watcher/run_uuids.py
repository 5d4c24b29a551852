"""What a run UUID looks like, said once for every surface that takes one.

The CLI, the admin API and the status page all accept a run UUID in any letter case and
store it in lower case; they refuse anything else with the same words, so a user who makes
the same mistake in ``/v1/events?run_uuid=`` and ``/v1/runs/{run_uuid}/events`` is told the
same thing.
"""

from __future__ import annotations

import re

RUN_UUID = re.compile(r"(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Why a value is not a run UUID, after ``run_uuid:`` (API) or the value (CLI).
RUN_UUID_HINT = "must be a canonical UUID (8-4-4-4-12 hex digits)"


def canonical_run_uuid(text: str) -> str | None:
    """``text`` in lower case if it is a run UUID (8-4-4-4-12 hex digits), else ``None``."""
    return text.lower() if RUN_UUID.fullmatch(text) else None
