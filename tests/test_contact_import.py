"""CSV contact import: what a file becomes, row by row, and what the user is told."""

from __future__ import annotations

import csv
import io
import random
import shutil
from pathlib import Path

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from flask_migrate import upgrade
from sqlalchemy import func, select

import tasks.imports
import tenants.contact_import as engine
from tasks.imports import ThrottledProgress, run_contact_import, start_import
from tenants.contact_book import create_list
from tenants.contact_import import (
    ImportFailed,
    ImportFileError,
    MappingError,
    check_import_size,
    configure_import,
    guess_mapping,
    import_contacts,
    new_import,
    normalize_email,
    preview_rows,
    profile_file,
    rejections_csv,
    validate_mapping,
)
from tenants.contacts import Contact, ContactImport, ContactListMember, ImportRejection, ImportStatus
from tenants.db import db
from tenants.models import Tenant
from tenants.phones import InvalidPhone, to_e164
from tenants.scoping import all_tenants, tenant
from tenants.spreadsheet import neutralise
from tests.conftest import built_app

MESSY = Path(__file__).resolve().parents[2] / "shared" / "data" / "contacts-messy.csv"
MESSY_REJECTED = {
    5: "phone '12' is too short",
    6: "phone 'phone-number' is not a phone number",
    30: "phone '+999123456789' has an unknown country code",
    48: "no phone number or email",
    89: "phone '+1 555 0100' is too short",
    111: "phone '+55 11 9' is too short",
}
HEADER = "phone,first_name,last_name,email,company,city\n"


def make_tenant(name: str, default_country: str | None = None) -> int:
    with all_tenants(db.session):
        row = Tenant(name=name, slug=name.lower(), default_country=default_country)
        db.session.add(row)
        db.session.commit()
        return row.id


@pytest.fixture
def acme(app):
    """Tenant Acme (no default country): yields its id, in an app context working for it."""
    with app.app_context():
        tenant_id = make_tenant("Acme")
        with tenant(db.session, tenant_id):
            yield tenant_id


def run_import(path, *, mapping=None, list_id=None, update_existing=True, events=None, **options):
    """Upload, confirm (the guessed mapping unless given) and run, as the pages and the worker do."""
    record = new_import(path, filename=Path(path).name)
    configure_import(
        record, mapping=mapping or dict(record.mapping), list_id=list_id, update_existing=update_existing
    )
    db.session.commit()
    return import_contacts(record, on_progress=events.append if events is not None else None, **options)


