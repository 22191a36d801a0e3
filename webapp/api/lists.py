"""Contact lists and segments over the API.

Lists: create, rename, delete, and membership in bulk (up to 10,000 contact ids a request; ids that
are no contact of this workspace are reported, never added). Segments: conditions with the segment
editor's rules (``tenants.segments``), their matching contacts a page at a time, and their count.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from flask import request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from spectree import Response
from sqlalchemy import select

from tenants.api_tokens import Scope
from tenants.contact_book import (
    ContactError,
    ContactFilter,
    add_members,
    create_list,
    list_size,
    lists_after,
    remove_members,
    rename_list,
)
from tenants.contact_import import MAX_UPSERT_ROWS
from tenants.contacts import ContactList, Segment
from tenants.db import db
from tenants.segments import (
    MATCHES,
    MAX_CONDITIONS,
    OPERATORS,
    SegmentError,
    count_matching,
    save_segment,
)
from webapp.api import bp, spec
from webapp.api.auth import requires
from webapp.api.common import (
    ERRORS,
    WRITE_ERRORS,
    IdPageQuery,
    PageInfo,
    RowId,
    StoredText,
    body,
    get_or_404,
    keyset_page,
    page_info,
)
from webapp.api.contacts import (
    ContactsPage,
    commit,
    contacts_page,
    workspace,
)
from webapp.api.problems import ApiProblem, FieldError, validation_problem


def _named(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("must not be blank")
    return name


Name = Annotated[StoredText, Field(min_length=1, max_length=120), AfterValidator(_named)]


# --- lists ---------------------------------------------------------------------------------------


class ContactListOut(BaseModel):
    id: int
    name: str
    size: int = Field(description="Contacts on the list")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, contact_list: ContactList, size: int) -> ContactListOut:
        return cls(
            id=contact_list.id,
            name=contact_list.name,
            size=size,
            created_at=contact_list.created_at,
            updated_at=contact_list.updated_at,
        )


class ContactListsPage(PageInfo):
    data: list[ContactListOut]


class ContactListIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="Unique in the workspace")


NAME_TAKEN = "Another request just gave this name to another one; choose another name."


def _conflict(error: ContactError) -> ApiProblem:
    return ApiProblem("conflict", str(error), errors=[FieldError(field="name", message=str(error))])


@bp.get("/lists")
@requires(Scope.READ)
@spec.validate(query=IdPageQuery, resp=Response(HTTP_200=ContactListsPage, **ERRORS), tags=["lists"])
def list_lists(query: IdPageQuery):
    """The workspace's contact lists with their sizes, oldest first, a page at a time."""
    rows = lists_after(query.after, query.limit)
    cursor = page_info([row.id for row, _ in rows], query.limit)
    data = [ContactListOut.of(row, size) for row, size in rows[: query.limit]]
    return ContactListsPage(data=data, **dict(cursor))


@bp.post("/lists")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=ContactListIn, resp=Response(HTTP_201=ContactListOut, **WRITE_ERRORS), tags=["lists"])
def create_contact_list(json: ContactListIn):
    """Make an empty list."""
    try:
        contact_list = create_list(body(json).name)
    except ContactError as exc:
        raise _conflict(exc) from None
    commit(NAME_TAKEN)
    location = f"/api/v1/lists/{contact_list.id}"
    return ContactListOut.of(contact_list, 0), 201, {"Location": location}


@bp.get("/lists/<int:contact_list_id>")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=ContactListOut, **ERRORS), tags=["lists"])
def get_contact_list(contact_list_id: int):
    """One list and its size."""
    contact_list = get_or_404(ContactList, contact_list_id)
    return ContactListOut.of(contact_list, list_size(contact_list))


@bp.patch("/lists/<int:contact_list_id>")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=ContactListIn, resp=Response(HTTP_200=ContactListOut, **WRITE_ERRORS), tags=["lists"])
def rename_contact_list(contact_list_id: int, json: ContactListIn):
    """Rename a list."""
    contact_list = get_or_404(ContactList, contact_list_id)
    try:
        rename_list(contact_list, body(json).name)
    except ContactError as exc:
        raise _conflict(exc) from None
    commit(NAME_TAKEN)
    return ContactListOut.of(contact_list, list_size(contact_list))


