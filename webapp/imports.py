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
from tenants.contact_book import ContactError, create_list
from tenants.contact_import import (
    CUSTOM,
    IGNORE,
    STANDARD_TARGETS,
    ContactImportError,
    max_import_bytes,
    new_import,
    preview_rows,
    rejections_csv,
)
from tenants.contacts import ContactImport, ContactList, ImportStatus
from tenants.db import db
from tenants.scoping import tenant
from webapp.rendering import render_page
from webapp.tenancy import member_required

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
                raise ContactImportError(f"The file is larger than the {limit // (1024 * 1024)} MB limit.")
            out.write(chunk)
    return path


def _index_page(error: str | None = None, status: int = 200):
    imports = db.session.scalars(select(ContactImport).order_by(ContactImport.id.desc()).limit(50)).all()
    limit_mb = max_import_bytes() // (1024 * 1024)
    return render_template("imports/index.html", imports=imports, error=error, limit_mb=limit_mb), status


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
            raise ContactImportError(f"The file is larger than the {limit // (1024 * 1024)} MB limit.")
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
        return _index_page(f"The file is larger than the {limit // (1024 * 1024)} MB limit.", 413)
    except ContactImportError as exc:
        db.session.rollback()
        return _index_page(str(exc), 413 if "limit" in str(exc) else 400)
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


def _mapping_context(contact_import: ContactImport) -> dict:
    try:
        samples = preview_rows(contact_import)
    except (OSError, ContactImportError):
        samples = []
    columns = list(contact_import.header)
    return {
        "columns": columns,
        "samples": samples,
        "targets": _targets(columns),
        "custom_prefix": CUSTOM,
        "lists": db.session.scalars(select(ContactList).order_by(ContactList.name)).all(),
    }


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
    try:
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
        )
    except (ContactImportError, ContactError) as exc:
        db.session.rollback()
        contact_import = db.get_or_404(ContactImport, contact_import_id)
        context = {"contact_import": contact_import, "error": str(exc)} | _mapping_context(contact_import)
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
        headers={"Content-Disposition": f'attachment; filename="{name}-rejected-rows.csv"'},
    )
