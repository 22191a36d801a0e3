"""Segments: contacts chosen by conditions on their fields, custom fields and lists.

A condition is ``{"field": ..., "op": ..., "value": ...}``; ``match`` is ``all`` or ``any``.

- ``phone``, ``email``, ``first_name``, ``last_name``, ``company``: the text ops, equals,
  not_equals, contains, not_contains, is_empty, not_empty;
- ``custom.<key>`` (any custom field): the text ops, and before / after (the value read
  as an ISO date);
- ``created_at``: before, after, equals (that day, in the tenant's timezone);
- ``opted_out``: equals, not_equals (``true`` / ``false``);
- ``list``: in_list, not_in_list (value: the list's id).

Text comparisons ignore case. Dates are written ``YYYY-MM-DD``; ``before`` is strictly
before that day and ``after`` strictly after it. A custom field compares as a date when it
starts with ``YYYY-MM-DD`` (so ``2024-05-01T10:00`` counts); other values never match
``before`` or ``after``. ``not_equals`` and ``not_contains`` match contacts without the
field. :func:`custom_field_text` reads a custom field on PostgreSQL (JSONB ``->>``) and
SQLite (``json_each``), whatever characters its name holds.

Validate with :func:`validate_conditions` (messages for the user); building a filter from
invalid conditions raises :class:`SegmentError`, never matching more than was asked for.
Queries run through the session, so they see only the current tenant's contacts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from tenants.contacts import Contact, ContactListMember, Segment
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import current_tenant_id

MAX_CONDITIONS = 50
MAX_LIST_ID = 2**31 - 1  # list ids are INTEGER: a larger number names no list
MATCHES = ("all", "any")

TEXT_OPS = ("equals", "not_equals", "contains", "not_contains", "is_empty", "not_empty")
DATE_OPS = ("before", "after")
OPERATORS: dict[str, str] = {
    "equals": "is",
    "not_equals": "is not",
    "contains": "contains",
    "not_contains": "does not contain",
    "is_empty": "is empty",
    "not_empty": "is not empty",
    "before": "is before",
    "after": "is after",
    "in_list": "is on the list",
    "not_in_list": "is not on the list",
}
TEXT_FIELDS: dict[str, InstrumentedAttribute] = {
    "phone": Contact.phone,
    "email": Contact.email,
    "first_name": Contact.first_name,
    "last_name": Contact.last_name,
    "company": Contact.company,
}
FIELD_OPS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(TEXT_FIELDS, TEXT_OPS),
    "created_at": ("before", "after", "equals"),
    "opted_out": ("equals", "not_equals"),
    "list": ("in_list", "not_in_list"),
}
CUSTOM_OPS = TEXT_OPS + DATE_OPS
_FIELD_ALIASES = {"firstName": "first_name", "lastName": "last_name", "lists": "list"}
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_VALUELESS = ("is_empty", "not_empty")


class _CustomFieldText(FunctionElement[str]):
    """``contacts.custom_fields[key]`` as text, NULL when the contact has no such field."""

    type = String()
    inherit_cache = True
    name = "custom_field_text"


@compiles(_CustomFieldText)
def _custom_field_text(element: _CustomFieldText, compiler: SQLCompiler, **kw: Any) -> str:
    document, key = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"({document} ->> {key})"


@compiles(_CustomFieldText, "sqlite")
def _custom_field_text_sqlite(element: _CustomFieldText, compiler: SQLCompiler, **kw: Any) -> str:
    """By key, not by a JSON path, which cannot hold every name (``a"b`` broke it, ``a".x`` read
    another field). Both pieces are compiled clauses, a column and a bound parameter."""
    document, key = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(SELECT CAST(f.value AS TEXT) FROM json_each({document}) AS f WHERE f.key = {key})"  # noqa: S608


def custom_field_text(key: str) -> ColumnElement[str]:
    """A contact's custom field ``key`` as text (NULL when absent), for any key a contact may have."""
    return _CustomFieldText(Contact.custom_fields, literal(key, String()))