def write(directory: Path, name: str, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path = directory / name
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def contacts_by_phone() -> dict[str, Contact]:
    return {c.phone: c for c in db.session.scalars(select(Contact))}


def rejections(import_id: int) -> dict[int, str]:
    found = db.session.scalars(select(ImportRejection).where(ImportRejection.import_id == import_id))
    return {r.line: r.reason for r in found}


def counts(result) -> tuple[int, int, int, int, int]:
    return result.created, result.updated, result.merged, result.skipped, result.rejected


# --- the shared messy file -----------------------------------------------------------------------


@pytest.mark.parametrize("portable", [False, True], ids=["postgresql-writer", "portable-writer"])
def test_the_messy_file_gives_exactly_the_documented_result(acme, tmp_path, portable):
    path = tmp_path / "contacts-messy.csv"
    shutil.copy(MESSY, path)
    events = []
    result = run_import(path, events=events, portable=portable)

    assert counts(result) == (164, 0, 10, 0, 6)
    assert result.processed == result.total == 180
    assert db.session.scalar(select(func.count()).select_from(Contact)) == 164
    assert rejections(result.import_id) == MESSY_REJECTED
    record = db.session.get(ContactImport, result.import_id)
    assert (record.status, record.rows_total, record.rows_processed) == (ImportStatus.COMPLETED, 180, 180)
    assert (record.created_count, record.merged_count, record.rejected_count) == (164, 10, 6)
    assert events[0].processed == 0 and events[-1].processed == 180 and events[-1].percent == 100

    people = contacts_by_phone()
    first = people["+33612386563"]
    assert (first.first_name, first.last_name, first.email, first.company) == (
        "Aiko",
        "Zhang",
        "aiko.28@example.com",
        "Wayne Ent.",
    )
    assert first.custom_fields == {"city": "Austin", "plan": "pro"}
    without_city = {
        p for p, c in people.items() if "city" not in c.custom_fields or "plan" not in c.custom_fields
    }
    assert without_city == {"+5511977776666", "+5511955554444", "+5511966665555"}  # their cells are empty
    # digits without +, 00 prefixes and separators are international numbers
    assert {"+819012364054", "+447400106001", "+2348021204868", "+5511961250699"} <= people.keys()


def test_merged_rows_keep_every_value_later_rows_win(acme, tmp_path):
    path = tmp_path / "contacts-messy.csv"
    shutil.copy(MESSY, path)
    run_import(path)
    people = contacts_by_phone()
    zoe = people["+819012397971"]  # two rows: "Zoë" then "ZOË", same everything else
    assert (zoe.first_name, zoe.last_name, zoe.email, zoe.company) == (
        "ZOË",
        "García",
        "zo.6@example.com",
        "Acme Corp",
    )
    assert zoe.custom_fields == {"city": "Cairo", "plan": "team"}
    assert people["+33612361318"].first_name == "Mohammed"  # "+33 6 12 36 13 18" then "0033612361318"


def test_the_odd_cells_of_the_messy_file_arrive_intact(acme, tmp_path):
    path = tmp_path / "contacts-messy.csv"
    shutil.copy(MESSY, path)
    result = run_import(path)
    people = contacts_by_phone()

    quoted = people["+5511977776666"]
    assert (quoted.first_name, quoted.last_name, quoted.company) == (
        "Multi\nLine",
        "Comma, Name",
        'Quote "Co"',
    )
    world = people["+5511955554444"]
    assert (world.first_name, world.last_name, world.company) == ("🙂 Emoji", "محمد", "株式会社")
    assert world.email == "emoji@example.com"
    formula = people["+5511988887777"]  # stored as text: neutralising is the exporter's job
    assert formula.first_name == '=HYPERLINK("http://evil.example","click")'
    assert (formula.last_name, formula.company) == ("+cmd|' /C calc'!A0", "@SUM(1+1)")
    assert formula.custom_fields == {"city": "-2+3", "plan": "pro"}
    long_name = people["+5511966665555"]
    assert long_name.first_name == "X" * 200 and long_name.last_name == "Long"
    assert result.notes[engine.NOTE_TRUNCATED.format(field="first_name")] == 1
    broken_email = people["+4915123447861"]  # ".54@example.com": the row stays, the text is kept
    assert broken_email.email is None and broken_email.custom_fields["invalid_email"] == ".54@example.com"
    assert result.notes[engine.NOTE_INVALID_EMAIL] == 8


def test_rejected_rows_download_with_line_reason_and_row_neutralised(acme, tmp_path):
    path = tmp_path / "contacts-messy.csv"
    shutil.copy(MESSY, path)
    result = run_import(path)
    text = "".join(rejections_csv(result.import_id))
    assert text.startswith("\ufeffline,reason,row\r\n")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert [int(r[0]) for r in rows[1:]] == sorted(MESSY_REJECTED)
    assert rows[1] == ["5", "phone '12' is too short", "12,Bad,too short,,,,"]
    assert rows[5] == ["89", "phone '+1 555 0100' is too short", "'+1 555 0100,Bad,too short,,,,"]


def test_batches_do_not_change_the_result(acme, tmp_path, monkeypatch):
    """Duplicates in different batches merge the same way as in one (the started_at marker)."""
    monkeypatch.setattr(engine, "BATCH_ROWS", 7)
    path = tmp_path / "contacts-messy.csv"
    shutil.copy(MESSY, path)
    events = []
    result = run_import(path, events=events)
    assert counts(result) == (164, 0, 10, 0, 6)
    assert rejections(result.import_id) == MESSY_REJECTED
    assert len(events) == 1 + 180 // 7 + 1


def test_the_embedded_sqlite_database_gives_the_same_result(tmp_path):
    url = f"sqlite:///{tmp_path / 'crier.db'}"
    path = tmp_path / "contacts-messy.csv"
    shutil.copy(MESSY, path)
    with built_app(SQLALCHEMY_DATABASE_URI=url) as app, app.app_context():
        upgrade()
        tenant_id = make_tenant("Embedded")
        with tenant(db.session, tenant_id):
            target = create_list("Messy")
            db.session.commit()
            first = run_import(path, list_id=target.id)
            assert counts(first) == (164, 0, 10, 0, 6)
            assert rejections(first.import_id) == MESSY_REJECTED
            again = run_import(path, list_id=target.id)
            assert counts(again) == (0, 164, 10, 0, 6)
            members = select(func.count()).select_from(ContactListMember)
            assert db.session.scalar(members) == 164
            assert contacts_by_phone()["+819012397971"].custom_fields == {"city": "Cairo", "plan": "team"}


# --- encodings, separators, line ends ------------------------------------------------------------

NAMES = "phone,first_name,email\n+5511961234567,José,jose@example.com\n+5511961234568,Zoë,zoe@example.com\n"


@pytest.mark.parametrize(
    ("encoding", "written_as", "prefix"),
    [
        ("utf-8", "utf-8", b""),
        ("utf-8-sig", "utf-8", b"\xef\xbb\xbf"),
        ("utf-16", "utf-16-le", b"\xff\xfe"),
        ("utf-16", "utf-16-be", b"\xfe\xff"),
        ("utf-16-le", "utf-16-le", b""),
        ("cp1252", "cp1252", b""),
    ],
)
def test_encodings_are_recognised(acme, tmp_path, encoding, written_as, prefix):
    path = tmp_path / f"{written_as}.csv"
    path.write_bytes(prefix + NAMES.encode(written_as))
    assert profile_file(path).encoding == encoding
    result = run_import(path)
    assert result.created == 2
    names = {c.first_name for c in contacts_by_phone().values()}
    assert names == {"José", "Zoë"}


def test_latin1_bytes_outside_windows_1252_still_read(acme, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("phone,first_name\n+5511961234567,Jos\xe9\x81\n".encode("latin-1"))
    assert profile_file(path).encoding == "latin-1"
    assert run_import(path).created == 1


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_separators_and_line_ends(acme, tmp_path, delimiter, newline):
    text = (
        f"Phone{delimiter}First Name{delimiter}Company\n"
        f'+5511961234567{delimiter}Ana{delimiter}"Acme{delimiter} Inc."\n'
        f"+5511961234568{delimiter}Bia{delimiter}Globex\n"
    )
    path = write(tmp_path, "people.csv", text, newline=newline)
    profile = profile_file(path)
    assert profile.delimiter == delimiter
    assert profile.header == ["Phone", "First Name", "Company"]
    assert profile.sample_rows[0] == ["+5511961234567", "Ana", f"Acme{delimiter} Inc."]
    assert run_import(path).created == 2
    assert contacts_by_phone()["+5511961234567"].company == f"Acme{delimiter} Inc."


def test_european_semicolons_with_decimal_commas(acme, tmp_path):
    path = write(
        tmp_path, "eu.csv", "Telefone;Nome;Saldo\n+5511961234567;Ana;1,50\n+5511961234568;Bia;2,75\n"
    )
    profile = profile_file(path)
    assert profile.delimiter == ";" and profile.mapping == {
        "Telefone": "phone",
        "Nome": "first_name",
        "Saldo": "custom:Saldo",
    }


# --- files that cannot be imported ---------------------------------------------------------------


def test_an_empty_file_is_refused(tmp_path):
    with pytest.raises(ImportFileError, match="The file is empty"):
        profile_file(write(tmp_path, "empty.csv", ""))
    with pytest.raises(ImportFileError, match="The file is empty"):
        profile_file(write(tmp_path, "blank.csv", "\n\n  \n"))
    bom_only = tmp_path / "bom.csv"
    bom_only.write_bytes(b"\xef\xbb\xbf\r\n")
    with pytest.raises(ImportFileError, match="The file is empty"):
        profile_file(bom_only)


def test_a_header_without_rows_is_refused(tmp_path):
    with pytest.raises(ImportFileError, match="header row but no contacts"):
        profile_file(write(tmp_path, "header.csv", "phone,first_name,email\r\n\r\n"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "This is a PNG image, not a CSV file"),
        (b"PK\x03\x04" + bytes(200), "an Excel .xlsx workbook"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(200), "an Excel .xls workbook"),
        (b"%PDF-1.7\n" + bytes(range(256)), "a PDF document"),
        (random.Random(7).randbytes(4096), "not text"),
        (bytes(range(1, 32)) * 50, "not text"),
    ],
    ids=["png", "xlsx", "xls", "pdf", "random", "control-characters"],
)
def test_binary_files_are_refused_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "upload.csv"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=message):
        profile_file(path)


