"""CSV import as a person does it: upload, confirm the mapping, see the result, download the rejected rows."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

from sqlalchemy import select
from werkzeug.http import parse_options_header

from tasks.imports import run_contact_import
from tenants.contacts import Contact, ContactImport, ContactList, ContactListMember
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants

MESSY = Path(__file__).resolve().parents[2] / "shared" / "data" / "contacts-messy.csv"


def _upload(auth, name: str, content: bytes, **kw):
    return auth.post(
        "/imports", {"file": (io.BytesIO(content), name)}, content_type="multipart/form-data", **kw
    )


def _raw_upload(auth, quoted_name: str, content: bytes, **kw):
    """An upload whose multipart body is written here, as a browser writes it (``quoted_name`` is the
    filename parameter as sent, quotes included)."""
    boundary = "----crier-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
            f"{auth.token('/dashboard')}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename={quoted_name}\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return auth.client.post(
        "/imports", data=body, content_type=f"multipart/form-data; boundary={boundary}", **kw
    )


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


def test_a_file_with_too_many_columns_is_refused_at_upload(app, auth, client):
    auth.signup()
    header = ",".join(f"c{n}" for n in range(100_000)).encode()
    started = time.monotonic()
    huge = _raw_upload(auth, '"wide.csv"', header + b"\n" + b"1," * 99_999 + b"1\n")  # 1 MB
    assert huge.status_code == 400 and time.monotonic() - started < 5
    page = huge.get_data(as_text=True)
    assert "The file has more than" in page and "at most 500 columns" in page
    assert len(page) < 100_000

    wide = _upload(
        auth, "wide.csv", ",".join(f"c{n}" for n in range(600)).encode() + b"\n" + b"1," * 599 + b"1\n"
    )
    assert wide.status_code == 400 and "The file has 600 columns" in wide.get_data(as_text=True)
    assert _import_id(app) is None

    fits = _upload(
        auth, "fits.csv", ",".join(f"c{n}" for n in range(500)).encode() + b"\n" + b"1," * 499 + b"1\n"
    )
    assert fits.status_code == 302


def test_an_upload_over_the_request_limit_gets_the_imports_message(app, auth, client):
    auth.signup()
    app.config.update(MAX_IMPORT_BYTES=2 * 1024 * 1024, MAX_CONTENT_LENGTH=2 * 1024 * 1024 + 1024)
    content = b"phone,name\n" + b"+5511961234567,Ana\n" * (2 * 1024 * 1024 // 19 + 100)

    full = _raw_upload(auth, '"big.csv"', content)
    fragment = _raw_upload(auth, '"big.csv"', content, headers={"HX-Request": "true"})

    for response in (full, fragment):
        assert response.status_code == 413
        assert "The file is larger than the 2 MB limit." in response.get_data(as_text=True)
        assert "HX-Request" in response.headers["Vary"]
    assert "<html" in full.get_data(as_text=True)
    assert "<html" not in fragment.get_data(as_text=True) and 'id="upload"' in fragment.get_data(as_text=True)


def test_the_rejected_rows_download_keeps_an_unusual_file_name(app, auth, client):
    auth.signup()
    quoted = '"Clientes \\"VIP\\" 🎉.csv"'  # the name Clientes "VIP" 🎉.csv, its quotes escaped
    assert _raw_upload(auth, quoted, b"phone,name\nnot a phone,Ana\n+5511961234567,Bia\n").status_code == 302

    download = client.get(f"/imports/{_import_id(app)}/rejections.csv")

    download.get_data()
    disposition = download.headers["Content-Disposition"]
    assert download.status_code == 200 and disposition.isascii()
    assert parse_options_header(disposition) == (
        "attachment",
        {"filename": 'Clientes "VIP" 🎉-rejected-rows.csv'},
    )
    assert download.headers["Cache-Control"] == "no-store"


NATIONAL = b"telefone,nome\n(11) 96123-4567,Ana\n11 98765-4321,Bia\n+1 202 555 0143,Carl\n"


def _guessed_form(page: str) -> dict[str, str]:
    """The mapping form as the page proposes it (each select's selected option)."""
    selects = re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', page, re.S)
    form = {}
    for name, options in selects:
        chosen = re.search(r'<option value="([^"]*)" selected', options)
        form[name] = chosen.group(1) if chosen else ""
    return form


def _phones(app) -> list[str]:
    with app.app_context(), all_tenants(db.session):
        return sorted(db.session.scalars(select(Contact.phone)).all())


def test_national_numbers_make_the_mapping_page_ask_for_their_country(app, auth, client):
    auth.signup(timezone="America/Sao_Paulo")
    cleared = {"name": "Acme", "timezone": "America/Sao_Paulo", "default_country": ""}
    assert auth.post("/workspace/settings", cleared).status_code == 302  # a workspace without one
    assert _upload(auth, "clientes.csv", NATIONAL).status_code == 302
    import_id = _import_id(app)

    page = client.get(f"/imports/{import_id}").get_data(as_text=True)

    assert "Some phone numbers have no country code" in page
    assert '<option value="BR" selected>BR (+55)</option>' in page
    assert "Proposed from the workspace's time zone (America/Sao_Paulo)" in page
    form = _guessed_form(page)
    assert form["phone_country"] == "BR"
    started = auth.post(f"/imports/{import_id}/start", {**form, "save_country": "1"})
    assert started.status_code == 302
    with app.app_context():
        run_contact_import(import_id)
    assert _phones(app) == ["+12025550143", "+5511961234567", "+5511987654321"]

    settings = client.get("/workspace/settings").get_data(as_text=True)
    assert re.search(r'<option selected value="BR">|<option value="BR" selected', settings)
    assert _upload(auth, "more.csv", NATIONAL).status_code == 302
    again = client.get(f"/imports/{_import_id(app)}").get_data(as_text=True)
    assert '<option value="BR" selected>' in again and "default country; change it for this import" in again
    assert "Also make it the workspace" not in again


def test_the_country_chosen_for_an_import_wins_over_the_workspace_default(app, auth, client):
    auth.signup(timezone="America/Sao_Paulo")  # the new workspace's default country: BR
    assert _upload(auth, "clientes.csv", b"phone\n06 12 34 56 78\n").status_code == 302
    import_id = _import_id(app)
    page = client.get(f"/imports/{import_id}").get_data(as_text=True)
    assert '<option value="BR" selected>' in page and "Also make it the workspace" not in page
    form = _guessed_form(page)

    assert auth.post(f"/imports/{import_id}/start", {**form, "phone_country": "FR"}).status_code == 302
    with app.app_context():
        run_contact_import(import_id)

    assert _phones(app) == ["+33612345678"]
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(Tenant.default_country)) == "BR"


def test_international_numbers_need_no_country(app, auth, client):
    auth.signup(timezone="America/Sao_Paulo")
    assert _upload(auth, "intl.csv", b"phone\n+55 11 96123-4567\n5511987654321\n").status_code == 302
    page = client.get(f"/imports/{_import_id(app)}").get_data(as_text=True)
    assert "Which column is what?" in page and "phone_country" not in page


def test_an_unknown_country_is_a_clear_400(app, auth, client):
    auth.signup()
    assert _upload(auth, "clientes.csv", NATIONAL).status_code == 302
    import_id = _import_id(app)
    form = _guessed_form(client.get(f"/imports/{import_id}").get_data(as_text=True))
    refused = auth.post(f"/imports/{import_id}/start", {**form, "phone_country": "XX"})
    assert refused.status_code == 400 and "Unknown country code" in refused.get_data(as_text=True)