class SegmentError(ValueError):
    """Conditions that cannot be turned into a query; ``problems`` are messages for the user."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def field_ops(field: str) -> tuple[str, ...]:
    """The operators a field supports (empty for an unknown field)."""
    field = _FIELD_ALIASES.get(field, field)
    if field.startswith("custom."):
        return CUSTOM_OPS if field[7:].strip() else ()
    return FIELD_OPS.get(field, ())


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _condition_problem(condition: Any) -> str | None:
    if not isinstance(condition, Mapping):
        return "is not a condition"
    field, op = condition.get("field"), condition.get("op")
    if op in ("in_list", "not_in_list") and field in (None, ""):
        field = "list"
    if not isinstance(field, str) or not field.strip():
        return "choose a field"
    field = _FIELD_ALIASES.get(field.strip(), field.strip())
    if field.startswith("custom.") and not field[7:].strip():
        return "name the custom field after 'custom.'"
    ops = field_ops(field)
    if not ops:
        return f"there is no field called '{field}'"
    if not isinstance(op, str) or op not in OPERATORS:
        return f"there is no operator called '{op}'"
    if op not in ops:
        label = field[7:] if field.startswith("custom.") else field
        return f"'{label}' cannot be compared with '{OPERATORS[op]}'"
    if op in _VALUELESS:
        return None
    value = _text(condition.get("value"))
    if not value:
        return f"'{OPERATORS[op]}' needs a value"
    if op in DATE_OPS or field == "created_at":
        if _parse_day(value) is None:
            return f"'{value}' is not a date; write it as YYYY-MM-DD"
    elif field == "opted_out":
        if value.lower() not in _TRUE + _FALSE:
            return "opted out is either true or false"
    elif field == "list" and not (value.isascii() and value.isdigit() and 0 < int(value) <= MAX_LIST_ID):
        return "choose a list"
    return None


def _parse_day(value: str) -> date | None:
    if not _ISO_DAY.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def validate_conditions(conditions: Any, match: Any = "all") -> list[str]:
    """What is wrong with these conditions, in words for the user (empty when they are fine)."""
    problems = []
    if match not in MATCHES:
        problems.append("Choose whether contacts must match all conditions or any of them.")
    if conditions is None:
        return problems
    if not isinstance(conditions, Sequence) or isinstance(conditions, str | bytes):
        return [*problems, "The conditions are not a list."]
    if len(conditions) > MAX_CONDITIONS:
        problems.append(f"A segment has at most {MAX_CONDITIONS} conditions.")
    for number, condition in enumerate(conditions, start=1):
        problem = _condition_problem(condition)
        if problem:
            problems.append(f"Condition {number}: {problem}.")
    return problems


def _day_start(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _zone(timezone: str | tzinfo | None) -> tzinfo:
    if isinstance(timezone, tzinfo):
        return timezone
    try:
        return ZoneInfo(timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _text_condition(column: ColumnElement, op: str, value: str, phone: bool = False) -> ColumnElement[bool]:
    if phone:
        value = re.sub(r"[\s\-().]", "", value)
    if op == "is_empty":
        return or_(column.is_(None), func.trim(column) == "")
    if op == "not_empty":
        return and_(column.is_not(None), func.trim(column) != "")
    if op == "equals":
        return func.lower(column) == value.lower()
    if op == "not_equals":
        return or_(column.is_(None), func.lower(column) != value.lower())
    if op == "contains":
        return column.icontains(value, autoescape=True)
    if op == "not_contains":
        return or_(column.is_(None), not_(column.icontains(value, autoescape=True)))
    raise AssertionError(op)


def _condition(condition: Mapping[str, Any], zone: tzinfo) -> ColumnElement[bool]:
    op = condition["op"]
    field = condition.get("field") or "list"
    field = _FIELD_ALIASES.get(field.strip(), field.strip())
    value = _text(condition.get("value"))
    if field in TEXT_FIELDS:
        return _text_condition(TEXT_FIELDS[field], op, value, phone=field == "phone")
    if field.startswith("custom."):
        stored = custom_field_text(field[7:].strip())
        if op in DATE_OPS:
            day = func.substr(stored, 1, 10)
            looks_like_a_date = stored.regexp_match("^[0-9]{4}-[0-9]{2}-[0-9]{2}")
            iso = _parse_day(value).isoformat()
            return and_(looks_like_a_date, day < iso if op == "before" else day > iso)
        return _text_condition(stored, op, value)
    if field == "created_at":
        day = _parse_day(value)
        start, end = _day_start(day, zone), _day_start(day + timedelta(days=1), zone)
        if op == "before":
            return Contact.created_at < start
        if op == "after":
            return Contact.created_at >= end
        return and_(Contact.created_at >= start, Contact.created_at < end)
    if field == "opted_out":
        wanted = value.lower() in _TRUE
        return Contact.opted_out.is_(wanted if op == "equals" else not wanted)
    if field == "list":
        on_list = exists().where(
            ContactListMember.contact_id == Contact.id, ContactListMember.list_id == int(value)
        )
        return on_list if op == "in_list" else ~on_list
    raise AssertionError(field)


def segment_filter(
    conditions: Sequence[Mapping[str, Any]] | None, match: str = "all", timezone: str | tzinfo | None = "UTC"
) -> ColumnElement[bool]:
    """A WHERE clause over :class:`Contact` for these conditions (no conditions: every contact).

    ``timezone`` decides where a ``created_at`` day begins. Raises :class:`SegmentError` for
    conditions :func:`validate_conditions` refuses.
    """
    problems = validate_conditions(conditions, match)
    if problems:
        raise SegmentError(problems)
    if not conditions:
        return true()
    zone = _zone(timezone)
    clauses = [_condition(condition, zone) for condition in conditions]
    if match == "any":
        return or_(false(), *clauses)
    return and_(true(), *clauses)


def _tenant_timezone() -> str:
    tenant_id = current_tenant_id(db.session)
    found = db.session.get(Tenant, tenant_id) if tenant_id is not None else None
    return found.timezone if found is not None and found.timezone else "UTC"


def audience_query(
    conditions: Sequence[Mapping[str, Any]] | None,
    match: str = "all",
    *columns: Any,
    timezone: str | tzinfo | None = None,
) -> Select:
    """``SELECT <columns, or Contact> FROM contacts WHERE <conditions>``.

    Run it through the session for the current tenant's contacts. ``timezone`` defaults to
    the current tenant's.
    """
    where = segment_filter(conditions, match, timezone or _tenant_timezone())
    return select(*(columns or (Contact,))).where(where)


def save_segment(segment: Segment, name: str, conditions: list[dict[str, Any]], match: str) -> None:
    """Give ``segment`` a name and conditions (not committed), or :class:`SegmentError` listing what is
    wrong: a blank or taken name, conditions :func:`validate_conditions` refuses. A new segment is added
    to the session."""
    name = name.strip()[:120]
    problems = validate_conditions(conditions, match)
    if not name:
        problems = ["Give the segment a name.", *problems]
    taken = db.session.scalar(select(Segment.id).where(Segment.name == name))
    if name and taken is not None and taken != segment.id:
        problems.append(f"There is already a segment called {name}.")
    if problems:
        raise SegmentError(problems)
    segment.name, segment.conditions, segment.match = name, conditions, match
    if segment.id is None:
        db.session.add(segment)


def count_matching(
    conditions: Sequence[Mapping[str, Any]] | None, match: str = "all", timezone: str | tzinfo | None = None
) -> int:
    """How many of the current tenant's contacts match (the live count beside the editor)."""
    where = segment_filter(conditions, match, timezone or _tenant_timezone())
    return db.session.scalar(select(func.count()).select_from(Contact).where(where)) or 0


__all__ = [
    "CUSTOM_OPS",
    "FIELD_OPS",
    "MATCHES",
    "OPERATORS",
    "SegmentError",
    "audience_query",
    "count_matching",
    "custom_field_text",
    "field_ops",
    "save_segment",
    "segment_filter",
    "validate_conditions",
]