def test_a_stray_nul_character_is_dropped_not_fatal(acme, tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(b"phone,first_name\n+5511961234567,A\x00na\n12,B\x00ad\n")
    result = run_import(path)
    assert counts(result) == (1, 0, 0, 0, 1)
    assert contacts_by_phone()["+5511961234567"].first_name == "Ana"
    assert db.session.scalar(select(ImportRejection.raw)) == "12,Bad"


def test_oversized_files_are_refused(app, tmp_path):
    check_import_size(engine.MAX_IMPORT_BYTES)
    with pytest.raises(ImportFileError, match=r"60\.0 MB; the largest file you can import is 50\.0 MB"):
        check_import_size(60 * 1024 * 1024)
    path = write(tmp_path, "big.csv", NAMES * 100)
    with app.app_context():
        app.config["MAX_IMPORT_BYTES"] = 1024
        assert engine.max_import_bytes() == 1024
        with pytest.raises(ImportFileError, match="largest file you can import"):
            profile_file(path)


def test_a_first_row_of_data_is_not_taken_for_column_names(tmp_path):
    with pytest.raises(ImportFileError, match="looks like a contact"):
        profile_file(write(tmp_path, "no-header.csv", "+5511961234567,Ana\n+5511961234568,Bia\n"))


def test_a_quote_never_closed_is_one_rejection_not_a_name(acme, tmp_path):
    rows = [HEADER, "+5511961234566,Ana,S,a@example.com,,\n", '+5511961234567,"Bia,Silva,b@example.com,,\n']
    rows += [f"+55119612345{n:02d},N{n},S,n{n}@example.com,,\n" for n in range(10, 20)]
    result = run_import(write(tmp_path, "broken.csv", "".join(rows)))
    assert counts(result) == (1, 0, 0, 0, 1)
    found = db.session.scalars(select(ImportRejection)).one()
    assert found.line == 3 and found.reason.startswith("a quote opens here and is never closed")
    assert found.raw.count("\n") == 10


def test_a_quote_closed_much_later_rejects_the_swallowed_lines(acme, tmp_path):
    rows = [HEADER, '+5511961234567,"Bia,Silva,b@example.com,,\n']
    rows += [f"+55119612345{n:02d},N{n},S,n{n}@example.com,,\n" for n in range(10, 40)]
    rows += ['Closed",x,,,\n', "+5511961234569,Fine,S,f@example.com,,\n"]
    result = run_import(write(tmp_path, "broken.csv", "".join(rows)))
    assert counts(result) == (1, 0, 0, 0, 1)
    assert rejections(result.import_id) == {
        2: "the row runs over 32 lines, to line 33: is a closing quote missing?"
    }


# --- the mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "target"),
    [
        ("Phone", "phone"),
        ("phone_number", "phone"),
        ("Phone Number", "phone"),
        ("Mobile", "phone"),
        ("mobile phone", "phone"),
        ("WhatsApp", "phone"),
        ("Cell", "phone"),
        ("Telefone", "phone"),
        ("Teléfono", "phone"),
        ("MSISDN", "phone"),
        ("E-mail", "email"),
        ("Email Address", "email"),
        ("email", "email"),
        ("Mail", "email"),
        ("First Name", "first_name"),
        ("firstName", "first_name"),
        ("first_name", "first_name"),
        ("Given name", "first_name"),
        ("Name", "first_name"),
        ("Last Name", "last_name"),
        ("lastName", "last_name"),
        ("Surname", "last_name"),
        ("Company", "company"),
        ("Organisation", "company"),
        ("Company name", "company"),
        ("city", "custom:city"),
        ("Plan", "custom:Plan"),
    ],
)
def test_mapping_guesses_from_common_header_spellings(header, target):
    assert guess_mapping([header]) == {header: target}


