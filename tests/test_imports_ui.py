"""CSV import as a person does it: upload, confirm the mapping, see the result, download the rejected rows."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from sqlalchemy import select

from tasks.imports import run_contact_import
from tenants.contacts import ContactImport, ContactList, ContactListMember
from tenants.db import db
from tenants.scoping import all_tenants

MESSY = Path(__file__).resolve().parents[2] / "shared" / "data" / "contacts-messy.csv"


def _upload(auth, name: str, content: bytes):
    return auth.post("/imports", {"file": (io.BytesIO(content), name)}, content_type="multipart/form-data")


def _import_id(app) -> int:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(select(ContactImport.id).order_by(ContactImport.id.desc()))


def test_the_messy_file_through_the_pages(app, auth, client):
    auth.signup()
    response = _upload(auth, "contacts-messy.csv", MESSY.read_bytes())
    assert response.status_code == 302
    import_id = _import_id(app)
    mapping = client.get(f"/imports/{import_id}").get_data(as_text=True)
    assert "Which column is what?" in mapping and "E-mail" in mapping and "First Name" in mapping
    targets = re.findall(r'name="(target_\d+)"[^>]*>.*?<option value="([^"]+)" selected', mapping, re.S)
    form = {name: value for name, value in targets}
    form.update(
        {
            f"custom_{n}": col
            for n, col in enumerate(["Phone", "First Name", "last_name", "E-mail", "Company", "city", "plan"])
        }
    )
    started = auth.post(
        f"/imports/{import_id}/start", {**form, "list_id": "new", "new_list": "Messy", "update_existing": "1"}
    )
    assert started.status_code == 302

    with app.app_context():
        run_contact_import(import_id)  # what the worker does with the message

    result = client.get(f"/imports/{import_id}").get_data(as_text=True)
    counts = dict(re.findall(r'data-testid="(created|updated|merged|rejected)">([\d,]+)<', result))
    assert counts == {"created": "164", "updated": "0", "merged": "10", "rejected": "6"}
    with app.app_context(), all_tenants(db.session):
        messy = db.session.scalar(select(ContactList).where(ContactList.name == "Messy"))
        members = db.session.scalars(
            select(ContactListMember).where(ContactListMember.list_id == messy.id)
        ).all()
    assert len(members) == 164

    download = client.get(f"/imports/{import_id}/rejections.csv")
    rows = list(csv.reader(io.StringIO(download.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0] == ["line", "reason", "row"] and len(rows) == 7
    assert all(row[0].isdigit() and row[1] for row in rows[1:])


def test_bad_uploads_get_clear_messages(app, auth, client):
    auth.signup()
    empty = _upload(auth, "empty.csv", b"")
    assert empty.status_code == 400 and "empty" in empty.get_data(as_text=True).lower()
    binary = _upload(auth, "photo.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20)
    assert binary.status_code == 400 and "a PNG image" in binary.get_data(as_text=True)
    noise = _upload(auth, "noise.csv", bytes(range(256)) * 40)
    assert noise.status_code == 400 and "not text" in noise.get_data(as_text=True)
    assert auth.post("/imports", {}).status_code == 400
    app.config["MAX_IMPORT_BYTES"] = 1024
    big = _upload(auth, "big.csv", b"phone,name\n" + b"+5511961234567,Ana\n" * 200)
    assert big.status_code == 413 and "larger than" in big.get_data(as_text=True)
