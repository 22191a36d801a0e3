"""CSV imports: upload, confirm the column mapping, watch the progress live, download the rejected rows."""

from __future__ import annotations

import secrets
from pathlib import Path

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from tasks.broker import WorkersUnreachable
from tasks.imports import start_import
from tenants.accounts import AccountError, country_codes, update_workspace
from tenants.contact_book import ContactError, create_list
from tenants.contact_import import (
    CUSTOM,
    IGNORE,
    STANDARD_TARGETS,
    ContactImportError,
    ImportTooLarge,
    has_national_numbers,
    max_import_bytes,
    new_import,
    preview_rows,
    rejections_csv,
    too_large_message,
)
from tenants.contacts import ContactImport, ContactList, ImportStatus
from tenants.db import db
from tenants.models import Tenant
from tenants.phones import country_for_timezone
from tenants.scoping import tenant
from webapp.rendering import attachment, render_page
from webapp.tenancy import bind_request_tenant, member_required

bp = Blueprint("imports", __name__)

UPLOAD_CHUNK = 1024 * 1024
TARGET_LABELS = {
    "phone": "Phone",
    "email": "Email",
    "first_name": "First name",
    "last_name": "Last name",
    "company": "Company",
}


def _upload_dir() -> Path:
    directory = Path(current_app.instance_path) / "uploads" / str(g.workspace.tenant.id)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _save_upload(upload, limit: int) -> Path:
    """Stream the upload to disk, refusing it once it passes ``limit`` bytes."""
    path = _upload_dir() / f"{secrets.token_hex(12)}.csv"
    written = 0
    with path.open("wb") as out:
        while chunk := upload.stream.read(UPLOAD_CHUNK):
            written += len(chunk)
            if written > limit:
                out.close()
                path.unlink(missing_ok=True)
                raise ImportTooLarge(too_large_message(limit))
            out.write(chunk)
    return path


def _index_page(error: str | None = None, status: int = 200):
    """The imports page, or for HTMX its upload form (with ``error`` above it)."""
    imports = db.session.scalars(select(ContactImport).order_by(ContactImport.id.desc()).limit(50)).all()
    limit_mb = max_import_bytes() // (1024 * 1024)
    return render_page(
        "imports/index.html", "upload", status, imports=imports, error=error, limit_mb=limit_mb
    )


@bp.errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge):
    """A body over ``MAX_CONTENT_LENGTH``, refused while the form was read: often by the CSRF check,
    before the request's workspace was bound."""
    if "workspace" not in g:
        bind_request_tenant()
    if g.workspace is None or not g.workspace.tenant.is_active:
        return render_template("error.html", code=413, message=too_large_message()), 413
    return _index_page(too_large_message(), 413)


@bp.get("/imports")
@member_required
def index():
    return _index_page()


@bp.post("/imports")
@member_required
def upload():
    limit = max_import_bytes()
    try:
        if (request.content_length or 0) > limit + 64 * 1024:
            raise ImportTooLarge(too_large_message(limit))
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise ContactImportError("Choose a CSV file to upload.")
        path = _save_upload(upload, limit)
        try:
            contact_import = new_import(path, filename=upload.filename, user_id=current_user.id)
        except ContactImportError:
            path.unlink(missing_ok=True)
            raise
    except RequestEntityTooLarge:
        return _index_page(too_large_message(limit), 413)
    except ContactImportError as exc:
        db.session.rollback()
        return _index_page(str(exc), 413 if isinstance(exc, ImportTooLarge) else 400)
    db.session.commit()
    return redirect(url_for("imports.show", contact_import_id=contact_import.id))


def _targets(header: list[str]) -> list[tuple[str, str]]:
    return [(t, TARGET_LABELS[t]) for t in STANDARD_TARGETS] + [(IGNORE, "Skip this column")]


