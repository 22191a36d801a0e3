"""Message templates: write, preview live for a contact or a list, save, delete."""

from __future__ import annotations

from types import SimpleNamespace

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db
from tenants.pages import ProviderKind
from tenants.templates import Template, TemplateError, apply_template_form
from tenants.templating import (
    CHANNEL_LIMITS,
    CHANNEL_NAMES,
    MEDIA_TYPES,
    check_template,
    media_type_of,
    missing_for_audience,
    render,
)
from webapp.rendering import render_page
from webapp.tenancy import member_required

bp = Blueprint("message_templates", __name__)

PREVIEW_AUDIENCE_LIMIT = 5_000  # contacts of a list checked for missing variables while typing
SAMPLE_VARIABLES = {
    "firstName": "Ana",
    "lastName": "Silva",
    "name": "Ana Silva",
    "phone": "+5511961234567",
    "email": "ana@example.com",
    "company": "Acme",
}


def _channel(raw: str | None) -> ProviderKind:
    try:
        return ProviderKind(raw or "")
    except ValueError:
        abort(404)


def _draft(channel: ProviderKind) -> SimpleNamespace:
    """The editor's current fields as something the renderer accepts, without touching the database."""
    form = request.form
    return SimpleNamespace(
        channel=channel,
        subject=form.get("subject") or None,
        body=form.get("body") or "",
        html_body=form.get("html_body") or None,
        media_url=(form.get("media_url") or "").strip() or None,
        media_type=form.get("media_type") or None,
        whatsapp_template=form.get("whatsapp_template") or None,
        whatsapp_language=form.get("whatsapp_language") or None,
        whatsapp_parameters=[
            p.strip() for p in (form.get("whatsapp_parameters") or "").splitlines() if p.strip()
        ],
    )


def _editor(template: Template, channel: ProviderKind, error=None, problems=(), status=200):
    contacts = db.session.scalars(select(Contact).order_by(Contact.id.desc()).limit(50)).all()
    lists = db.session.scalars(select(ContactList).order_by(ContactList.name)).all()
    return render_template(
        "message_templates/form.html",
        template=template,
        channel=channel,
        channel_name=CHANNEL_NAMES[channel],
        limits=CHANNEL_LIMITS[channel],
        error=error,
        problems=problems,
        form=request.form,
        contacts=contacts,
        lists=lists,
        media_types=MEDIA_TYPES,
    ), status


@bp.get("/templates")
@member_required
def index():
    templates = db.session.scalars(select(Template).order_by(Template.name)).all()
    return render_template("message_templates/index.html", templates=templates, channels=CHANNEL_NAMES)


def _save(template: Template, channel: ProviderKind, creating: bool):
    try:
        apply_template_form(template, request.form)
    except TemplateError as exc:
        db.session.rollback()
        return _editor(template, channel, str(exc), exc.problems, 400)
    if creating:
        db.session.add(template)
    db.session.commit()
    flash(f"Template {template.name} saved.", "success")
    return redirect(url_for("message_templates.edit", template_id=template.id))


@bp.route("/templates/new", methods=["GET", "POST"])
@member_required
def new():
    if not request.values.get("channel"):
        return redirect(url_for("message_templates.index"))
    channel = _channel(request.values.get("channel"))
    template = Template(channel=channel, body="", whatsapp_parameters=[])
    if request.method == "POST":
        return _save(template, channel, creating=True)
    return _editor(template, channel)


@bp.route("/templates/<int:template_id>", methods=["GET", "POST"])
@member_required
def edit(template_id: int):
    template = db.get_or_404(Template, template_id)
    if request.method == "POST":
        return _save(template, template.channel, creating=False)
    return _editor(template, template.channel, problems=check_template(template))


@bp.post("/templates/<int:template_id>/delete")
@member_required
def delete(template_id: int):
    template = db.get_or_404(Template, template_id)
    name = template.name
    db.session.delete(template)
    db.session.commit()
    flash(f"Template {name} deleted.", "success")
    return redirect(url_for("message_templates.index"))


@bp.post("/templates/preview")
@member_required
def preview():
    """The live preview: problems, the message rendered for a contact, and what the chosen list lacks."""
    channel = _channel(request.form.get("channel"))
    draft = _draft(channel)
    contact_id, list_id = request.form.get("contact_id", ""), request.form.get("list_id", "")
    contact = db.get_or_404(Contact, int(contact_id)) if contact_id.isdigit() else None
    rendered = render(draft, contact if contact is not None else SAMPLE_VARIABLES)
    audience_missing, audience_size = None, 0
    if list_id.isdigit():
        db.get_or_404(ContactList, int(list_id))
        members = db.session.scalars(
            select(Contact)
            .join(ContactListMember, ContactListMember.contact_id == Contact.id)
            .where(ContactListMember.list_id == int(list_id))
            .limit(PREVIEW_AUDIENCE_LIMIT)
        ).all()
        audience_size = len(members)
        audience_missing = missing_for_audience(draft, members)
    return render_page(
        "message_templates/form.html",
        "preview",
        template=draft,
        channel=channel,
        rendered=rendered,
        contact=contact,
        audience_missing=audience_missing,
        audience_size=audience_size,
        audience_limit=PREVIEW_AUDIENCE_LIMIT,
        media_type=media_type_of(draft.media_url, draft.media_type),
        media_types=MEDIA_TYPES,
        limits=CHANNEL_LIMITS[channel],
        channel_name=CHANNEL_NAMES[channel],
        form=request.form,
        problems=(),
        contacts=[],
        lists=[],
        error=None,
    )