def test_each_standard_target_is_guessed_once():
    mapping = guess_mapping(["Mobile", "WhatsApp", "E-mail", "Email", "First Name", "Last Name"])
    assert mapping == {
        "Mobile": "phone",
        "WhatsApp": "custom:WhatsApp",
        "E-mail": "email",
        "Email": "custom:Email",
        "First Name": "first_name",
        "Last Name": "last_name",
    }


def test_duplicate_and_blank_header_names_become_distinct_columns(tmp_path):
    profile = profile_file(write(tmp_path, "dups.csv", "phone,note,,note\n+5511961234567,a,b,c\n"))
    assert profile.header == ["phone", "note", "column 3", "note (2)"]
    assert profile.mapping["note (2)"] == "custom:note (2)"


def test_validate_mapping_completes_and_refuses():
    header = ["Phone", "E-mail", "City", "Notes"]
    assert validate_mapping(header, {"Phone": "phone", "Notes": "ignore"}) == {
        "Phone": "phone",
        "E-mail": "custom:E-mail",
        "City": "custom:City",
        "Notes": "ignore",
    }
    with pytest.raises(MappingError, match="both mapped to phone"):
        validate_mapping(header, {"Phone": "phone", "E-mail": "phone"})
    with pytest.raises(MappingError, match="Map a column to phone or to email"):
        validate_mapping(header, {"Phone": "ignore", "E-mail": "ignore"})
    with pytest.raises(MappingError, match="unknown target"):
        validate_mapping(header, {"Phone": "phone", "City": "town"})
    with pytest.raises(MappingError, match="no column"):
        validate_mapping(header, {"Mobile": "phone"})
    with pytest.raises(MappingError, match="both go to custom field"):
        validate_mapping(header, {"Phone": "phone", "City": "custom:where", "Notes": "custom:Where"})
    with pytest.raises(MappingError, match="a name"):
        validate_mapping(header, {"Phone": "phone", "City": "custom: "})


