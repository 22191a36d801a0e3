"""Building segments in the browser's forms, with the live count, and browsing their contacts."""

from __future__ import annotations

import re

import pytest
from flask_migrate import upgrade
from sqlalchemy import select

from tenants.contacts import Contact, Segment
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants, tenant
from tests.conftest import Auth, built_app

BERLIN_PROS = {
    "name": "Berlin pros",
    "match": "all",
    "field_0": "custom",
    "custom_0": "city",
    "op_0": "equals",
    "value_0": "berlin",
    "field_1": "custom",
    "custom_1": "plan",
    "op_1": "equals",
    "value_1": "pro",
}


def _seed(app) -> None:
    with app.app_context(), all_tenants(db.session):
        tenant_id = db.session.scalar(select(Tenant.id))
    with app.app_context(), tenant(db.session, tenant_id):
        for n in range(30):
            city = ("Berlin", "Lisbon", "Austin")[n % 3]
            plan = ("pro", "free")[n % 2]
            db.session.add(
                Contact(
                    phone=f"+4915100000{n:03d}",
                    first_name=f"P{n}",
                    custom_fields={"city": city, "plan": plan, "signup_day": f"2026-01-{1 + n:02d}"},
                )
            )
        db.session.commit()


def test_live_count_follows_the_conditions(app, auth):
    auth.signup()
    _seed(app)
    count = auth.post("/segments/count", BERLIN_PROS, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "<strong>5</strong> contacts match" in count and "<html" not in count
    anyone = auth.post("/segments/count", {**BERLIN_PROS, "match": "any"}, headers={"HX-Request": "true"})
    assert "<strong>20</strong> contacts match" in anyone.get_data(as_text=True)
    dated = {"field_0": "custom", "custom_0": "signup_day", "op_0": "before", "value_0": "2026-01-11"}
    assert "<strong>10</strong>" in auth.post(
        "/segments/count", dated, headers={"HX-Request": "true"}
    ).get_data(as_text=True)
    bad = {"field_0": "custom", "custom_0": "signup_day", "op_0": "before", "value_0": "next tuesday"}
    answer = auth.post("/segments/count", bad, headers={"HX-Request": "true"})
    assert answer.status_code == 200 and "Condition 1" in answer.get_data(as_text=True)


def test_save_a_segment_and_browse_its_contacts(app, auth, client):
    auth.signup()
    _seed(app)
    response = auth.post("/segments/new", BERLIN_PROS)
    assert response.status_code == 302
    with app.app_context(), all_tenants(db.session):
        segment = db.session.scalar(select(Segment))
    assert segment.conditions[0] == {"field": "custom.city", "op": "equals", "value": "berlin"}
    assert client.get(f"/contacts/count?segment={segment.id}").get_data(as_text=True) == "5 contacts"
    page = client.get(f"/contacts?segment={segment.id}").get_data(as_text=True)
    assert "Berlin pros" in page and ">P0<" in page and ">P1<" not in page
    refused = auth.post("/segments/new", {**BERLIN_PROS, "op_0": "explodes"})
    assert refused.status_code == 400 and "Condition 1" in refused.get_data(as_text=True)
    assert "Berlin pros" in client.get("/segments").get_data(as_text=True)
    auth.post(f"/segments/{segment.id}/delete")
    assert client.get(f"/contacts?segment={segment.id}").status_code == 404


def test_the_live_count_answers_a_plain_post_with_a_clear_400(app, auth):
    auth.signup()
    answer = auth.post("/segments/count", BERLIN_PROS)  # no HX-Request: not the builder's own request
    assert answer.status_code == 400
    assert "only answers the live count of the segment builder" in answer.get_data(as_text=True)


QUOTED = 'a"b'  # a custom field name with a double quote (a CSV header can be anything)


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_custom_fields_with_any_name_are_counted_and_filtered(tmp_path, database):
    """On SQLite such a name went into a JSON path: a 500 when another field is called ``a``, and
    ``a".x`` read the field ``a`` instead."""
    config = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'crier.db'}"} if database == "sqlite" else {}
    with built_app(**config) as app:
        if database == "sqlite":
            with app.app_context():
                upgrade()
        auth = Auth(app.test_client())
        auth.signup()
        with app.app_context(), all_tenants(db.session):
            tenant_id = db.session.scalar(select(Tenant.id))
        with app.app_context(), tenant(db.session, tenant_id):
            db.session.add_all(
                [
                    Contact(phone="+4915100000001", first_name="Quoted", custom_fields={QUOTED: "x"}),
                    Contact(phone="+4915100000002", first_name="Nested", custom_fields={"a": {"x": "x"}}),
                ]
            )
            db.session.commit()

        def count(name: str, op: str = "equals") -> str:
            form = {"field_0": "custom", "custom_0": name, "op_0": op, "value_0": "x"}
            answer = auth.post("/segments/count", form, headers={"HX-Request": "true"})
            assert answer.status_code == 200, answer.get_data(as_text=True)
            return " ".join(re.sub(r"<[^>]+>", "", answer.get_data(as_text=True)).split())

        assert count(QUOTED) == "1 contact matches"
        assert count(QUOTED, "not_equals") == "1 contact matches"
        assert count('a".x') == "0 contacts match"
        assert count('a"]') == "0 contacts match"
        saved = auth.post(
            "/segments/new",
            {"name": "Quoted", "field_0": "custom", "custom_0": QUOTED, "op_0": "equals", "value_0": "x"},
        )
        assert saved.status_code == 302
        with app.app_context(), all_tenants(db.session):
            segment_id = db.session.scalar(select(Segment.id))
        listed = auth.client.get(f"/contacts?segment={segment_id}").get_data(as_text=True)
        assert ">Quoted<" in listed and ">Nested<" not in listed
        filtered = auth.client.get("/contacts", query_string={"field": QUOTED, "value": "x"})
        assert filtered.status_code == 200
        assert ">Quoted<" in filtered.get_data(as_text=True) and ">Nested<" not in filtered.get_data(
            as_text=True
        )
