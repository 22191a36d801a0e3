"""Finding, listing and changing contacts (the queries behind the contacts pages)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Select, delete, exists, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tenants import event_hooks
from tenants.contacts import Contact, ContactList, ContactListMember, Segment
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.phones import InvalidPhone, to_e164
from tenants.scoping import current_tenant_id
from tenants.segments import custom_field_text, segment_filter
from tenants.spreadsheet import neutralise_row

PAGE_SIZE = 50
# One lower-cased text per contact; on PostgreSQL a trigram index (migration 0004) covers it.
SEARCH_EXPRESSION = (
    "lower(coalesce(contacts.first_name, '') || ' ' || coalesce(contacts.last_name, '') || ' ' || "
    "coalesce(contacts.email, '') || ' ' || coalesce(contacts.phone, ''))"
)


def search_pattern(search: str) -> str:
    """A LIKE pattern for what the user typed; phone-looking input loses its spaces and dashes."""
    needle = search.strip().lower()
    if needle and all(c.isdigit() or c in "+ -()" for c in needle):
        needle = "".join(c for c in needle if c.isdigit() or c == "+")
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ContactError(ValueError):
    """A contact change that cannot be made; the message is for the user."""


class DuplicateContact(ContactError):
    """Another contact of the tenant already has this phone number or email."""

    def __init__(self, message: str, contact_id: int, field: str):
        super().__init__(message)
        self.contact_id, self.field = contact_id, field


class ContactLimitReached(ContactError):
    """The plan's contacts limit leaves no room for another contact."""


@dataclass(frozen=True)
class ContactFilter:
    """What the contacts page shows: a search, a list, opted-out or not, and a custom-field match."""

    search: str = ""
    list_id: int | None = None
    opted_out: bool | None = None
    field: str = ""
    value: str = ""
    segment: Segment | None = None
    timezone: str = "UTC"
    updated_since: datetime | None = None  # changed at or after this time (the API's sync clients)

    def apply(self, query: Select) -> Select:
        if self.search:
            query = query.where(
                text(f"{SEARCH_EXPRESSION} LIKE :needle ESCAPE '\\'").bindparams(
                    needle=search_pattern(self.search)
                )
            )
        if self.list_id is not None:
            query = query.where(
                exists().where(
                    ContactListMember.contact_id == Contact.id, ContactListMember.list_id == self.list_id
                )
            )
        if self.opted_out is not None:
            query = query.where(Contact.opted_out.is_(self.opted_out))
        if self.field:
            query = query.where(custom_field_text(self.field) == self.value)
        if self.segment is not None:
            query = query.where(segment_filter(self.segment.conditions, self.segment.match, self.timezone))
        if self.updated_since is not None:
            query = query.where(Contact.updated_at >= self.updated_since)
        return query


@dataclass(frozen=True)
class ContactPage:
    contacts: list[Contact]
    next_after: int | None  # keyset cursor for the following page
    previous_before: int | None  # keyset cursor for the page before


def page_of_contacts(
    filters: ContactFilter, after: int | None = None, before: int | None = None, size: int = PAGE_SIZE
) -> ContactPage:
    """One page, newest first, by keyset (``id`` below/above a cursor) so deep pages stay fast."""
    query = filters.apply(select(Contact))
    if before is not None:
        rows = db.session.scalars(
            query.where(Contact.id > before).order_by(Contact.id.asc()).limit(size + 1)
        ).all()
        more_before = len(rows) > size
        rows = list(reversed(rows[:size]))
        return ContactPage(rows, rows[-1].id if rows else None, rows[0].id if rows and more_before else None)
    if after is not None:
        query = query.where(Contact.id < after)
    rows = db.session.scalars(query.order_by(Contact.id.desc()).limit(size + 1)).all()
    more = len(rows) > size
    rows = list(rows[:size])
    return ContactPage(rows, rows[-1].id if rows and more else None, rows[0].id if rows and after else None)


def contacts_after(filters: ContactFilter, after: int | None, limit: int) -> list[Contact]:
    """Up to ``limit + 1`` matching contacts with ids above ``after``, oldest first: the API's keyset
    pages, which stay stable while new contacts arrive (the extra row says another page follows)."""
    query = filters.apply(select(Contact))
    if after is not None:
        query = query.where(Contact.id > after)
    return list(db.session.scalars(query.order_by(Contact.id).limit(limit + 1)))


def count_contacts(filters: ContactFilter) -> int:
    return db.session.scalar(filters.apply(select(func.count()).select_from(Contact)))


def all_lists() -> list[ContactList]:
    return db.session.scalars(select(ContactList).order_by(ContactList.name)).all()