def test_a_confirmed_mapping_decides_what_goes_where(acme, tmp_path):
    path = write(tmp_path, "mapped.csv", "Number,Who,Town,Secret\n+5511961234567,Ana,Rio,x\n")
    mapping = {"Number": "phone", "Who": "last_name", "Town": "custom:city", "Secret": "ignore"}
    run_import(path, mapping=mapping)
    ana = contacts_by_phone()["+5511961234567"]
    assert (ana.first_name, ana.last_name, ana.custom_fields) == (None, "Ana", {"city": "Rio"})


def test_preview_rows_and_configure_import(acme, tmp_path):
    record = new_import(write(tmp_path, "p.csv", NAMES), filename="p.csv")
    assert record.status is ImportStatus.UPLOADED and record.header == ["phone", "first_name", "email"]
    assert preview_rows(record, limit=1) == [["+5511961234567", "José", "jose@example.com"]]
    with pytest.raises(MappingError, match="list does not exist"):
        configure_import(record, mapping=dict(record.mapping), list_id=999, update_existing=True)
    configure_import(record, mapping=dict(record.mapping), list_id=None, update_existing=False)
    assert record.status is ImportStatus.QUEUED and record.mapping["email"] == "email"


# --- existing contacts, the target list, other tenants --------------------------------------------


def _existing(**values) -> Contact:
    contact = Contact(**values)
    db.session.add(contact)
    db.session.commit()
    return contact


UPDATE_FILE = "phone,first_name,email,company,plan\n+5511961234567,New,,Globex,pro\n+5511961234599,Bia,,,\n"


@pytest.mark.parametrize("update_existing", [True, False])
def test_existing_contacts_updated_or_left_alone(acme, tmp_path, update_existing):
    old = _existing(
        phone="+5511961234567", first_name="Old", email="old@example.com", custom_fields={"a": "1"}
    )
    target = create_list("March")
    db.session.commit()
    result = run_import(
        write(tmp_path, "u.csv", UPDATE_FILE), list_id=target.id, update_existing=update_existing
    )
    db.session.refresh(old)
    if update_existing:
        assert counts(result) == (1, 1, 0, 0, 0)
        assert (old.first_name, old.email, old.company) == ("New", "old@example.com", "Globex")
        assert old.custom_fields == {"a": "1", "plan": "pro"}  # combined; the empty email erased nothing
    else:
        assert counts(result) == (1, 0, 0, 1, 0)
        assert (old.first_name, old.company, old.custom_fields) == ("Old", None, {"a": "1"})
    listed = db.session.scalars(
        select(ContactListMember.contact_id).where(ContactListMember.list_id == target.id)
    )
    assert set(listed) == {c.id for c in contacts_by_phone().values()}  # left alone, still on the list


def test_importing_twice_adds_list_members_once(acme, tmp_path):
    target = create_list("Twice")
    db.session.commit()
    path = write(tmp_path, "n.csv", NAMES)
    run_import(path, list_id=target.id)
    second = run_import(path, list_id=target.id)
    assert counts(second) == (0, 2, 0, 0, 0)
    assert db.session.scalar(select(func.count()).select_from(ContactListMember)) == 2


@pytest.mark.parametrize("portable", [False, True], ids=["postgresql-writer", "portable-writer"])
def test_rows_beyond_the_plans_contacts_limit_are_rejected_and_existing_ones_still_update(
    acme, tmp_path, portable, monkeypatch
):
    with all_tenants(db.session):
        db.session.get(Tenant, acme).max_contacts = 4
    _existing(phone="+5511961234567", first_name="Old")
    db.session.commit()
    monkeypatch.setattr("tenants.contact_import.BATCH_ROWS", 2)  # the limit holds across batches
    rows = "\n".join(f"+55119612345{n:02d},Person {n}" for n in range(60, 66))
    path = write(tmp_path, "many.csv", f"phone,first_name\n+5511961234567,Renamed\n{rows}\n")

    result = run_import(path, portable=portable)

    assert counts(result) == (3, 1, 0, 0, 3)  # 1 existing + 3 new = the limit of 4
    reasons = rejections(result.import_id)
    assert sorted(reasons) == [6, 7, 8]
    assert set(reasons.values()) == {"the workspace's plan allows 4 contacts; this row would add one more"}
    assert contacts_by_phone()["+5511961234567"].first_name == "Renamed"
    assert len(contacts_by_phone()) == 4


