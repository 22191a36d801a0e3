"""Building segments in the browser's forms, with the live count, and browsing their contacts."""

from __future__ import annotations

from sqlalchemy import select

from tenants.contacts import Contact, Segment
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants, tenant

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