def lists_with_sizes() -> list[tuple[ContactList, int]]:
    sizes = (
        select(ContactListMember.list_id, func.count().label("size"))
        .group_by(ContactListMember.list_id)
        .subquery()
    )
    return db.session.execute(
        select(ContactList, func.coalesce(sizes.c.size, 0))
        .outerjoin(sizes, sizes.c.list_id == ContactList.id)
        .order_by(ContactList.name)
    ).all()


def _list_name(name: str, contact_list_id: int | None = None) -> str:
    """A list's name as given, or :class:`ContactError` when it is blank or another list has it."""
    name = name.strip()
    if not name:
        raise ContactError("Give the list a name.")
    owner = db.session.scalar(select(ContactList.id).where(ContactList.name == name))
    if owner is not None and owner != contact_list_id:
        raise ContactError(f"There is already a list called {name}.")
    return name[:120]


def create_list(name: str) -> ContactList:
    contact_list = ContactList(name=_list_name(name))
    db.session.add(contact_list)
    db.session.flush()
    return contact_list


def rename_list(contact_list: ContactList, name: str) -> None:
    """Rename a list, with the rules of :func:`create_list` (not committed)."""
    contact_list.name = _list_name(name, contact_list.id)


def lists_after(after: int | None, limit: int) -> list[tuple[ContactList, int]]:
    """Up to ``limit + 1`` lists with ids above ``after`` and their sizes, by id (the API's pages)."""
    query = select(ContactList).order_by(ContactList.id).limit(limit + 1)
    if after is not None:
        query = query.where(ContactList.id > after)
    page = list(db.session.scalars(query))
    sizes = dict(
        db.session.execute(
            select(ContactListMember.list_id, func.count())
            .where(ContactListMember.list_id.in_([row.id for row in page]))
            .group_by(ContactListMember.list_id)
        ).all()
    )
    return [(row, sizes.get(row.id, 0)) for row in page]


def list_size(contact_list: ContactList) -> int:
    return db.session.scalar(
        select(func.count())
        .select_from(ContactListMember)
        .where(ContactListMember.list_id == contact_list.id)
    )


@dataclass(frozen=True)
class MembershipChange:
    """What a bulk add to (or removal from) a list did."""

    changed: int  # contacts added (or removed)
    unchanged: int  # contacts already on the list (or not on it)
    unknown: list[int]  # ids that are no contact of this workspace: left alone


def _known_contacts(contact_ids: list[int]) -> set[int]:
    return set(db.session.scalars(select(Contact.id).where(Contact.id.in_(contact_ids))))


def add_members(contact_list: ContactList, contact_ids: list[int]) -> MembershipChange:
    """Put the tenant's contacts among ``contact_ids`` on the list, set-based (not committed)."""
    wanted = sorted(set(contact_ids))
    known = sorted(_known_contacts(wanted))
    added = 0
    if known:
        table = ContactListMember.__table__
        insert = (pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert)(table)
        now, tenant_id = utcnow(), contact_list.tenant_id
        rows = [
            {"tenant_id": tenant_id, "list_id": contact_list.id, "contact_id": i, "added_at": now}
            for i in known
        ]
        result = db.session.execute(insert.on_conflict_do_nothing().returning(table.c.contact_id), rows)
        added = len(result.all())
    return MembershipChange(added, len(known) - added, sorted(set(wanted) - set(known)))


def remove_members(contact_list: ContactList, contact_ids: list[int]) -> MembershipChange:
    """Take the tenant's contacts among ``contact_ids`` off the list (not committed)."""
    wanted = sorted(set(contact_ids))
    known = sorted(_known_contacts(wanted))
    removed = 0
    if known:
        result = db.session.execute(
            delete(ContactListMember).where(
                ContactListMember.list_id == contact_list.id, ContactListMember.contact_id.in_(known)
            )
        )
        removed = result.rowcount
    return MembershipChange(removed, len(known) - removed, sorted(set(wanted) - set(known)))


def lists_of(contact: Contact) -> list[ContactList]:
    return db.session.scalars(
        select(ContactList)
        .join(ContactListMember, ContactListMember.list_id == ContactList.id)
        .where(ContactListMember.contact_id == contact.id)
        .order_by(ContactList.name)
    ).all()


def add_to_list(contact: Contact, contact_list: ContactList) -> None:
    member = db.session.get(ContactListMember, (contact_list.id, contact.id))
    if member is None:
        db.session.add(ContactListMember(list_id=contact_list.id, contact_id=contact.id))


def remove_from_list(contact: Contact, contact_list: ContactList) -> None:
    db.session.execute(
        delete(ContactListMember).where(
            ContactListMember.list_id == contact_list.id, ContactListMember.contact_id == contact.id
        )
    )