def test_an_import_never_touches_another_tenants_contacts(app, tmp_path):
    path = write(tmp_path, "n.csv", NAMES + "12,Bad,\n")
    with app.app_context():
        a, b = make_tenant("A"), make_tenant("B")
        with tenant(db.session, b):
            theirs = _existing(phone="+5511961234567", first_name="B's", email="jose@example.com")
        with tenant(db.session, a):
            result = run_import(path)
            assert counts(result) == (2, 0, 0, 0, 1)
            assert {c.tenant_id for c in db.session.scalars(select(Contact))} == {a}
        with tenant(db.session, b):
            db.session.refresh(theirs)
            assert (theirs.first_name, theirs.email) == ("B's", "jose@example.com")
            assert db.session.scalar(select(func.count()).select_from(Contact)) == 1
            assert list(rejections_csv(result.import_id)) == ["\ufeffline,reason,row\r\n"]


def test_a_list_of_another_tenant_cannot_be_the_target(app, tmp_path):
    with app.app_context():
        a, b = make_tenant("A"), make_tenant("B")
        with tenant(db.session, b):
            b_list = create_list("Theirs")
            db.session.commit()
            b_list_id = b_list.id
        with tenant(db.session, a):
            record = new_import(write(tmp_path, "n.csv", NAMES), filename="n.csv")
            with pytest.raises(MappingError, match="list does not exist"):
                configure_import(
                    record, mapping=dict(record.mapping), list_id=b_list_id, update_existing=True
                )


# --- emails ----------------------------------------------------------------------------------------


def test_an_email_used_by_another_contact_rejects_the_row(acme, tmp_path):
    _existing(phone="+5511961234500", email="taken@example.com")
    text = (
        "phone,email\n"
        "+5511961234501,taken@example.com\n"  # line 2: the existing contact's email, another phone
        "+5511961234502,pair@example.com\n"  # line 3
        "+5511961234503,PAIR@example.com\n"  # line 4: an earlier row's email with another phone
        ",pair@example.com\n"  # line 5: no phone: the same person as line 3
        "+5511961234500,taken@example.com\n"  # line 6: the existing contact itself
    )
    result = run_import(write(tmp_path, "e.csv", text))
    assert counts(result) == (1, 1, 1, 0, 2)
    assert rejections(result.import_id) == {
        2: "email taken@example.com is already used by another contact",
        4: "email pair@example.com is already used by another contact",
    }
    assert set(contacts_by_phone()) == {"+5511961234500", "+5511961234502"}


def test_a_merged_row_without_email_keeps_the_email_taken(acme, tmp_path):
    text = (
        "phone,email,first_name\n"
        "+5511961234501,one@example.com,A\n"
        "+5511961234501,,B\n"  # merged: no email, the contact keeps one@
        "+5511961234502,one@example.com,C\n"  # another phone with one@: rejected
        "+5511961234503,two@example.com,D\n"
        "+5511961234503,three@example.com,E\n"  # merged: the contact's email becomes three@
        "+5511961234504,two@example.com,F\n"  # two@ was never written: free again
    )
    result = run_import(write(tmp_path, "e.csv", text))
    assert counts(result) == (3, 0, 2, 0, 1)
    assert rejections(result.import_id) == {4: "email one@example.com is already used by another contact"}
    emails = {p: (c.email, c.first_name) for p, c in contacts_by_phone().items()}
    assert emails == {
        "+5511961234501": ("one@example.com", "B"),
        "+5511961234503": ("three@example.com", "E"),
        "+5511961234504": ("two@example.com", "F"),
    }


def test_email_only_rows_and_a_phone_for_a_contact_known_by_email(acme, tmp_path):
    known = _existing(email="known@example.com", first_name="Known")
    text = "email,phone,first_name\nknown@example.com,+5511961234567,\nnew@example.com,,New\n"
    result = run_import(write(tmp_path, "e.csv", text))
    assert counts(result) == (1, 1, 0, 0, 0)
    db.session.refresh(known)
    assert (known.phone, known.first_name) == ("+5511961234567", "Known")
    new = db.session.scalar(select(Contact).where(Contact.email == "new@example.com"))
    assert (new.phone, new.first_name) == (None, "New")


def test_invalid_emails(acme, tmp_path):
    text = "phone,email\n+5511961234567,not-an-email\n,also@bad\n"
    result = run_import(write(tmp_path, "e.csv", text))
    assert counts(result) == (1, 0, 0, 0, 1)
    contact = contacts_by_phone()["+5511961234567"]
    assert contact.email is None and contact.custom_fields == {"invalid_email": "not-an-email"}
    assert rejections(result.import_id)[3].startswith("no phone number, and email 'also@bad' is not valid")


def test_emails_are_compared_lower_cased(acme, tmp_path):
    result = run_import(
        write(tmp_path, "e.csv", "email,first_name\nAna@Example.COM,Ana\nana@example.com,ANA\n")
    )
    assert counts(result) == (1, 0, 1, 0, 0)
    assert db.session.scalar(select(Contact.email)) == "ana@example.com"


