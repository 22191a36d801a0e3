"""Contacts over the API: the contacts pages' rules (``tenants.contact_book``) and the CSV import's.

A contact created or changed one at a time follows the contact form: a phone number becomes E.164
(national numbers in the workspace's default country), an email is validated, and each is unique
in the workspace: a duplicate is a 409 naming the contact that has it. ``POST /contacts/bulk`` takes
up to 10,000 contacts and follows the CSV import row for row (``tenants.contact_import``): the same
rejects with the same reasons, empty values never erase, rows naming the same contact are merged,
the plan's contacts limit applies; each row is answered by its index.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from spectree import Response
from sqlalchemy.exc import IntegrityError

from tenants.api_tokens import Scope
from tenants.contact_book import (
    ContactError,
    ContactFilter,
    ContactLimitReached,
    DuplicateContact,
    contacts_after,
    erase,
    opt_in,
    opt_out,
    save_contact,
)
from tenants.contact_import import MAX_UPSERT_ROWS, MappingError, upsert_contacts
from tenants.contacts import Contact, ContactList, Segment
from tenants.db import db
from tenants.models import Tenant
from webapp.api import bp, spec
from webapp.api.auth import current_token, requires
from webapp.api.common import (
    ERRORS,
    WRITE_ERRORS,
    IdPageQuery,
    PageInfo,
    RowId,
    StoredText,
    body,
    get_or_404,
    page_info,
    storable_text,
    valid_unicode,
)
from webapp.api.problems import ApiProblem, FieldError


def _scalar_as_text(value: Any) -> Any:
    """Custom field values are text, as in a CSV file: numbers and booleans are written out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _field_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("a custom field needs a name")
    return name


def _as_utc(moment: datetime) -> datetime:
    """A time without a zone is UTC; a time beyond what can be stored is refused."""
    try:
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


FieldName = Annotated[
    str, Field(min_length=1, max_length=100), AfterValidator(storable_text), AfterValidator(_field_name)
]
FieldText = Annotated[
    str,
    BeforeValidator(_scalar_as_text, json_schema_input_type=str | int | float | bool),
    Field(max_length=10_000),
]
FieldValue = Annotated[FieldText, AfterValidator(storable_text)]
CUSTOM_FIELDS = "Custom fields by name (text; numbers and booleans are written out)"
CustomFields = Annotated[dict[FieldName, FieldValue], Field(max_length=100, description=CUSTOM_FIELDS)]


class ContactOut(BaseModel):
    """A contact: E.164 phone, email, names, custom fields, and whether they opted out."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    phone: str | None = Field(description="E.164, like +5511961234567")
    email: str | None
    first_name: str | None
    last_name: str | None
    company: str | None
    custom_fields: Annotated[dict[str, Any], BeforeValidator(lambda fields: fields or {})]
    opted_out: bool = Field(description="Opted-out contacts receive no campaign")
    opted_out_at: datetime | None
    opted_out_source: str | None = Field(description="Who or what opted them out")
    created_at: datetime
    updated_at: datetime


class ContactsPage(PageInfo):
    data: list[ContactOut]


def contacts_page(filters: ContactFilter, query: IdPageQuery) -> ContactsPage:
    """One keyset page of the contacts ``filters`` match (also the members of a list or segment)."""
    rows = contacts_after(filters, query.after, query.limit)
    cursor = page_info([row.id for row in rows], query.limit)
    return ContactsPage(data=[ContactOut.model_validate(row) for row in rows[: query.limit]], **dict(cursor))


def workspace() -> Tenant:
    """The token's workspace (its timezone and default country)."""
    return db.session.get(Tenant, current_token().tenant_id)


class ContactQuery(IdPageQuery):
    search: Annotated[StoredText, Field(max_length=200)] = Field(
        default="", description="Words in the name, email or phone number"
    )
    list_id: RowId | None = Field(default=None, description="Only contacts on this list")
    segment_id: RowId | None = Field(default=None, description="Only contacts this segment matches")
    opted_out: bool | None = Field(
        default=None, description="Only opted-out (true) or reachable (false) ones"
    )
    updated_since: Annotated[datetime, AfterValidator(_as_utc)] | None = Field(
        default=None, description="Only contacts created or changed at or after this time (no zone: UTC)"
    )