def opt_out(contact: Contact, source: str) -> None:
    contact.opted_out = True
    contact.opted_out_at = utcnow()
    contact.opted_out_source = source[:200]
    event_hooks.publish_opt_out(contact)


def opt_in(contact: Contact) -> None:
    contact.opted_out = False
    contact.opted_out_at = None
    contact.opted_out_source = None


def erase(contact: Contact) -> None:
    """Delete the person and everything Crier holds about them (channel ids, list memberships)."""
    db.session.delete(contact)


def display_name(contact: Contact) -> str:
    name = " ".join(part for part in (contact.first_name, contact.last_name) if part)
    return name or contact.email or contact.phone or f"Contact {contact.id}"


def custom_fields_from_text(raw: str) -> dict[str, Any]:
    """``key: value`` lines (the edit form's custom fields box) to a dict; refuses malformed lines."""
    fields: dict[str, Any] = {}
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ContactError(f"Custom fields line {number}: write it as 'name: value'.")
        fields[key.strip()[:100]] = value.strip()
    return fields


def _clean_email(raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return validate_email(raw, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ContactError(f"Email: {exc}") from None


def check_contact_room() -> None:
    """Refuse a new contact once the current tenant has as many as its plan allows."""
    workspace = db.session.get(Tenant, current_tenant_id(db.session))
    if workspace is None:
        return
    count = db.session.scalar(select(func.count()).select_from(Contact))
    if count >= workspace.max_contacts:
        raise ContactLimitReached(
            f"Your plan allows {workspace.max_contacts:,} contacts and you have {count:,}. "
            "Delete some, or ask us to raise the limit."
        )


def save_contact(
    contact: Contact,
    *,
    default_country: str | None,
    phone: str,
    email: str,
    first_name: str,
    last_name: str,
    company: str,
    custom_fields: dict[str, Any],
) -> Contact:
    """Validate and apply the contact form: E.164 phone, valid email, each unique in the tenant; a new
    contact only while the plan's contacts limit has room."""
    if contact.id is None:
        check_contact_room()
    try:
        clean_phone = to_e164(phone, default_country) if phone.strip() else None
    except InvalidPhone as exc:
        raise ContactError(f"Phone: {exc}") from None
    clean_email = _clean_email(email)
    if not clean_phone and not clean_email:
        raise ContactError("A contact needs a phone number or an email address.")
    for column, value, label in (
        (Contact.phone, clean_phone, "phone number"),
        (Contact.email, clean_email, "email"),
    ):
        if value is None:
            continue
        owner = db.session.scalar(select(Contact.id).where(column == value))
        if owner is not None and owner != contact.id:
            raise DuplicateContact(f"Another contact already has this {label} ({value}).", owner, column.key)
    contact.phone, contact.email = clean_phone, clean_email
    contact.first_name = first_name.strip()[:200] or None
    contact.last_name = last_name.strip()[:200] or None
    contact.company = company.strip()[:200] or None
    contact.custom_fields = custom_fields
    return contact


EXPORT_COLUMNS = ("phone", "email", "first_name", "last_name", "company", "opted_out", "created_at")


def custom_field_names(tenant_id: int) -> list[str]:
    """Every custom field key the tenant's contacts use (raw SQL, so the tenant is bound by hand)."""
    if db.engine.dialect.name == "postgresql":
        sql = "SELECT DISTINCT jsonb_object_keys(custom_fields) FROM contacts WHERE tenant_id = :tenant"
    else:
        sql = "SELECT DISTINCT key FROM contacts, json_each(contacts.custom_fields) WHERE tenant_id = :tenant"
    return sorted(db.session.scalars(text(sql), {"tenant": tenant_id}))


def export_rows(filters: ContactFilter, tenant_id: int, batch: int = 2000) -> Iterator[list[str]]:
    """The header then one spreadsheet-safe row per matching contact, read in keyset batches (flat memory)."""
    fields = custom_field_names(tenant_id)
    yield neutralise_row([*EXPORT_COLUMNS, *fields])
    after = 0
    while True:
        rows = db.session.scalars(
            filters.apply(select(Contact)).where(Contact.id > after).order_by(Contact.id).limit(batch)
        ).all()
        if not rows:
            return
        for contact in rows:
            custom = contact.custom_fields or {}
            values = [getattr(contact, column) for column in EXPORT_COLUMNS]
            values[EXPORT_COLUMNS.index("created_at")] = contact.created_at.isoformat()
            yield neutralise_row([*values, *(custom.get(name, "") for name in fields)])
        after = rows[-1].id
        db.session.expunge_all()
