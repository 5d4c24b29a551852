"""The silence form of the status page (watcher.ui.lists): what it makes of its fields, with
the CLI's rules, and the dead letters page's paging and ticked ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from multidict import MultiDict

from watcher.delivery.silencing import SilenceError
from watcher.store.history import DeadLetter
from watcher.ui.lists import (
    DEAD_PER_PAGE,
    LABEL_ROWS,
    SilenceForm,
    dead_letters_view,
    delivery_ids,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RUN = "0A1B2C3D-0000-4000-8000-000000000001"


def form(*pairs: tuple[str, str]) -> SilenceForm:
    return SilenceForm.from_fields(MultiDict(pairs))


def test_the_builders_fields_become_the_clis_matchers() -> None:
    given = form(
        ("run_uuid", RUN),
        ("status", "FAILED"),
        ("label_name", "run_group"),
        ("label_value", "batch 7"),
        ("label_name", ""),
        ("label_value", ""),
        ("duration", "90m"),
        ("notifier", "hook"),
        ("notifier", "hook"),
        ("comment", "rerun"),
    )
    assert given.matchers() == {
        "run_uuid": RUN.lower(),
        "status": "FAILED",
        "label.run_group": "batch 7",
    }
    assert given.ends_at(NOW) == NOW + timedelta(minutes=90)
    assert given.checked_notifiers({"hook", "chat"}) == ["hook"]
    assert given.checked_comment() == "rerun"
    assert len(given.labels) == LABEL_ROWS  # the rows shown again, padded


def test_a_query_string_prefills_the_form() -> None:
    prefill = SilenceForm.from_fields(MultiDict([("label.run_group", "b7")]), defaults=True)
    assert prefill.labels[0] == ("run_group", "b7")
    assert prefill.duration == "2h"
    assert SilenceForm.from_fields(MultiDict([("run_uuid", RUN)])).keys["run_uuid"] == RUN


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ([("duration", "1h")], "at least one matcher"),
        ([("status", "FAILED"), ("duration", "soon")], "duration 'soon'"),
        ([("status", "FAILED"), ("duration", "1h"), ("until", "2027-01-01T00:00")], "not both"),
        ([("status", "FAILED")], "either a duration"),
        ([("label_name", ""), ("label_value", "x"), ("duration", "1h")], "needs a label name"),
        ([("label_name", "team"), ("label_value", ""), ("duration", "1h")], "label.team"),
        ([("status", "FAILED"), ("until", "2026-11-30T11:00")], "in the future"),
    ],
)
def test_a_form_that_cannot_be_used_says_why(pairs: list[tuple[str, str]], reason: str) -> None:
    given = form(*pairs)

    def use() -> None:
        given.matchers()
        given.ends_at(NOW)

    with pytest.raises(SilenceError, match=reason):
        use()


def test_an_end_time_is_utc_unless_it_says_otherwise() -> None:
    assert form(("until", "2026-12-01T18:00")).ends_at(NOW) == datetime(
        2026, 12, 1, 18, 0, tzinfo=UTC
    )
    eight = form(("until", "2026-12-01T18:00+08:00")).ends_at(NOW)
    assert eight == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def test_unknown_notifiers_are_refused_without_naming_them() -> None:
    with pytest.raises(SilenceError) as caught:
        form(("notifier", "secret-thing")).checked_notifiers({"hook"})
    assert "secret-thing" not in str(caught.value)


def letter(i: int) -> DeadLetter:
    return DeadLetter(i, "hook", f"evt-{i}", RUN.lower(), "run.status_changed", NOW, 3, "503")


def test_dead_letter_pages_and_ticked_ids() -> None:
    found = [letter(i) for i in range(200, 200 - DEAD_PER_PAGE - 1, -1)]
    view = dead_letters_view(found, total=500)
    assert len(view.letters) == DEAD_PER_PAGE
    assert view.next_before == view.letters[-1].id
    assert dead_letters_view(found[:3], total=3).next_before is None
    assert delivery_ids(MultiDict([("id", "7"), ("id", "3"), ("id", "7")]), limit=5) == [3, 7]
    for bad in ("-1", "0", "x", "1" * 19):
        with pytest.raises(ValueError, match="positive integer"):
            delivery_ids(MultiDict([("id", bad)]), limit=5)
    with pytest.raises(ValueError, match="at most 1"):
        delivery_ids(MultiDict([("id", "1"), ("id", "2")]), limit=1)