@bp.get("/imports/<int:contact_import_id>")
@member_required
def show(contact_import_id: int):
    contact_import = db.get_or_404(ContactImport, contact_import_id)
    context = {"contact_import": contact_import, "error": None}
    if contact_import.status in (ImportStatus.UPLOADED, ImportStatus.FAILED):
        context |= _mapping_context(contact_import)
    return render_page("imports/show.html", "progress", **context)


def _mapping_context(contact_import: ContactImport, country: str | None = None) -> dict:
    try:
        samples = preview_rows(contact_import)
        national = has_national_numbers(contact_import)
    except (OSError, ContactImportError, UnicodeDecodeError):
        samples, national = [], False
    columns = list(contact_import.header)
    return {
        "columns": columns,
        "samples": samples,
        "targets": _targets(columns),
        "custom_prefix": CUSTOM,
        "lists": db.session.scalars(select(ContactList).order_by(ContactList.name)).all(),
        "phone_country": _phone_country(contact_import, country) if national else None,
    }


def _phone_country(contact_import: ContactImport, chosen: str | None) -> dict:
    """The question about national phone numbers: the country proposed (this import's, the
    workspace's default, else the country of its time zone) and whether it may become the default."""
    workspace = g.workspace.tenant
    default = workspace.default_country
    proposed = chosen or contact_import.phone_country or default
    return {
        "choices": country_codes(),
        "selected": proposed or country_for_timezone(workspace.timezone),
        "source": "default" if proposed and proposed == default else "chosen" if proposed else "timezone",
        "timezone": workspace.timezone,
        "may_save": not default and g.workspace.role.manages_members,
    }


def _save_default_country(country: str) -> None:
    """Make ``country`` the workspace's default for national numbers, if it has none (owners, admins)."""
    workspace = db.session.get(Tenant, g.workspace.tenant.id)
    if workspace is not None and not workspace.default_country and g.workspace.role.manages_members:
        update_workspace(workspace, workspace.name, workspace.timezone, country)


@bp.post("/imports/<int:contact_import_id>/start")
@member_required
def start(contact_import_id: int):
    contact_import = db.get_or_404(ContactImport, contact_import_id)
    form = request.form
    columns = list(contact_import.header)
    mapping = {}
    for n, column in enumerate(columns):
        choice = form.get(f"target_{n}", "")
        mapping[column] = CUSTOM + (form.get(f"custom_{n}") or column) if choice == "custom" else choice
    country = form.get("phone_country", "").strip().upper()
    try:
        if country and form.get("save_country"):
            _save_default_country(country)
        list_id = None
        if form.get("list_id") == "new":
            list_id = create_list(form.get("new_list", "")).id
        elif (form.get("list_id") or "").isdigit():
            list_id = int(form["list_id"])
        start_import(
            contact_import,
            mapping=mapping,
            list_id=list_id,
            update_existing=bool(form.get("update_existing")),
            phone_country=country or None,
        )
    except (ContactImportError, ContactError, AccountError) as exc:
        db.session.rollback()
        contact_import = db.get_or_404(ContactImport, contact_import_id)
        context = {"contact_import": contact_import, "error": str(exc)}
        context |= _mapping_context(contact_import, country or None)
        return render_template("imports/show.html", **context), 400
    except WorkersUnreachable as exc:
        flash(f"The import is saved and will start when the workers are back ({exc}).", "error")
    return redirect(url_for("imports.show", contact_import_id=contact_import_id))


@bp.get("/imports/<int:contact_import_id>/rejections.csv")
@member_required
def rejections(contact_import_id: int):
    contact_import = db.get_or_404(ContactImport, contact_import_id)
    tenant_id, import_id = g.workspace.tenant.id, contact_import.id

    def lines():
        with tenant(db.session, tenant_id):  # the stream may run in a fresh session, after the view returned
            yield from rejections_csv(import_id)

    name = Path(contact_import.filename).stem or "import"
    return Response(
        stream_with_context(lines()),
        mimetype="text/csv",
        headers={"Content-Disposition": attachment(f"{name}-rejected-rows.csv"), "Cache-Control": "no-store"},
    )
