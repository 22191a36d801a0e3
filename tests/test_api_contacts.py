"""Contacts, lists and segments over the API: the contact form's and the CSV import's rules, by token."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from flask_migrate import upgrade
from sqlalchemy import func, select

from tenants.contact_import import configure_import, guess_mapping, import_contacts, new_import
from tenants.contacts import Contact, ContactListMember
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants, tenant
from tests.conftest import ApiClient, built_app
from tests.factories import api_token_for

MESSY = Path(__file__).resolve().parents[2] / "shared" / "data" / "contacts-messy.csv"
MESSY_REASONS = {
    "phone '12' is too short",
    "phone 'phone-number' is not a phone number",
    "phone '+999123456789' has an unknown country code",
    "no phone number or email",
    "phone '+1 555 0100' is too short",
    "phone '+55 11 9' is too short",
}
PROBLEM = "application/problem+json"


def set_workspace(app, tenant_id: int, **values) -> None:
    with app.app_context(), all_tenants(db.session):
        row = db.session.get(Tenant, tenant_id)
        for name, value in values.items():
            setattr(row, name, value)
        db.session.commit()


def other_workspace(app, name: str = "Globex") -> ApiClient:
    """Another workspace and an admin token of it."""
    with app.app_context():
        row = Tenant(name=name, slug=name.lower())
        db.session.add(row)
        db.session.commit()
        tenant_id = row.id
    return ApiClient(app, api_token_for(app, tenant_id), tenant_id)


def created(api: ApiClient, path: str, payload: dict) -> dict:
    response = api.post(path, json=payload)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def bulk(api: ApiClient, contacts: list[dict], **options) -> dict:
    response = api.post("/api/v1/contacts/bulk", json={"contacts": contacts, **options})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def every_page(api: ApiClient, path: str, limit: int, **query) -> list[list[dict]]:
    """Follow ``next_after`` from the first page to the last."""
    pages, after = [], None
    while True:
        params = {"limit": limit, **query, **({"after": after} if after is not None else {})}
        body = api.get(path, query_string=params).get_json()
        pages.append(body["data"])
        after = body["next_after"]
        if after is None:
            return pages


def contact_count(app, tenant_id: int) -> int:
    with app.app_context(), tenant(db.session, tenant_id):
        return db.session.scalar(select(func.count()).select_from(Contact))


# --- one contact at a time ---------------------------------------------------------------------


def test_a_contact_is_created_read_changed_opted_out_and_deleted(app, api):
    set_workspace(app, api.tenant_id, default_country="BR")
    response = api.post(
        "/api/v1/contacts",
        json={
            "phone": "(11) 96123-4567",
            "email": " Ana.Silva@Example.COM ",
            "first_name": "Ana",
            "custom_fields": {"city": "Recife", "vip": True, "visits": 3},
        },
    )
    assert response.status_code == 201
    contact = response.get_json()
    assert response.headers["Location"] == f"/api/v1/contacts/{contact['id']}"
    assert (contact["phone"], contact["email"]) == ("+5511961234567", "ana.silva@example.com")
    assert contact["custom_fields"] == {"city": "Recife", "vip": "true", "visits": "3"}
    assert contact["opted_out"] is False
    path = f"/api/v1/contacts/{contact['id']}"
    assert api.get(path).get_json() == contact

    changed = api.patch(
        path, json={"last_name": "Souza", "email": None, "custom_fields": {"city": None, "plan": "pro"}}
    ).get_json()
    assert (changed["first_name"], changed["last_name"], changed["email"]) == ("Ana", "Souza", None)
    assert changed["phone"] == "+5511961234567"  # fields not sent stay
    assert changed["custom_fields"] == {"vip": "true", "visits": "3", "plan": "pro"}
    refused = api.patch(path, json={"phone": None})
    assert refused.status_code == 422 and "needs a phone number or an email" in refused.get_json()["detail"]

    opted = api.post(f"{path}/opt-out", json={"source": "unsubscribed in the shop"}).get_json()
    assert opted["opted_out"] is True and opted["opted_out_source"] == "unsubscribed in the shop"
    again = api.post(f"{path}/opt-out").get_json()
    assert (again["opted_out_at"], again["opted_out_source"]) == (
        opted["opted_out_at"],
        opted["opted_out_source"],
    )
    assert api.patch(path, json={"opted_out": False}).get_json()["opted_out"] is False

    assert api.delete(path).status_code == 204
    gone = api.get(path)
    assert gone.status_code == 404 and gone.mimetype == PROBLEM
    assert contact_count(app, api.tenant_id) == 0


def test_a_duplicate_phone_or_email_is_a_conflict_naming_the_contact_that_has_it(api):
    first = created(api, "/api/v1/contacts", {"phone": "+5511961234567", "email": "ana@example.com"})
    other = created(api, "/api/v1/contacts", {"email": "bia@example.com"})

    same_phone = api.post("/api/v1/contacts", json={"phone": "+55 11 96123-4567"})
    assert same_phone.status_code == 409 and same_phone.mimetype == PROBLEM
    body = same_phone.get_json()
    assert body["type"] == "/api/v1/problems/conflict"
    assert f"contact {first['id']}" in body["detail"]
    assert body["errors"] == [{"field": "phone", "message": f"already used by contact {first['id']}"}]

    same_email = api.patch(f"/api/v1/contacts/{other['id']}", json={"email": "ANA@example.com"})
    assert same_email.status_code == 409
    assert same_email.get_json()["errors"][0]["field"] == "email"
    assert api.get(f"/api/v1/contacts/{other['id']}").get_json()["email"] == "bia@example.com"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"phone": "12"}, "phone '12' is too short"),
        ({"first_name": "Nobody"}, "needs a phone number or an email"),
        ({"email": "not-an-email"}, "Email:"),
        ({"phone": "+5511961234567", "first_name": "A\x00na"}, "NUL"),
        ({"phone": "+5511961234567", "nickname": "Ana"}, "nickname"),
        ({"phone": "+5511961234567", "custom_fields": {" ": "x"}}, "custom field needs a name"),
    ],
)
def test_an_invalid_contact_is_refused_with_the_forms_reason(app, api, payload, message):
    response = api.post("/api/v1/contacts", json=payload)
    assert response.status_code == 422 and response.mimetype == PROBLEM
    assert message in str(response.get_json())
    assert contact_count(app, api.tenant_id) == 0


def test_a_new_contact_beyond_the_plans_limit_is_refused(app, api):
    set_workspace(app, api.tenant_id, max_contacts=1)
    created(api, "/api/v1/contacts", {"phone": "+5511961234567"})
    response = api.post("/api/v1/contacts", json={"phone": "+5511961234568"})
    assert response.status_code == 409 and "plan allows 1 contacts" in response.get_json()["detail"]


# --- listing -------------------------------------------------------------------------------------


def test_contacts_come_in_keyset_pages_and_filter_like_the_contacts_page(app, api):
    people = [
        {
            "phone": f"+55119612345{n:02d}",
            "first_name": name,
            "last_name": last,
            "custom_fields": {"city": city},
        }
        for n, (name, last, city) in enumerate(
            [
                ("Ana", "Silva", "Recife"),
                ("Bia", "Souza", "Natal"),
                ("Caio", "Silva", "Recife"),
                ("Duda", "Lima", "Natal"),
                ("Enzo", "Silva", "Natal"),
                ("Fabi", "Rocha", "Recife"),
                ("Gui", "Costa", "Recife"),
            ]
        )
    ]
    vip = created(api, "/api/v1/lists", {"name": "VIP"})
    answer = bulk(api, people[:3], list_id=vip["id"])
    ids = [row["id"] for row in answer["results"]] + [row["id"] for row in bulk(api, people[3:])["results"]]

    pages = every_page(api, "/api/v1/contacts", limit=3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [c["id"] for page in pages for c in page] == sorted(ids)

    def names(**query) -> list[str]:
        return [c["first_name"] for c in api.get("/api/v1/contacts", query_string=query).get_json()["data"]]

    assert names(search="silva") == ["Ana", "Caio", "Enzo"]
    assert names(search="61234501") == ["Bia"]
    assert names(list_id=vip["id"]) == ["Ana", "Bia", "Caio"]
    assert names(list_id=vip["id"], search="silva") == ["Ana", "Caio"]
    api.post(f"/api/v1/contacts/{ids[6]}/opt-out")
    assert names(opted_out="true") == ["Gui"]
    assert len(names(opted_out="false")) == 6
    segment = created(
        api,
        "/api/v1/segments",
        {"name": "Natal", "conditions": [{"field": "custom.city", "op": "equals", "value": "natal"}]},
    )
    assert names(segment_id=segment["id"]) == ["Bia", "Duda", "Enzo"]

    touched = api.patch(f"/api/v1/contacts/{ids[2]}", json={"company": "Acme"}).get_json()
    assert names(updated_since=touched["updated_at"]) == ["Caio"]
    assert names(updated_since="2000-01-01T00:00:00") == [p["first_name"] for p in people]

    assert api.get("/api/v1/contacts", query_string={"list_id": 999999}).status_code == 404
    for bad in (
        {"limit": 0},
        {"limit": 501},
        {"after": 2**40},
        {"search": "a\x00"},
        {"updated_since": "soon"},
    ):
        response = api.get("/api/v1/contacts", query_string=bad)
        assert response.status_code == 422 and response.mimetype == PROBLEM, bad


# --- bulk upsert ---------------------------------------------------------------------------------


def test_bulk_upsert_rejects_messy_rows_by_index_and_lands_the_good_ones(app, api):
    set_workspace(app, api.tenant_id, default_country=None)  # digits without + are international
    taken = created(api, "/api/v1/contacts", {"phone": "+5511999990000", "email": "taken@example.com"})
    known = created(api, "/api/v1/contacts", {"phone": "+5511999990001", "first_name": "Known"})
    rows = [
        {"phone": "+55 11 96123-4567", "first_name": "Ana", "email": "ANA@example.com"},
        {"phone": "12", "first_name": "Short"},
        {"first_name": "Nobody", "custom_fields": {"city": "Recife"}},
        {"phone": "+5511961234568", "email": "not-an-email"},
        {"phone": "5511961234567", "last_name": "Silva", "custom_fields": {"city": "Recife"}},
        {"phone": "+5511961234569", "email": "taken@example.com"},
        {"phone": "+5511999990001", "company": "Acme", "first_name": ""},
        {"phone": "+999123456789"},
        {"email": "eve@example.com", "first_name": "E" * 300},
    ]
    answer = bulk(api, rows)

    assert (answer["created"], answer["updated"], answer["unchanged"], answer["rejected"]) == (3, 2, 0, 4)
    results = answer["results"]
    assert [r["index"] for r in results] == list(range(len(rows)))
    rejected = {r["index"]: r["reason"] for r in results if r["status"] == "rejected"}
    assert rejected == {
        1: "phone '12' is too short",
        2: "no phone number or email",
        5: "email taken@example.com is already used by another contact",
        7: "phone '+999123456789' has an unknown country code",
    }
    assert all(r["id"] is None for r in results if r["status"] == "rejected")
    ana = results[0]
    assert ana["status"] == "created" and ana["reason"] is None
    assert results[4] == {
        "index": 4,
        "status": "updated",
        "id": ana["id"],
        "reason": "the same contact as row 0: merged into it",
    }
    assert results[3]["status"] == "created" and "email not valid" in results[3]["reason"]
    assert results[6] == {"index": 6, "status": "updated", "id": known["id"], "reason": None}
    assert results[8]["status"] == "created" and "first_name longer than 200" in results[8]["reason"]

    merged = api.get(f"/api/v1/contacts/{ana['id']}").get_json()
    assert (merged["phone"], merged["email"], merged["first_name"], merged["last_name"]) == (
        "+5511961234567",
        "ana@example.com",
        "Ana",
        "Silva",
    )
    assert merged["custom_fields"] == {"city": "Recife"}
    kept = api.get(f"/api/v1/contacts/{results[3]['id']}").get_json()
    assert kept["email"] is None and kept["custom_fields"] == {"invalid_email": "not-an-email"}
    updated = api.get(f"/api/v1/contacts/{known['id']}").get_json()
    assert (updated["first_name"], updated["company"]) == ("Known", "Acme")  # empty values never erase
    assert api.get(f"/api/v1/contacts/{taken['id']}").get_json()["phone"] == "+5511999990000"
    assert contact_count(app, api.tenant_id) == 5

    again = bulk(api, rows)
    assert (again["created"], again["updated"], again["unchanged"], again["rejected"]) == (0, 0, 5, 4)
    assert [r["id"] for r in again["results"]] == [r["id"] for r in results]


def test_a_second_identical_bulk_upsert_changes_nothing(app, api):
    rows = [
        {"phone": f"+4474001060{n:02d}", "email": f"p{n}@example.com", "custom_fields": {"plan": "pro"}}
        for n in range(40)
    ]
    first = bulk(api, rows)
    assert (first["created"], first["updated"], first["unchanged"], first["rejected"]) == (40, 0, 0, 0)
    before = api.get("/api/v1/contacts", query_string={"limit": 100}).get_json()["data"]

    second = bulk(api, rows)
    assert (second["created"], second["updated"], second["unchanged"], second["rejected"]) == (0, 0, 40, 0)
    assert {r["status"] for r in second["results"]} == {"unchanged"}
    assert (
        api.get("/api/v1/contacts", query_string={"limit": 100}).get_json()["data"] == before
    )  # not rewritten

    rows[7]["custom_fields"] = {"plan": "team"}
    third = bulk(api, rows)
    assert (third["updated"], third["unchanged"]) == (1, 39)
    assert third["results"][7]["status"] == "updated"


def messy_rows() -> list[dict]:
    """The shared messy CSV's rows as the API's contacts, columns mapped as the import guesses them."""
    with MESSY.open(encoding="utf-8-sig", newline="") as handle:
        records = [cells for cells in csv.reader(handle) if "".join(cells).strip()]
    header, mapping = records[0], guess_mapping(records[0])
    rows = []
    for cells in records[1:]:
        row: dict = {"custom_fields": {}}
        for column, cell in zip(header, cells, strict=False):
            target = mapping[column]
            if target.startswith("custom:"):
                row["custom_fields"][target.removeprefix("custom:")] = cell
            else:
                row[target] = cell
        rows.append(row)
    assert len(rows) == 180
    return rows


def test_the_messy_file_sent_as_data_gives_what_the_csv_import_gives(app, api, tmp_path):
    set_workspace(app, api.tenant_id, default_country=None)
    rows = messy_rows()
    answer = bulk(api, rows)
    assert (answer["created"], answer["updated"], answer["rejected"]) == (164, 10, 6)
    rejected = [r for r in answer["results"] if r["status"] == "rejected"]
    assert {r["reason"] for r in rejected} == MESSY_REASONS
    for result in rejected:  # each reason is about the row at its index
        assert ((rows[result["index"]].get("phone") or "").strip() or "no phone") in result["reason"]

    globex = other_workspace(app)
    path = tmp_path / "contacts-messy.csv"
    shutil.copy(MESSY, path)
    with app.app_context(), tenant(db.session, globex.tenant_id):
        record = new_import(path, filename=path.name)
        configure_import(record, mapping=dict(record.mapping), list_id=None, update_existing=True)
        db.session.commit()
        import_contacts(record)

    def people(tenant_id: int) -> set[tuple]:
        with app.app_context(), tenant(db.session, tenant_id):
            return {
                (
                    c.phone,
                    c.email,
                    c.first_name,
                    c.last_name,
                    c.company,
                    tuple(sorted(c.custom_fields.items())),
                )
                for c in db.session.scalars(select(Contact))
            }

    assert people(api.tenant_id) == people(globex.tenant_id)


def test_bulk_upsert_works_on_the_embedded_sqlite_database(tmp_path):
    with built_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'crier.db'}") as app:
        with app.app_context():
            upgrade()
            row = Tenant(name="Embedded", slug="embedded")
            db.session.add(row)
            db.session.commit()
            tenant_id = row.id
        api = ApiClient(app, api_token_for(app, tenant_id), tenant_id)
        messy = created(api, "/api/v1/lists", {"name": "Messy"})

        first = bulk(api, messy_rows(), list_id=messy["id"])
        assert (first["created"], first["updated"], first["unchanged"], first["rejected"]) == (164, 10, 0, 6)
        assert {r["reason"] for r in first["results"] if r["status"] == "rejected"} == MESSY_REASONS
        assert api.get(f"/api/v1/lists/{messy['id']}").get_json()["size"] == 164
        again = bulk(api, messy_rows(), list_id=messy["id"])
        assert [r["id"] for r in again["results"]] == [r["id"] for r in first["results"]]
        assert again["created"] == 0 and again["rejected"] == 6  # the rest: SQLite's writer rewrites them all
        assert contact_count(app, tenant_id) == 164


def test_bulk_upsert_keeps_the_plans_limit_and_puts_every_contact_named_on_the_list(app, api):
    set_workspace(app, api.tenant_id, max_contacts=3)
    existing = created(api, "/api/v1/contacts", {"phone": "+5511961234500", "first_name": "Old"})
    customers = created(api, "/api/v1/lists", {"name": "Customers"})
    rows = [{"phone": "+5511961234500", "first_name": "Renamed"}] + [
        {"phone": f"+55119612345{n:02d}"} for n in range(1, 5)
    ]
    answer = bulk(api, rows, list_id=customers["id"])

    statuses = [(r["status"], r["reason"]) for r in answer["results"]]
    limit = "the workspace's plan allows 3 contacts; this row would add one more"
    assert statuses == [
        ("updated", None),
        ("created", None),
        ("created", None),
        ("rejected", limit),
        ("rejected", limit),
    ]
    assert api.get(f"/api/v1/contacts/{existing['id']}").get_json()["first_name"] == "Renamed"
    assert api.get(f"/api/v1/lists/{customers['id']}").get_json()["size"] == 3
    members = api.get(f"/api/v1/lists/{customers['id']}/members").get_json()["data"]
    assert sorted(m["id"] for m in members) == sorted(r["id"] for r in answer["results"] if r["id"])


def test_more_than_10000_contacts_in_one_request_are_refused(app, api):
    rows = [{"phone": f"+55119{n:08d}"} for n in range(10_001)]
    response = api.post("/api/v1/contacts/bulk", json={"contacts": rows})
    assert response.status_code in (413, 422) and response.mimetype == PROBLEM
    assert "10000" in response.get_json()["detail"]
    assert contact_count(app, api.tenant_id) == 0


def test_bulk_upsert_refuses_custom_field_names_an_import_would_refuse(api):
    response = api.post(
        "/api/v1/contacts/bulk",
        json={"contacts": [{"phone": "+5511961234567", "custom_fields": {"City": "a", "city ": "b"}}]},
    )
    assert response.status_code == 422 and "both go to custom field" in response.get_json()["detail"]


# --- lists -----------------------------------------------------------------------------------------


def test_lists_are_created_listed_renamed_and_deleted_while_their_contacts_stay(app, api):
    vip = created(api, "/api/v1/lists", {"name": " VIP "})
    assert (vip["name"], vip["size"]) == ("VIP", 0)
    created(api, "/api/v1/lists", {"name": "Leads"})
    duplicate = api.post("/api/v1/lists", json={"name": "VIP"})
    assert duplicate.status_code == 409 and "already a list called VIP" in duplicate.get_json()["detail"]
    assert api.post("/api/v1/lists", json={"name": "   "}).status_code == 422

    pages = every_page(api, "/api/v1/lists", limit=1)
    assert [[row["name"] for row in page] for page in pages] == [["VIP"], ["Leads"]]

    path = f"/api/v1/lists/{vip['id']}"
    assert api.patch(path, json={"name": "Leads"}).status_code == 409
    assert api.patch(path, json={"name": "Gold"}).get_json()["name"] == "Gold"
    contact = created(api, "/api/v1/contacts", {"phone": "+5511961234567"})
    api.post(f"{path}/members", json={"contact_ids": [contact["id"]]})
    assert api.get(path).get_json()["size"] == 1

    assert api.delete(path).status_code == 204
    assert api.get(path).status_code == 404
    assert api.get(f"/api/v1/contacts/{contact['id']}").status_code == 200


def test_list_membership_in_bulk_reports_ids_that_are_not_this_workspaces(app, api):
    ids = [row["id"] for row in bulk(api, [{"phone": f"+55119612345{n:02d}"} for n in range(5)])["results"]]
    theirs = bulk(other_workspace(app), [{"phone": "+5511961234599"}])["results"][0]["id"]
    members = f"/api/v1/lists/{created(api, '/api/v1/lists', {'name': 'VIP'})['id']}/members"

    added = api.post(members, json={"contact_ids": [ids[0], ids[1], theirs, 999999, ids[0]]}).get_json()
    assert added == {"added": 2, "already_members": 0, "not_found": sorted([theirs, 999999])}
    again = api.post(members, json={"contact_ids": ids}).get_json()
    assert again == {"added": 3, "already_members": 2, "not_found": []}

    pages = every_page(api, members, limit=2)
    assert [[c["id"] for c in page] for page in pages] == [ids[0:2], ids[2:4], ids[4:5]]

    removed = api.delete(members, json={"contact_ids": [ids[0], ids[1], theirs]}).get_json()
    assert removed == {"removed": 2, "not_members": 0, "not_found": [theirs]}
    assert api.delete(members, json={"contact_ids": [ids[0]]}).get_json()["not_members"] == 1
    assert [c["id"] for c in api.get(members).get_json()["data"]] == ids[2:]

    for bad in ({}, {"contact_ids": []}, {"contact_ids": ["x"]}, {"contact_ids": list(range(1, 10_002))}):
        for method in (api.post, api.delete):
            response = method(members, json=bad)
            assert response.status_code == 422 and response.mimetype == PROBLEM, (method, bad)
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(func.count()).select_from(ContactListMember)) == 3


# --- segments --------------------------------------------------------------------------------------


def test_segments_follow_the_editors_rules_and_count_their_contacts(api):
    bulk(
        api,
        [
            {"phone": f"+55119612345{n:02d}", "first_name": name, "custom_fields": {"city": city}}
            for n, (name, city) in enumerate([("Ana", "Recife"), ("Bia", "Natal"), ("Caio", "Recife")])
        ],
    )
    recife = created(
        api,
        "/api/v1/segments",
        {"name": "Recife", "conditions": [{"field": "custom.city", "op": "equals", "value": "Recife"}]},
    )
    assert recife["match"] == "all"
    path = f"/api/v1/segments/{recife['id']}"
    assert api.get(path).get_json() == recife
    assert [c["first_name"] for c in api.get(f"{path}/contacts").get_json()["data"]] == ["Ana", "Caio"]
    assert api.get(f"{path}/count").get_json() == {"count": 2}
    pages = every_page(api, f"{path}/contacts", limit=1)
    assert [[c["first_name"] for c in page] for page in pages] == [["Ana"], ["Caio"]]

    changed = api.patch(
        path,
        json={
            "match": "any",
            "conditions": [
                {"field": "custom.city", "op": "equals", "value": "Natal"},
                {"field": "first_name", "op": "equals", "value": "ana"},
            ],
        },
    ).get_json()
    assert (changed["name"], changed["match"]) == ("Recife", "any")
    assert api.get(f"{path}/count").get_json() == {"count": 2}
    assert [c["first_name"] for c in api.get(f"{path}/contacts").get_json()["data"]] == ["Ana", "Bia"]

    created(api, "/api/v1/segments", {"name": "Everyone"})
    assert [s["name"] for s in api.get("/api/v1/segments").get_json()["data"]] == ["Recife", "Everyone"]
    assert api.patch(path, json={"name": "Everyone"}).status_code == 409

    invalid = api.post(
        "/api/v1/segments",
        json={
            "name": "Broken",
            "conditions": [
                {"field": "shoe_size", "op": "equals", "value": "42"},
                {"field": "created_at", "op": "after", "value": "yesterday"},
                {"op": "in_list", "field": "", "value": 2**40},
            ],
        },
    )
    assert invalid.status_code == 422
    assert [e["message"] for e in invalid.get_json()["errors"]] == [
        "Condition 1: there is no field called 'shoe_size'.",
        "Condition 2: 'yesterday' is not a date; write it as YYYY-MM-DD.",
        "Condition 3: choose a list.",
    ]
    assert (
        api.post(
            "/api/v1/segments", json={"name": "Odd", "conditions": [{"field": "x", "op": "near"}]}
        ).status_code
        == 422
    )

    assert api.delete(path).status_code == 204
    assert api.get(f"{path}/count").status_code == 404
    assert len(api.get("/api/v1/contacts").get_json()["data"]) == 3


# --- who may do what ---------------------------------------------------------------------------------


def test_another_workspaces_contacts_lists_and_segments_are_404(app, api):
    globex = other_workspace(app)
    contact = created(globex, "/api/v1/contacts", {"phone": "+5511961234567", "first_name": "Theirs"})
    their_list = created(globex, "/api/v1/lists", {"name": "Theirs"})
    segment = created(globex, "/api/v1/segments", {"name": "Theirs"})
    mine = created(api, "/api/v1/contacts", {"phone": "+5511961234568"})

    attempts = [
        ("GET", f"/api/v1/contacts/{contact['id']}", None),
        ("PATCH", f"/api/v1/contacts/{contact['id']}", {"first_name": "Mine"}),
        ("POST", f"/api/v1/contacts/{contact['id']}/opt-out", {}),
        ("DELETE", f"/api/v1/contacts/{contact['id']}", None),
        ("GET", f"/api/v1/lists/{their_list['id']}", None),
        ("PATCH", f"/api/v1/lists/{their_list['id']}", {"name": "Mine"}),
        ("GET", f"/api/v1/lists/{their_list['id']}/members", None),
        ("POST", f"/api/v1/lists/{their_list['id']}/members", {"contact_ids": [mine["id"]]}),
        ("DELETE", f"/api/v1/lists/{their_list['id']}/members", {"contact_ids": [mine["id"]]}),
        ("DELETE", f"/api/v1/lists/{their_list['id']}", None),
        ("GET", f"/api/v1/segments/{segment['id']}", None),
        ("PATCH", f"/api/v1/segments/{segment['id']}", {"name": "Mine"}),
        ("GET", f"/api/v1/segments/{segment['id']}/contacts", None),
        ("GET", f"/api/v1/segments/{segment['id']}/count", None),
        ("DELETE", f"/api/v1/segments/{segment['id']}", None),
        ("GET", f"/api/v1/contacts?list_id={their_list['id']}", None),
        ("GET", f"/api/v1/contacts?segment_id={segment['id']}", None),
        ("POST", "/api/v1/contacts/bulk", {"contacts": [], "list_id": their_list["id"]}),
    ]
    for method, path, payload in attempts:
        response = api.request(method, path, json=payload)
        assert response.status_code == 404 and response.mimetype == PROBLEM, (method, path)

    assert [c["first_name"] for c in api.get("/api/v1/contacts").get_json()["data"]] == [None]
    assert globex.get(f"/api/v1/contacts/{contact['id']}").get_json() == contact
    assert globex.get(f"/api/v1/lists/{their_list['id']}").get_json()["name"] == "Theirs"
    assert globex.get(f"/api/v1/segments/{segment['id']}").get_json()["name"] == "Theirs"


def test_a_read_token_reads_but_cannot_write(app, api):
    contact = created(api, "/api/v1/contacts", {"phone": "+5511961234567"})
    contact_list = created(api, "/api/v1/lists", {"name": "VIP"})
    reader = ApiClient(app, api_token_for(app, api.tenant_id, scopes=("read",), name="Reader"), api.tenant_id)
    campaigns = ApiClient(
        app, api_token_for(app, api.tenant_id, scopes=("campaigns:write",), name="Sender"), api.tenant_id
    )

    assert reader.get("/api/v1/contacts").status_code == 200
    assert reader.get(f"/api/v1/lists/{contact_list['id']}/members").status_code == 200
    writes = [
        ("POST", "/api/v1/contacts", {"phone": "+5511961234568"}),
        ("POST", "/api/v1/contacts/bulk", {"contacts": [{"phone": "+5511961234568"}]}),
        ("PATCH", f"/api/v1/contacts/{contact['id']}", {"first_name": "X"}),
        ("POST", f"/api/v1/contacts/{contact['id']}/opt-out", {}),
        ("DELETE", f"/api/v1/contacts/{contact['id']}", None),
        ("POST", "/api/v1/lists", {"name": "Other"}),
        ("POST", f"/api/v1/lists/{contact_list['id']}/members", {"contact_ids": [contact["id"]]}),
        ("DELETE", f"/api/v1/lists/{contact_list['id']}", None),
        ("POST", "/api/v1/segments", {"name": "All"}),
    ]
    for client in (reader, campaigns):
        for method, path, payload in writes:
            response = client.request(method, path, json=payload)
            assert response.status_code == 403, (method, path)
            assert "contacts:write" in response.get_json()["detail"]
    assert contact_count(app, api.tenant_id) == 1
    assert api.get(f"/api/v1/contacts/{contact['id']}").get_json() == contact

    writer = ApiClient(
        app, api_token_for(app, api.tenant_id, scopes=("contacts:write",), name="CRM sync"), api.tenant_id
    )
    assert writer.post("/api/v1/contacts", json={"phone": "+5511961234568"}).status_code == 201