@bp.get("/contacts")
@requires(Scope.READ)
@spec.validate(query=ContactQuery, resp=Response(HTTP_200=ContactsPage, **ERRORS), tags=["contacts"])
def list_contacts(query: ContactQuery):
    """The workspace's contacts, oldest first, a page at a time, filtered like the contacts page."""
    if query.list_id is not None:
        get_or_404(ContactList, query.list_id)
    segment = get_or_404(Segment, query.segment_id) if query.segment_id is not None else None
    filters = ContactFilter(
        search=query.search.strip(),
        list_id=query.list_id,
        opted_out=query.opted_out,
        segment=segment,
        timezone=workspace().timezone,
        updated_since=query.updated_since,
    )
    return contacts_page(filters, query)


@bp.get("/contacts/<int:contact_id>")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=ContactOut, **ERRORS), tags=["contacts"])
def get_contact(contact_id: int):
    """One contact."""
    return ContactOut.model_validate(get_or_404(Contact, contact_id))


class ContactIn(BaseModel):
    """A new contact: a phone number or an email (or both), each unique in the workspace."""

    model_config = ConfigDict(extra="forbid")

    phone: Annotated[StoredText, Field(max_length=64)] | None = Field(
        default=None, description="Any common format; national numbers are read in the workspace's country"
    )
    email: Annotated[StoredText, Field(max_length=320)] | None = None
    first_name: Annotated[StoredText, Field(max_length=200)] | None = None
    last_name: Annotated[StoredText, Field(max_length=200)] | None = None
    company: Annotated[StoredText, Field(max_length=200)] | None = None
    custom_fields: CustomFields = Field(default_factory=dict)


class ContactPatch(BaseModel):
    """Fields to change; absent ones stay. ``null`` clears a field (a contact keeps a phone or an email)."""

    model_config = ConfigDict(extra="forbid")

    phone: Annotated[StoredText, Field(max_length=64)] | None = None
    email: Annotated[StoredText, Field(max_length=320)] | None = None
    first_name: Annotated[StoredText, Field(max_length=200)] | None = None
    last_name: Annotated[StoredText, Field(max_length=200)] | None = None
    company: Annotated[StoredText, Field(max_length=200)] | None = None
    custom_fields: dict[FieldName, FieldValue | None] | None = Field(
        default=None,
        max_length=100,
        description="Fields named are set, fields set to null removed, others kept",
    )
    opted_out: bool | None = Field(default=None, description="true opts the contact out, false back in")


TEXT_FIELDS = ("phone", "email", "first_name", "last_name", "company")


def _save(contact: Contact, values: dict[str, str | None], custom_fields: dict[str, Any]) -> None:
    """The contact form's rules; a duplicate phone or email is a 409 naming the contact that has it."""
    try:
        save_contact(
            contact,
            default_country=workspace().default_country,
            **{name: values[name] or "" for name in TEXT_FIELDS},
            custom_fields=custom_fields,
        )
    except DuplicateContact as exc:
        raise ApiProblem(
            "conflict",
            f"{exc} It is contact {exc.contact_id}: change that one (PATCH /api/v1/contacts/"
            f"{exc.contact_id}).",
            errors=[FieldError(field=exc.field, message=f"already used by contact {exc.contact_id}")],
        ) from None
    except ContactLimitReached as exc:
        raise ApiProblem("conflict", str(exc)) from None
    except ContactError as exc:
        raise ApiProblem("invalid-request", str(exc)) from None


def commit(conflict: str) -> None:
    """Commit; a unique name, phone or email another request took since the check is a 409."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ApiProblem("conflict", conflict) from None


TAKEN = "Another contact got this phone number or email meanwhile; fetch it and retry."


def _source() -> str:
    return f"set through the API (token {current_token().name})"


@bp.post("/contacts")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=ContactIn, resp=Response(HTTP_201=ContactOut, **WRITE_ERRORS), tags=["contacts"])
def create_contact(json: ContactIn):
    """Add a contact, with the rules of the contact form."""
    json = body(json)
    contact = Contact(custom_fields={})
    _save(contact, json.model_dump(include=set(TEXT_FIELDS)), dict(json.custom_fields))
    db.session.add(contact)
    commit(TAKEN)
    return ContactOut.model_validate(contact), 201, {"Location": f"/api/v1/contacts/{contact.id}"}


@bp.patch("/contacts/<int:contact_id>")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=ContactPatch, resp=Response(HTTP_200=ContactOut, **WRITE_ERRORS), tags=["contacts"])
def update_contact(contact_id: int, json: ContactPatch):
    """Change some of a contact's fields; the others stay as they are."""
    json, contact = body(json), get_or_404(Contact, contact_id)
    given = json.model_fields_set
    values = {name: getattr(json if name in given else contact, name) for name in TEXT_FIELDS}
    custom_fields = dict(contact.custom_fields or {})
    for name, value in (json.custom_fields or {}).items():
        if value is None:
            custom_fields.pop(name, None)
        else:
            custom_fields[name] = value
    _save(contact, values, custom_fields)
    if json.opted_out is True and not contact.opted_out:
        opt_out(contact, _source())
    elif json.opted_out is False and contact.opted_out:
        opt_in(contact)
    commit(TAKEN)
    return ContactOut.model_validate(contact)