@bp.delete("/lists/<int:contact_list_id>")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(resp=Response(HTTP_204=None, **ERRORS), tags=["lists"])
def delete_contact_list(contact_list_id: int):
    """Delete a list; its contacts stay."""
    db.session.delete(get_or_404(ContactList, contact_list_id))
    db.session.commit()
    return "", 204


@bp.get("/lists/<int:contact_list_id>/members")
@requires(Scope.READ)
@spec.validate(query=IdPageQuery, resp=Response(HTTP_200=ContactsPage, **ERRORS), tags=["lists"])
def list_members(contact_list_id: int, query: IdPageQuery):
    """The contacts on a list, oldest first, a page at a time."""
    return contacts_page(ContactFilter(list_id=contact_list_id), query)


class MembersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_ids: list[RowId] = Field(
        min_length=1, max_length=MAX_UPSERT_ROWS, description=f"1 to {MAX_UPSERT_ROWS:,} contact ids"
    )


class MembersAdded(BaseModel):
    added: int = Field(description="Contacts put on the list")
    already_members: int = Field(description="Contacts that were on it already")
    not_found: list[int] = Field(description="Ids that are no contact of this workspace: not added")


class MembersRemoved(BaseModel):
    removed: int = Field(description="Contacts taken off the list")
    not_members: int = Field(description="Contacts that were not on it")
    not_found: list[int] = Field(description="Ids that are no contact of this workspace")


@bp.post("/lists/<int:contact_list_id>/members")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=MembersIn, resp=Response(HTTP_200=MembersAdded, **WRITE_ERRORS), tags=["lists"])
def add_list_members(contact_list_id: int, json: MembersIn):
    """Put contacts on a list (those already on it stay once)."""
    change = add_members(get_or_404(ContactList, contact_list_id), body(json).contact_ids)
    db.session.commit()
    return MembersAdded(added=change.changed, already_members=change.unchanged, not_found=change.unknown)


@bp.delete("/lists/<int:contact_list_id>/members")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=MembersIn, resp=Response(HTTP_200=MembersRemoved, **WRITE_ERRORS), tags=["lists"])
def remove_list_members(contact_list_id: int):
    """Take contacts off a list; the contacts stay."""
    # spectree reads no body on DELETE: it is validated here, against the same documented model
    try:
        members = MembersIn.model_validate(request.get_json(silent=True) or {})
    except ValidationError as exc:
        return validation_problem(exc.errors(), "body")
    change = remove_members(get_or_404(ContactList, contact_list_id), members.contact_ids)
    db.session.commit()
    return MembersRemoved(removed=change.changed, not_members=change.unchanged, not_found=change.unknown)


# --- segments ------------------------------------------------------------------------------------


class Condition(BaseModel):
    """``field``: phone, email, first_name, last_name, company, custom.<name>, created_at, opted_out or
    list; ``value``: text, a date ``YYYY-MM-DD``, true/false, or a list id, as the field asks."""

    model_config = ConfigDict(extra="forbid")

    field: Annotated[StoredText, Field(max_length=110)]
    op: Literal[tuple(OPERATORS)] = Field(description="How the field is compared")  # type: ignore[valid-type]
    value: Annotated[StoredText, Field(max_length=1000)] | int | bool | None = None


class SegmentOut(BaseModel):
    id: int
    name: str
    match: Literal[MATCHES] = Field(description="all: every condition holds; any: one does")  # type: ignore[valid-type]
    conditions: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, segment: Segment) -> SegmentOut:
        return cls(
            id=segment.id,
            name=segment.name,
            match=segment.match,
            conditions=list(segment.conditions or []),
            created_at=segment.created_at,
            updated_at=segment.updated_at,
        )


class SegmentsPage(PageInfo):
    data: list[SegmentOut]


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="Unique in the workspace")
    match: Literal[MATCHES] = "all"  # type: ignore[valid-type]
    conditions: list[Condition] = Field(
        default_factory=list, max_length=MAX_CONDITIONS, description="No conditions: every contact"
    )


class SegmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    match: Literal[MATCHES] | None = None  # type: ignore[valid-type]
    conditions: list[Condition] | None = Field(default=None, max_length=MAX_CONDITIONS)


class SegmentCount(BaseModel):
    count: int = Field(description="Contacts the segment matches now")


def _save(segment: Segment, name: str, conditions: list[dict[str, Any]], match: str) -> None:
    """The segment editor's rules; what is wrong comes back as one entry per problem."""
    try:
        save_segment(segment, name, conditions, match)
    except SegmentError as exc:
        taken = any(problem.startswith("There is already") for problem in exc.problems)
        raise ApiProblem(
            "conflict" if taken else "invalid-request",
            str(exc),
            errors=[
                FieldError(field="name" if p.startswith(("There", "Give")) else "conditions", message=p)
                for p in exc.problems
            ],
        ) from None
    commit(NAME_TAKEN)


def _conditions(conditions: list[Condition]) -> list[dict[str, Any]]:
    return [condition.model_dump() for condition in conditions]


@bp.get("/segments")
@requires(Scope.READ)
@spec.validate(query=IdPageQuery, resp=Response(HTTP_200=SegmentsPage, **ERRORS), tags=["segments"])
def list_segments(query: IdPageQuery):
    """The workspace's segments, oldest first, a page at a time."""
    rows, cursor = keyset_page(select(Segment), Segment, query)
    return SegmentsPage(data=[SegmentOut.of(row) for row in rows], **dict(cursor))


@bp.post("/segments")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=SegmentIn, resp=Response(HTTP_201=SegmentOut, **WRITE_ERRORS), tags=["segments"])
def create_segment(json: SegmentIn):
    """Save conditions as a segment, with the segment editor's rules."""
    json = body(json)
    segment = Segment()
    _save(segment, json.name, _conditions(json.conditions), json.match)
    return SegmentOut.of(segment), 201, {"Location": f"/api/v1/segments/{segment.id}"}


@bp.get("/segments/<int:segment_id>")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=SegmentOut, **ERRORS), tags=["segments"])
def get_segment(segment_id: int):
    """One segment and its conditions."""
    return SegmentOut.of(get_or_404(Segment, segment_id))


@bp.patch("/segments/<int:segment_id>")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=SegmentPatch, resp=Response(HTTP_200=SegmentOut, **WRITE_ERRORS), tags=["segments"])
def update_segment(segment_id: int, json: SegmentPatch):
    """Change a segment's name, match or conditions (the conditions are replaced as a whole)."""
    json, segment = body(json), get_or_404(Segment, segment_id)
    conditions = _conditions(json.conditions) if json.conditions is not None else list(segment.conditions)
    _save(segment, json.name or segment.name, conditions, json.match or segment.match)
    return SegmentOut.of(segment)


@bp.delete("/segments/<int:segment_id>")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(resp=Response(HTTP_204=None, **ERRORS), tags=["segments"])
def delete_segment(segment_id: int):
    """Delete a segment; its contacts stay."""
    db.session.delete(get_or_404(Segment, segment_id))
    db.session.commit()
    return "", 204


@bp.get("/segments/<int:segment_id>/contacts")
@requires(Scope.READ)
@spec.validate(query=IdPageQuery, resp=Response(HTTP_200=ContactsPage, **ERRORS), tags=["segments"])
def segment_contacts(segment_id: int, query: IdPageQuery):
    """The contacts the segment matches now, oldest first, a page at a time."""
    segment = get_or_404(Segment, segment_id)
    return contacts_page(ContactFilter(segment=segment, timezone=workspace().timezone), query)


@bp.get("/segments/<int:segment_id>/count")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=SegmentCount, **ERRORS), tags=["segments"])
def segment_count(segment_id: int):
    """How many contacts the segment matches now."""
    segment = get_or_404(Segment, segment_id)
    return SegmentCount(count=count_matching(segment.conditions, segment.match, workspace().timezone))
