"""Pydantic models for what the Omics API returns: RunMetadata, DescribeRuns items, filters.

Invariants:

- ``raw`` is the exact JSON object the API returned for that item, untouched; events carry it.
- Lenient: a field of the wrong type falls back to its default (``None``) instead of failing
  the whole answer (numbers are accepted as text, and pydantic's lax rules apply otherwise),
  and unknown fields are kept (``extra="allow"``). The exceptions are
  the fields the watcher cannot work without (``Status``, and ``RunUuid`` for list items): when
  one is missing, not a string or blank, the answer is malformed and :class:`Transient`
  ``MalformedResponse`` is raised, so the poll is retried later and never becomes a transition
  (a blank status would otherwise read as two status changes around a glitch).
- Fields stay as the API's text. RFC 3339 times are parsed on property access (``end_time``,
  ``update_time``), never at construction, and JSON kept inside strings (Input, Output,
  Runtime, Meta, ErrorMessage) by :func:`parse_json_text` where it is read, so a poll costs no
  more than reading the fields the caller uses.

Cost: the well-formed case is a single pydantic-core validation (about 8 µs for a
RunMetadata, measured; ``model_construct`` plus Python-side checks was slower), with a
``wrap`` validator that only does Python work when a field is bad. ``from_api`` and
``model_validate`` therefore follow the same rules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from watcher.omics.errors import Transient

JsonText = dict[str, Any] | list[Any] | str


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time with offset as an aware UTC datetime; ``None`` for ``""`` or junk.

    A time without an offset is not RFC 3339 and its zone is unknown, so it is ``None`` too.
    """
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(UTC)


def parse_json_text(text: str | None) -> JsonText | None:
    """A JSON object or array kept inside a string, parsed; otherwise the text as it is."""
    if text is None:
        return None
    stripped = text.lstrip()
    if not stripped or stripped[0] not in "[{":
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict | list):
        return value
    return text


def required_text(data: dict[str, Any], key: str, owner: str) -> str:
    """``data[key]`` when it is non-blank text; :class:`Transient` ``MalformedResponse`` if not.

    The check behind ``_required`` fields, also used alone where only that field is read
    (a quiet poll needs the Status of a GetRunStatus answer, not the whole model).
    """
    value = data.get(key)
    if isinstance(value, str) and value.strip():
        return value
    if value is None:
        state = "missing"
    elif isinstance(value, str):
        state = "blank"
    else:
        state = f"a {type(value).__name__}, not a string"
    raise Transient("MalformedResponse", f"{owner}.{key} is {state}")


class _ApiObject(BaseModel):
    """Shared leniency: bad fields dropped to their default, required text checked, raw kept."""

    model_config = ConfigDict(extra="allow", frozen=True, coerce_numbers_to_str=True)

    _required: ClassVar[tuple[str, ...]] = ()
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _lenient(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} is a {type(data).__name__}, not an object")
        for key in cls._required:
            required_text(data, key, cls.__name__)
        try:
            model = handler(data)
        except ValidationError as exc:
            # Drop only the offending top-level fields and validate once more; nested models
            # are lenient themselves, so what still fails here is a whole field of junk.
            bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
            try:
                model = handler({k: v for k, v in data.items() if k not in bad})
            except ValidationError as again:
                fields = sorted({str(err["loc"][0]) for err in again.errors() if err["loc"]})
                raise Transient(
                    "MalformedResponse", f"{cls.__name__}: unusable fields {fields}"
                ) from None
        model._raw = data
        return model

    @property
    def raw(self) -> dict[str, Any]:
        """The object exactly as the API returned it (what events carry)."""
        return self._raw

    @classmethod
    def from_api(cls, obj: object) -> Self:
        """Parse one API object; :class:`Transient` ``MalformedResponse`` when unusable."""
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:  # only when ``obj`` is not an object at all
            raise Transient("MalformedResponse", f"{cls.__name__}: not an object") from exc


class RunMetadata(_ApiObject):
    """One GetRunStatus ``Metadata`` object, or one GetRunCalls item (a task or sub-workflow).

    Field names are Tencent's; ``end_time`` is EndTime parsed.
    """

    _required: ClassVar[tuple[str, ...]] = ("Status",)

    RunType: str | None = None
    RunId: str | None = None
    ParentId: str | None = None
    JobId: str | None = None
    CallName: str | None = None
    ScatterIndex: str | None = None
    Input: str | None = None
    Output: str | None = None
    Status: str
    ErrorMessage: str | None = None
    StartTime: str | None = None
    SubmitTime: str | None = None
    EndTime: str | None = None
    Command: str | None = None
    Runtime: str | None = None
    Preprocess: bool | None = None
    PostProcess: bool | None = None
    CallCached: bool | None = None
    WorkDir: str | None = None
    Stdout: str | None = None
    Stderr: str | None = None
    Meta: str | None = None

    @property
    def end_time(self) -> datetime | None:
        return parse_time(self.EndTime)


class RunExecutionTime(_ApiObject):
    """``Run.ExecutionTime`` of a DescribeRuns item."""

    SubmitTime: str | None = None
    StartTime: str | None = None
    EndTime: str | None = None


class RunSummary(_ApiObject):
    """One item of DescribeRuns ``Runs``: enough to poll many runs with one request."""

    _required: ClassVar[tuple[str, ...]] = ("RunUuid", "Status")

    RunUuid: str
    ProjectId: str | None = None
    RunGroupId: str | None = None
    ApplicationId: str | None = None
    UserDefinedId: str | None = None
    Status: str
    ExecutionTime: RunExecutionTime | None = None
    ErrorMessage: str | None = None
    CreateTime: str | None = None
    UpdateTime: str | None = None

    @property
    def update_time(self) -> datetime | None:
        return parse_time(self.UpdateTime)


@dataclass(frozen=True, slots=True)
class RunsFilter:
    """One DescribeRuns filter: several ``values`` are ORed; several filters are ANDed."""

    name: str
    values: Sequence[str]

    def to_api(self) -> dict[str, Any]:
        return {"Name": self.name, "Values": list(self.values)}