# --- rows and lines --------------------------------------------------------------------------------


def test_line_numbers_are_physical_lines_where_the_record_starts(acme, tmp_path):
    text = (
        "phone,first_name,company\r\n"  # 1
        '+5511961234567,"Two\r\nLines",Acme\r\n'  # 2-3
        "\r\n"  # 4: blank, skipped
        '12,"Bad\nand, quoted",X\r\n'  # 5-6
        "+5511961234568,Ok,\r\n"  # 7
        '+999,"three\n\nlines",\r\n'  # 8-10
        "+5511961234569,Extra,Acme,surplus\r\n"  # 11
        "+5511961234570,Short\r\n"  # 12: a missing last cell is just empty
    )
    result = run_import(write(tmp_path, "lines.csv", text))
    assert counts(result) == (3, 0, 0, 0, 3)
    found = db.session.scalars(select(ImportRejection).order_by(ImportRejection.line)).all()
    assert [(r.line, r.raw) for r in found] == [
        (5, '12,"Bad\nand, quoted",X'),
        (8, '+999,"three\n\nlines",'),
        (11, "+5511961234569,Extra,Acme,surplus"),
    ]
    assert found[2].reason.startswith("the row has 4 values but the header has 3 columns")
    assert contacts_by_phone()["+5511961234567"].first_name == "Two\r\nLines"


def test_national_numbers_use_the_tenants_default_country(app, tmp_path):
    text = (
        "phone,first_name\n"
        "(11) 96123-4567,National\n"
        "11 96123-4568,National without brackets\n"
        "5511961234569,International digits\n"
        "+44 7400 123456,International\n"
        "0044 7400 123457,Double zero\n"
    )
    path = write(tmp_path, "br.csv", text)
    with app.app_context():
        brazil = make_tenant("Brasil", default_country="BR")
        with tenant(db.session, brazil):
            assert run_import(path).created == 5
            assert set(contacts_by_phone()) == {
                "+5511961234567",
                "+5511961234568",
                "+5511961234569",
                "+447400123456",
                "+447400123457",
            }
        nowhere = make_tenant("Nowhere")
        with tenant(db.session, nowhere):
            result = run_import(path)
            assert counts(result) == (3, 0, 0, 0, 2)
            assert "default country" in rejections(result.import_id)[2]


# --- the job: claim, events, failure ----------------------------------------------------------------


@pytest.fixture
def emitted(monkeypatch) -> list[tuple[int, str, dict]]:
    events = []
    monkeypatch.setattr(tasks.imports, "emit_to_tenant", lambda t, name, data: events.append((t, name, data)))
    return events


def test_the_actor_runs_a_queued_import_once_and_tells_the_browser(acme, tmp_path, emitted, monkeypatch):
    monkeypatch.setattr(engine, "BATCH_ROWS", 50)
    path = tmp_path / "contacts-messy.csv"
    shutil.copy(MESSY, path)
    record = new_import(path, filename="contacts-messy.csv")
    configure_import(record, mapping=dict(record.mapping), list_id=None, update_existing=True)
    db.session.commit()
    import_id = record.id

    run_contact_import(import_id)
    run_contact_import(import_id)  # a redelivered message finds it completed and does nothing

    names = [name for _, name, _ in emitted]
    assert names[0] == "import:progress" and names[-1] == "import:completed"
    assert names.count("import:completed") == 1 and all(t == acme for t, _, _ in emitted)
    progress = emitted[0][2]
    assert set(progress) == {
        "import_id",
        "total",
        "processed",
        "created",
        "updated",
        "merged",
        "skipped",
        "rejected",
        "percent",
    }
    assert (progress["import_id"], progress["total"], progress["processed"]) == (import_id, 180, 0)
    done = emitted[-1][2]
    assert (done["created"], done["merged"], done["rejected"], done["percent"]) == (164, 10, 6, 100)
    assert done["status"] == "completed" and engine.NOTE_INVALID_EMAIL in done["notes"]


def test_a_failed_import_says_why(acme, tmp_path, emitted):
    path = write(tmp_path, "gone.csv", NAMES)
    record = new_import(path, filename="gone.csv")
    configure_import(record, mapping=dict(record.mapping), list_id=None, update_existing=True)
    db.session.commit()
    path.unlink()
    run_contact_import(record.id)
    assert emitted[-1][1] == "import:failed"
    assert emitted[-1][2]["error"] == "The uploaded file is no longer there; upload it again."
    db.session.expire_all()
    failed = db.session.get(ContactImport, record.id)
    assert failed.status is ImportStatus.FAILED and failed.error.startswith("The uploaded file is no longer")
    with pytest.raises(ImportFailed, match="no longer there"):
        import_contacts(failed)


