"""Contacts and lists: browse, search, filter, view, opt out or in, delete."""

from __future__ import annotations

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)

from tenants.campaigns import tenant_zone
from tenants.contact_book import (
    ContactError,
    ContactFilter,
    add_to_list,
    all_lists,
    count_contacts,
    create_list,
    custom_fields_from_text,
    display_name,
    erase,
    export_rows,
    lists_of,
    lists_with_sizes,
    opt_in,
    opt_out,
    page_of_contacts,
    remove_from_list,
    save_contact,
)
from tenants.contacts import Contact, ContactList, Segment
from tenants.db import db
from tenants.reports import STATE_LABELS, contact_history
from webapp.rendering import csv_download, render_page
from webapp.reports import local_moment
from webapp.tenancy import member_required

bp = Blueprint("contacts", __name__)


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        abort(400, f"{name} must be a number.")
    return int(raw)


def _filters() -> ContactFilter:
    opted = request.args.get("opted_out", "")
    segment_id = _int_arg("segment")
    return ContactFilter(
        segment=db.get_or_404(Segment, segment_id) if segment_id is not None else None,
        timezone=g.workspace.tenant.timezone,
        search=request.args.get("q", "").strip()[:200],
        list_id=_int_arg("list"),
        opted_out={"yes": True, "no": False}.get(opted),
        field=request.args.get("field", "").strip()[:100],
        value=request.args.get("value", "").strip()[:200],
    )


@bp.get("/contacts")
@member_required
def index():
    filters = _filters()
    if filters.list_id is not None:
        db.get_or_404(ContactList, filters.list_id)
    page = page_of_contacts(filters, after=_int_arg("after"), before=_int_arg("before"))
    return render_page(
        "contacts/index.html",
        "contact_table",
        contacts=page,
        filters=filters,
        lists=all_lists(),
        display_name=display_name,
        args=request.args,
    )


@bp.get("/contacts/count")
@member_required
def count():
    """How many contacts match, fetched after the page (an exact count of a million rows takes a while)."""
    total = count_contacts(_filters())
    return f"{total:,} contact{'' if total == 1 else 's'}"


def _save_from_form(contact: Contact) -> None:
    form = request.form
    save_contact(
        contact,
        default_country=g.workspace.tenant.default_country,
        phone=form.get("phone", ""),
        email=form.get("email", ""),
        first_name=form.get("first_name", ""),
        last_name=form.get("last_name", ""),
        company=form.get("company", ""),
        custom_fields=custom_fields_from_text(form.get("custom_fields", "")),
    )


def _form_page(contact: Contact, creating: bool, error: str | None):
    custom = "\n".join(f"{key}: {value}" for key, value in (contact.custom_fields or {}).items())
    return render_template(
        "contacts/form.html",
        contact=contact,
        creating=creating,
        error=error,
        form=request.form,
        custom=custom,
    ), 400 if error else 200


@bp.route("/contacts/new", methods=["GET", "POST"])
@member_required
def new():
    contact, error = Contact(custom_fields={}), None
    if request.method == "POST":
        try:
            _save_from_form(contact)
        except ContactError as exc:
            error = str(exc)
        else:
            db.session.add(contact)
            db.session.commit()
            flash(f"{display_name(contact)} added.", "success")
            return redirect(url_for("contacts.show", contact_id=contact.id))
    return _form_page(contact, True, error)


@bp.route("/contacts/<int:contact_id>/edit", methods=["GET", "POST"])
@member_required
def edit(contact_id: int):
    contact, error = db.get_or_404(Contact, contact_id), None
    if request.method == "POST":
        try:
            _save_from_form(contact)
        except ContactError as exc:
            error = str(exc)
            db.session.rollback()
            contact = db.get_or_404(Contact, contact_id)
        else:
            db.session.commit()
            flash(f"{display_name(contact)} saved.", "success")
            return redirect(url_for("contacts.show", contact_id=contact.id))
    return _form_page(contact, False, error)


@bp.get("/contacts/export.csv")
@member_required
def export():
    """Matching contacts as CSV that is safe to open in a spreadsheet, streamed batch by batch."""
    filters, tenant_id = _filters(), g.workspace.tenant.id
    return csv_download(lambda: export_rows(filters, tenant_id), f"{g.workspace.tenant.slug}-contacts.csv")


@bp.get("/contacts/<int:contact_id>")
@member_required
def show(contact_id: int):
    contact = db.get_or_404(Contact, contact_id)
    return render_template(
        "contacts/show.html",
        contact=contact,
        display_name=display_name(contact),
        member_of=lists_of(contact),
        lists=[row for row, _ in lists_with_sizes()],
        history=contact_history(contact.id),
        state_labels=STATE_LABELS,
        zone=tenant_zone(g.workspace.tenant).key,
        local=local_moment,
    )


@bp.post("/contacts/<int:contact_id>/opt-out")
@member_required
def opt_out_contact(contact_id: int):
    contact = db.get_or_404(Contact, contact_id)
    opt_out(contact, "set by a member")
    db.session.commit()
    flash(f"{display_name(contact)} will not receive campaigns any more.", "info")
    return redirect(url_for("contacts.show", contact_id=contact_id))


@bp.post("/contacts/<int:contact_id>/opt-in")
@member_required
def opt_in_contact(contact_id: int):
    contact = db.get_or_404(Contact, contact_id)
    opt_in(contact)
    db.session.commit()
    flash(f"{display_name(contact)} receives campaigns again.", "success")
    return redirect(url_for("contacts.show", contact_id=contact_id))


@bp.post("/contacts/<int:contact_id>/delete")
@member_required
def delete(contact_id: int):
    contact = db.get_or_404(Contact, contact_id)
    name = display_name(contact)
    erase(contact)
    db.session.commit()
    flash(f"{name} and everything Crier knew about them were deleted.", "success")
    return redirect(url_for("contacts.index"))


@bp.post("/contacts/<int:contact_id>/lists")
@member_required
def add_contact_to_list(contact_id: int):
    contact = db.get_or_404(Contact, contact_id)
    raw = request.form.get("list_id", "")
    contact_list = db.get_or_404(ContactList, int(raw)) if raw.isdigit() else abort(400, "Choose a list.")
    add_to_list(contact, contact_list)
    db.session.commit()
    return redirect(url_for("contacts.show", contact_id=contact_id))


@bp.post("/contacts/<int:contact_id>/lists/<int:contact_list_id>/remove")
@member_required
def remove_contact_from_list(contact_id: int, contact_list_id: int):
    contact = db.get_or_404(Contact, contact_id)
    contact_list = db.get_or_404(ContactList, contact_list_id)
    remove_from_list(contact, contact_list)
    db.session.commit()
    return redirect(url_for("contacts.show", contact_id=contact_id))


@bp.route("/lists", methods=["GET", "POST"])
@member_required
def lists():
    error = None
    if request.method == "POST":
        try:
            created = create_list(request.form.get("name", ""))
        except ContactError as exc:
            error = str(exc)
        else:
            db.session.commit()
            flash(f"List {created.name} created.", "success")
            return redirect(url_for("contacts.lists"))
    return render_template(
        "contacts/lists.html", lists=lists_with_sizes(), error=error
    ), 400 if error else 200


@bp.post("/lists/<int:contact_list_id>/delete")
@member_required(manage=True)
def delete_list(contact_list_id: int):
    contact_list = db.get_or_404(ContactList, contact_list_id)
    name = contact_list.name
    db.session.delete(contact_list)
    db.session.commit()
    flash(f"List {name} deleted; its contacts stay.", "success")
    return redirect(url_for("contacts.lists"))