@bp.delete("/contacts/<int:contact_id>")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(resp=Response(HTTP_204=None, **ERRORS), tags=["contacts"])
def delete_contact(contact_id: int):
    """Delete the person and everything Crier holds about them (list memberships, channel ids)."""
    erase(get_or_404(Contact, contact_id))
    db.session.commit()
    return "", 204


class OptOutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Annotated[StoredText, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="Why or where they opted out, as the contact page will show it"
    )


@bp.post("/contacts/<int:contact_id>/opt-out")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=OptOutIn, resp=Response(HTTP_200=ContactOut, **WRITE_ERRORS), tags=["contacts"])
def opt_out_contact(contact_id: int, json: OptOutIn):
    """Stop every campaign from reaching this contact (an opted-out contact keeps its first opt-out)."""
    json, contact = body(json), get_or_404(Contact, contact_id)
    if not contact.opted_out:
        opt_out(contact, json.source or _source())
        db.session.commit()
    return ContactOut.model_validate(contact)


BulkText = Annotated[str, Field(max_length=10_000)]
BulkValue = Annotated[str, Field(max_length=10_000)] | int | float | bool


class BulkContact(BaseModel):
    """One contact of a bulk upsert, read as a row of a CSV import (empty values never erase)."""

    model_config = ConfigDict(extra="forbid")

    phone: BulkText | None = None
    email: BulkText | None = None
    first_name: BulkText | None = None
    last_name: BulkText | None = None
    company: BulkText | None = None
    custom_fields: dict[Annotated[str, Field(min_length=1, max_length=100)], BulkValue] = Field(
        default_factory=dict, max_length=100, description=CUSTOM_FIELDS
    )

    @model_validator(mode="after")
    def _text(self) -> BulkContact:
        """Checked once a contact rather than once a value, as a request holds 10,000 contacts. NUL
        characters in values are left for the import's reading of the row to drop, as in a file."""
        if self.custom_fields:
            self.custom_fields = {
                storable_text(_field_name(name)): _scalar_as_text(value)
                for name, value in self.custom_fields.items()
            }
        texts = (self.phone, self.email, self.first_name, self.last_name, self.company)
        valid_unicode("".join(text for text in texts if text) + "".join(self.custom_fields.values()))
        return self


class BulkUpsertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contacts: list[BulkContact] = Field(
        max_length=MAX_UPSERT_ROWS, description=f"At most {MAX_UPSERT_ROWS:,} contacts per request"
    )
    list_id: RowId | None = Field(default=None, description="Put every contact named on this list")
    phone_country: Annotated[StoredText, Field(max_length=2)] | None = Field(
        default=None, description="ISO country of national phone numbers (default: the workspace's)"
    )


class BulkRowResult(BaseModel):
    index: int = Field(description="The contact's place in the request, from 0")
    status: Literal["created", "updated", "unchanged", "rejected"]
    id: int | None = Field(description="The contact's id (null when rejected)")
    reason: str | None = Field(description="Why it was rejected, or what was adjusted or merged")


class BulkUpsertOut(BaseModel):
    created: int
    updated: int
    unchanged: int
    rejected: int
    results: list[BulkRowResult]


@bp.post("/contacts/bulk")
@requires(Scope.CONTACTS_WRITE)
@spec.validate(json=BulkUpsertIn, resp=Response(HTTP_200=BulkUpsertOut, **WRITE_ERRORS), tags=["contacts"])
def bulk_upsert_contacts(json: BulkUpsertIn):
    """Create or update up to 10,000 contacts, matched by phone then email, as the CSV import does."""
    json = body(json)
    if json.list_id is not None:
        get_or_404(ContactList, json.list_id)
    try:
        result = upsert_contacts(
            [contact.model_dump() for contact in json.contacts],
            list_id=json.list_id,
            phone_country=json.phone_country,
        )
    except MappingError as exc:
        raise ApiProblem("invalid-request", str(exc)) from None
    db.session.commit()
    return BulkUpsertOut(
        created=result.count("created"),
        updated=result.count("updated"),
        unchanged=result.count("unchanged"),
        rejected=result.count("rejected"),
        results=[
            BulkRowResult(index=row.index, status=row.status, id=row.contact_id, reason=row.reason)
            for row in result.rows
        ],
    )