def test_a_file_that_changed_encoding_after_upload_fails_clearly(acme, tmp_path):
    path = write(tmp_path, "changed.csv", NAMES)
    record = new_import(path, filename="changed.csv")
    configure_import(record, mapping=dict(record.mapping), list_id=None, update_existing=True)
    db.session.commit()
    path.write_bytes(NAMES.encode("utf-8") + "+5511961234569,Mañana\n".encode("cp1252"))
    with pytest.raises(ImportFailed, match="not valid UTF-8 text"):
        import_contacts(record)


def test_start_import_queues_and_enqueues(acme, tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(run_contact_import, "send", sent.append)
    record = new_import(write(tmp_path, "n.csv", NAMES), filename="n.csv")
    start_import(record, mapping={**record.mapping, "email": "ignore"}, list_id=None, update_existing=False)
    assert sent == [record.id]
    db.session.expire_all()
    queued = db.session.get(ContactImport, record.id)
    assert queued.status is ImportStatus.QUEUED and queued.mapping["email"] == "ignore"
    assert queued.update_existing is False


def test_progress_events_are_throttled(emitted):
    throttle = ThrottledProgress(tenant_id=1, interval=60)
    for processed in range(0, 10_000, 2000):
        throttle(engine.ImportProgress(7, total=10_000, processed=processed))
    assert len(emitted) == 1
    throttle.interval = 0
    throttle(engine.ImportProgress(7, total=10_000, processed=10_000))
    assert emitted[-1][2]["percent"] == 100


# --- the fast paths answer exactly what the libraries answer -----------------------------------------


def _phone_samples() -> list[str]:
    rnd = random.Random(2026)
    samples = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            digits = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]
            samples.append(digits)
            for _ in range(8):
                spot = rnd.randrange(len(digits))
                samples.append(digits[:spot] + str(rnd.randrange(10)) + digits[spot + 1 :])
            samples += [digits[:-1], digits + "5", digits[:3] + "0" + digits[3:]]
    return samples


def test_the_fast_phone_path_agrees_with_phonenumbers():
    for digits in _phone_samples():
        try:
            number = phonenumbers.parse("+" + digits, None)
            expected = (
                phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                if phonenumbers.is_valid_number(number)
                else None
            )
        except phonenumbers.NumberParseException:
            expected = None
        try:
            got = to_e164("+" + digits)
        except InvalidPhone:
            got = None
        assert got == expected, digits


def test_phone_reasons():
    assert to_e164(" +55 (11) 96123-4567 ") == "+5511961234567"
    for value, reason in [
        ("", "no phone number"),
        ("12", "too short"),
        ("phone-number", "not a phone number"),
        ("+999123456789", "unknown country code"),
        ("5.51196E+12", "scientific notation"),
        ("+1 555 0100", "too short"),
        ("9" * 70, "too long"),
    ]:
        with pytest.raises(InvalidPhone, match=reason):
            to_e164(value)


EMAILS = [
    "ana@example.com",
    "Ana.Silva+tag@Example.COM",
    "o'brien@example.ie",
    "x@sub.domain.example.org",
    "a@b",
    ".54@example.com",
    "a..b@example.com",
    "a@example..com",
    "a@-example.com",
    "a@example-.com",
    "ab--cd@ab--cd.example.com",
    "a@xn--bcher-kva.example",
    "a@ab--cd.com",
    "user@localhost",
    "user@host.local",
    "user@example.test",
    "user@example.invalid",
    "user@10.0.0.1",
    "user@[10.0.0.1]",
    '"quoted"@example.com',
    "José@example.com",
    "jose@exämple.com",
    "a@example.c",
    "a@example.123",
    "Ana <ana@example.com>",
    "a" * 65 + "@example.com",
    "a@" + "b" * 64 + ".com",
    "a@" + ("b" * 60 + ".") * 5 + "com",
    "postmaster@example.com",
    "a b@example.com",
    "a@exa mple.com",
]


@pytest.mark.parametrize("address", EMAILS)
def test_email_normalisation_agrees_with_email_validator(address):
    try:
        expected = validate_email(address, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        expected = None
    try:
        got = normalize_email(address)
    except engine.InvalidEmail:
        got = None
    assert got == expected


def test_spreadsheet_neutralising():
    assert [
        neutralise(v) for v in ["=1+1", "+1 555", "-2", "@SUM(1)", "\tx", "\rx", "Ana", "", None, 12]
    ] == [
        "'=1+1",
        "'+1 555",
        "'-2",
        "'@SUM(1)",
        "'\tx",
        "'\rx",
        "Ana",
        "",
        "",
        "12",
    ]
