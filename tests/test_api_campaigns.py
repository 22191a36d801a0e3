"""Templates, campaigns and usage over ``/api/v1``: the editor's rules, the campaign page's actions and
report, and a campaign made, started and followed to completion by a real worker through the sandbox,
over the API alone."""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import timedelta

import httpx
import psycopg
from sqlalchemy import select

from tenants import campaigns as campaign_rules
from tenants.campaigns import Campaign, CampaignState, Delivery, DeliveryState
from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.scoping import all_tenants, tenant
from tenants.templates import Template
from tests.conftest import ApiClient, Auth, built_app
from tests.factories import (
    api_token_for,
    make_campaign,
    make_contact,
    make_contact_list,
    make_page,
    make_template,
    sandbox_whatsapp_page,
)

PROBLEM = "application/problem+json"
CONFLICT = "/api/v1/problems/conflict"
INVALID = "/api/v1/problems/invalid-request"


def _people(app, tenant_id: int, phones: list[str], opted_out: tuple[str, ...] = ()) -> int:
    """Contacts with these phones in a new list "Customers" (as an import leaves them); the list's id."""
    with app.app_context(), tenant(db.session, tenant_id):
        customers = ContactList(name="Customers")
        db.session.add(customers)
        db.session.flush()
        for number, phone in enumerate(phones, start=1):
            contact = Contact(
                first_name=f"Person {number}",
                phone=phone,
                custom_fields={"city": "Rio"},
                opted_out=phone in opted_out,
            )
            db.session.add(contact)
            db.session.flush()
            db.session.add(ContactListMember(list_id=customers.id, contact_id=contact.id))
        db.session.commit()
        return customers.id


def _phones(count: int) -> list[str]:
    return [f"+55119650{n:05d}" for n in range(1, count + 1)]


def _template(api: ApiClient, **fields) -> dict:
    body = {"name": "Welcome", "channel": "whatsapp", "body": "Hi {{firstName}} from {{city}}", **fields}
    response = api.post("/api/v1/templates", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _campaign(api: ApiClient, page_id: int, list_id: int, **fields) -> dict:
    body = {"name": "Spring sale", "page_id": page_id, "audience": {"list_ids": [list_id]}, **fields}
    if "template_id" not in body and "body" not in body:
        body["body"] = "Hi {{firstName}}"
    response = api.post("/api/v1/campaigns", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _problem(response, status: int, type_: str = INVALID) -> dict:
    assert response.status_code == status, response.get_json()
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["type"] == type_, body
    return body


def _acme(app, api: ApiClient, people: int = 3) -> tuple[int, int]:
    """Acme's sandbox WhatsApp page and a list of ``people`` contacts: (page id, list id)."""
    _tenant_id, page_id = sandbox_whatsapp_page(app, "Acme")
    return page_id, _people(app, api.tenant_id, _phones(people))


# --------------------------------------------------------------------------- templates


def test_a_template_is_saved_only_as_the_editor_would_save_it(api):
    broken = api.post(
        "/api/v1/templates", json={"name": "Welcome", "channel": "whatsapp", "body": "Hi {{ name"}
    )
    problem = _problem(broken, 422)
    assert [error["field"] for error in problem["errors"]] == ["body"]

    created = api.post(
        "/api/v1/templates",
        json={"name": "Welcome", "channel": "whatsapp", "body": "Hi {{firstName}} from {{city}}"},
    )
    assert created.status_code == 201
    template = created.get_json()
    assert created.headers["Location"] == f"/api/v1/templates/{template['id']}"
    assert (template["variables"], template["media_url"], template["media_type"]) == (
        ["city", "firstName"],
        None,
        None,
    )

    taken = _problem(
        api.post("/api/v1/templates", json={"name": "Welcome", "channel": "smtp", "subject": "Hi"}), 422
    )
    assert "already a template called Welcome" in taken["detail"]
    messenger = api.post(
        "/api/v1/templates",
        json={
            "name": "Promo",
            "channel": "messenger",
            "body": "Look",
            "media_url": "https://cdn.example.com/a.jpg",
        },
    )
    assert "Messenger cannot send text with an attachment" in _problem(messenger, 422)["errors"][0]["message"]
    not_https = api.post(
        "/api/v1/templates",
        json={
            "name": "Promo",
            "channel": "whatsapp",
            "body": "Look",
            "media_url": "http://cdn.example.com/a.jpg",
        },
    )
    assert _problem(not_https, 422)["errors"][0]["field"] == "media"

    url = f"/api/v1/templates/{template['id']}"
    with_media = api.patch(
        url, json={"media_url": "https://cdn.example.com/menu.pdf", "media_type": "document"}
    )
    assert with_media.status_code == 200, with_media.get_json()
    changed = with_media.get_json()
    assert (changed["media_url"], changed["media_type"]) == ("https://cdn.example.com/menu.pdf", "document")
    assert changed["body"] == "Hi {{firstName}} from {{city}}"  # fields left out stay as they were
    assert api.patch(url, json={"media_type": "hologram"}).status_code == 422
    assert api.get(url).get_json()["media_type"] == "document"

    assert [t["name"] for t in api.get("/api/v1/templates").get_json()["data"]] == ["Welcome"]
    assert api.get("/api/v1/templates?channel=smtp").get_json()["data"] == []
    assert api.delete(url).status_code == 204
    _problem(api.get(url), 404, "/api/v1/problems/not-found")


def test_a_preview_renders_for_a_contact_and_names_the_missing_variables(app, api):
    with app.app_context(), tenant(db.session, api.tenant_id):
        ana = Contact(first_name="Ana", phone="+5511961234567")  # no city
        db.session.add(ana)
        db.session.commit()
        ana_id = ana.id
    template = _template(api)
    url = f"/api/v1/templates/{template['id']}/preview"

    for_ana = api.post(url, json={"contact_id": ana_id}).get_json()
    assert (for_ana["ok"], for_ana["missing"]) == (False, ["city"])

    inline = api.post(url, json={"variables": {"firstName": "Bia", "city": "Recife"}}).get_json()
    assert (inline["ok"], inline["text"], inline["missing"]) == (True, "Hi Bia from Recife", [])

    _problem(api.post(url, json={"contact_id": ana_id + 1000}), 404, "/api/v1/problems/not-found")
    _problem(api.post(url, json={"contact_id": ana_id, "variables": {"city": "Rio"}}), 422)


# --------------------------------------------------------------------------- campaigns


def test_campaigns_are_created_listed_changed_and_deleted_by_the_editors_rules(app, api):
    page_id, list_id = _acme(app, api)
    template = _template(api)

    created = api.post(
        "/api/v1/campaigns",
        json={
            "name": "Spring sale",
            "page_id": page_id,
            "template_id": template["id"],
            "audience": {"list_ids": [list_id]},
        },
    )
    assert created.status_code == 201, created.get_json()
    campaign = created.get_json()
    assert created.headers["Location"] == f"/api/v1/campaigns/{campaign['id']}"
    assert (campaign["state"], campaign["schedule"], campaign["notice"]) == ("draft", "manual", None)
    assert set(campaign["actions"]) == {"edit", "start", "delete", "duplicate"}

    email = _template(api, name="Newsletter", channel="smtp", subject="News", body="Hi")
    wrong_channel = api.post(
        "/api/v1/campaigns",
        json={"name": "Mail", "page_id": page_id, "template_id": email["id"], "audience": {"all": True}},
    )
    assert "is for smtp" in _problem(wrong_channel, 422)["detail"]
    nobody = api.post(
        "/api/v1/campaigns", json={"name": "Nobody", "page_id": page_id, "body": "Hi", "audience": {}}
    )
    assert "Choose who receives it" in _problem(nobody, 422)["detail"]
    past = api.post(
        "/api/v1/campaigns",
        json={
            "name": "Late",
            "page_id": page_id,
            "body": "Hi",
            "audience": {"all": True},
            "schedule": "at",
            "scheduled_at": (utcnow() - timedelta(hours=1)).isoformat(),
        },
    )
    assert "That time has passed" in _problem(past, 422)["detail"]

    url = f"/api/v1/campaigns/{campaign['id']}"
    renamed = api.patch(url, json={"name": "Summer sale"})
    assert renamed.status_code == 200 and renamed.get_json()["name"] == "Summer sale"
    assert renamed.get_json()["template_id"] == template["id"]  # fields left out stay as they were

    at = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    scheduled = api.patch(url, json={"schedule": "at", "scheduled_at": at.isoformat()}).get_json()
    assert (scheduled["state"], scheduled["scheduled_at"][:19]) == ("scheduled", at.isoformat()[:19])
    assert api.patch(url, json={"schedule": "manual"}).get_json()["state"] == "draft"

    assert [c["name"] for c in api.get("/api/v1/campaigns?state=draft").get_json()["data"]] == ["Summer sale"]
    assert api.get("/api/v1/campaigns?state=running").get_json()["data"] == []
    _problem(api.get("/api/v1/campaigns?state=sending"), 422)
    assert api.delete(url).status_code == 204
    _problem(api.get(url), 404, "/api/v1/problems/not-found")


def test_every_action_in_a_state_that_does_not_allow_it_is_a_409(app, api):
    page_id, list_id = _acme(app, api, people=4)
    campaign = _campaign(api, page_id, list_id)
    url = f"/api/v1/campaigns/{campaign['id']}"

    def refused(action: str) -> str:
        return _problem(api.post(f"{url}/{action}"), 409, CONFLICT)["detail"]

    for action in ("pause", "resume", "cancel", "resend"):
        assert f"You cannot {action} a draft campaign" in refused(action)

    started = api.post(f"{url}/start")  # no worker consumes this app's queue: it stays running
    assert started.status_code == 200, started.get_json()
    assert started.get_json()["campaign"]["state"] == "running"
    assert started.get_json()["campaign"]["total"] == 4
    for action in ("start", "resume", "resend"):
        assert "running campaign" in refused(action)
    assert "cannot be changed" in _problem(api.patch(url, json={"name": "Too late"}), 409, CONFLICT)["detail"]
    assert "cannot delete a running campaign" in _problem(api.delete(url), 409, CONFLICT)["detail"]

    assert api.post(f"{url}/pause").get_json()["campaign"]["state"] == "paused"
    assert "paused campaign" in refused("pause")
    assert api.post(f"{url}/resume").get_json()["campaign"]["state"] == "running"

    cancelled = api.post(f"{url}/cancel").get_json()
    assert (cancelled["campaign"]["state"], cancelled["not_sent"]) == ("cancelled", 4)
    for action in ("start", "pause", "resume", "cancel"):
        assert "cancelled campaign" in refused(action)
    assert "No failed or unknown recipients" in refused("resend")

    copy = api.post(f"{url}/duplicate")
    assert copy.status_code == 201
    assert (copy.get_json()["name"], copy.get_json()["state"]) == ("Spring sale (copy)", "draft")
    assert api.delete(url).status_code == 204


def test_deliveries_come_in_keyset_pages_with_the_providers_words(app, api):
    page_id, list_id = _acme(app, api, people=7)
    campaign = _campaign(api, page_id, list_id)
    url = f"/api/v1/campaigns/{campaign['id']}"
    assert api.post(f"{url}/start").status_code == 200
    with app.app_context(), tenant(db.session, api.tenant_id):
        first = db.session.scalar(select(Delivery).order_by(Delivery.id).limit(1))
        first.state, first.attempts = DeliveryState.FAILED, 1
        first.error_code, first.error_text = "131026", "Message undeliverable"
        first.provider_message_id = "wamid.HBgM"
        db.session.commit()

    seen, after = [], None
    for _ in range(3):
        page = api.get(f"{url}/deliveries?limit=3" + (f"&after={after}" if after else "")).get_json()
        seen += page["data"]
        after = page["next_after"]
    assert [len(seen), after] == [7, None]
    assert [d["id"] for d in seen] == sorted({d["id"] for d in seen})
    assert sorted(d["address"] for d in seen) == _phones(7)

    failed = api.get(f"{url}/deliveries?state=failed").get_json()["data"]
    assert [(d["error_code"], d["error_text"], d["provider_message_id"], d["attempts"]) for d in failed] == [
        ("131026", "Message undeliverable", "wamid.HBgM", 1)
    ]
    assert len(api.get(f"{url}/deliveries?state=pending").get_json()["data"]) == 6
    assert api.get(f"{url}/deliveries?error_code=131026").get_json()["data"] == failed
    _problem(api.get(f"{url}/deliveries?state=lost"), 422)
    _problem(api.get(f"{url}/deliveries?limit=0"), 422)

    stats = api.get(f"{url}/stats").get_json()
    assert (stats["total"], stats["failed"], stats["by_state"]["pending"]) == (7, 1, 6)
    assert [(e["code"], e["count"]) for e in stats["errors"]] == [("131026", 1)]
    assert stats["failure_rate"] == 1.0  # of those done: the only one done failed


def test_an_edit_over_the_api_does_not_overwrite_a_campaign_started_meanwhile(app, api, monkeypatch):
    page_id, list_id = _acme(app, api)
    campaign = _campaign(api, page_id, list_id)
    apply_for_real = campaign_rules.apply_campaign_form

    def apply_while_the_sweeper_starts_it(row, fields, tenant_row):
        apply_for_real(row, fields, tenant_row)
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as other_process:
            other_process.execute("UPDATE campaigns SET state = 'running' WHERE id = %s", (campaign["id"],))
        return row

    monkeypatch.setattr(campaign_rules, "apply_campaign_form", apply_while_the_sweeper_starts_it)
    refused = api.patch(f"/api/v1/campaigns/{campaign['id']}", json={"name": "Too late"})
    assert "started meanwhile" in _problem(refused, 409, CONFLICT)["detail"]
    monkeypatch.undo()
    assert api.get(f"/api/v1/campaigns/{campaign['id']}").get_json()["name"] == "Spring sale"


# --------------------------------------------------------------------------- who may do what


def test_another_workspaces_templates_and_campaigns_are_404(app, api):
    with app.app_context():
        with all_tenants(db.session):
            globex = Tenant(name="Globex", slug="globex")
            db.session.add(globex)
            db.session.commit()
        made: dict = {}
        with tenant(db.session, globex.id):
            for factory in (make_page, make_contact, make_template, make_contact_list, make_campaign):
                row = factory(globex, made)
                db.session.flush()
                made[type(row)] = row
            db.session.commit()
            template_id, campaign_id, contact_id = made[Template].id, made[Campaign].id, made[Contact].id
    own = _template(api)

    for method, url in [
        ("GET", f"/api/v1/templates/{template_id}"),
        ("PATCH", f"/api/v1/templates/{template_id}"),
        ("DELETE", f"/api/v1/templates/{template_id}"),
        ("POST", f"/api/v1/templates/{template_id}/preview"),
        ("GET", f"/api/v1/campaigns/{campaign_id}"),
        ("PATCH", f"/api/v1/campaigns/{campaign_id}"),
        ("DELETE", f"/api/v1/campaigns/{campaign_id}"),
        ("GET", f"/api/v1/campaigns/{campaign_id}/status"),
        ("GET", f"/api/v1/campaigns/{campaign_id}/stats"),
        ("GET", f"/api/v1/campaigns/{campaign_id}/deliveries"),
        *[("POST", f"/api/v1/campaigns/{campaign_id}/{a}") for a in ("start", "pause", "resume", "cancel")],
        *[("POST", f"/api/v1/campaigns/{campaign_id}/{a}") for a in ("resend", "duplicate")],
    ]:
        response = api.request(method, url, json={} if method in ("POST", "PATCH") else None)
        _problem(response, 404, "/api/v1/problems/not-found")

    theirs = api.post(f"/api/v1/templates/{own['id']}/preview", json={"contact_id": contact_id})
    _problem(theirs, 404, "/api/v1/problems/not-found")
    assert [t["id"] for t in api.get("/api/v1/templates").get_json()["data"]] == [own["id"]]
    assert api.get("/api/v1/campaigns").get_json()["data"] == []
    with app.app_context(), all_tenants(db.session):
        assert db.session.get(Campaign, campaign_id).state is CampaignState.DRAFT


def test_a_read_token_reads_but_cannot_write_or_start(app, api):
    page_id, list_id = _acme(app, api)
    campaign = _campaign(api, page_id, list_id)
    url = f"/api/v1/campaigns/{campaign['id']}"
    reader = ApiClient(app, api_token_for(app, api.tenant_id, ("read",), name="Dashboard"), api.tenant_id)
    importer = ApiClient(
        app, api_token_for(app, api.tenant_id, ("contacts:write",), name="Shop"), api.tenant_id
    )

    for client in (reader, importer):
        assert (
            "campaigns:write"
            in _problem(client.post(f"{url}/start"), 403, "/api/v1/problems/forbidden")["detail"]
        )
        _problem(
            client.post("/api/v1/templates", json={"name": "X", "channel": "whatsapp"}),
            403,
            "/api/v1/problems/forbidden",
        )
        assert client.get(f"{url}/status").status_code == 200
    assert api.get(url).get_json()["state"] == "draft"


def test_a_retried_create_with_the_same_idempotency_key_makes_one_campaign(app, api):
    page_id, list_id = _acme(app, api)
    body = {"name": "Spring sale", "page_id": page_id, "body": "Hi", "audience": {"list_ids": [list_id]}}
    key = {"Idempotency-Key": "order-4711"}

    first = api.post("/api/v1/campaigns", json=body, headers=key)
    again = api.post("/api/v1/campaigns", json=body, headers=key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert len(api.get("/api/v1/campaigns").get_json()["data"]) == 1
    other = api.post("/api/v1/campaigns", json={**body, "name": "Other sale"}, headers=key)
    _problem(other, 422, "/api/v1/problems/idempotency-key-reused")
    assert len(api.get("/api/v1/campaigns").get_json()["data"]) == 1


# --------------------------------------------------------------------------- usage


def test_usage_days_answer_the_span_asked_newest_first(app, api):
    sandbox_whatsapp_page(app, "Acme")
    today = api.get("/api/v1/usage/today").get_json()
    assert (today["used"], today["left"]) == (0, today["quota"]) and today["quota"] > 0
    assert [p["name"] for p in today["pages"]] == ["Support line"]

    days = api.get("/api/v1/usage/days").get_json()
    assert len(days["days"]) == 30 and days["to"] == today["day"] == days["days"][0]["day"]
    assert days["days"][0]["quota"] == today["quota"] and days["days"][1]["quota"] is None
    span = api.get("/api/v1/usage/days?from=2026-03-01&to=2026-03-03").get_json()
    assert [d["day"] for d in span["days"]] == ["2026-03-03", "2026-03-02", "2026-03-01"]
    _problem(api.get("/api/v1/usage/days?from=2026-03-04&to=2026-03-03"), 422)
    _problem(api.get("/api/v1/usage/days?from=2024-01-01&to=2026-03-03"), 422)
    _problem(api.get("/api/v1/usage/days?to=0001-01-01"), 422)


# --------------------------------------------------------------------------- end to end


def _ledger(sandbox) -> list[dict]:
    return httpx.get(f"{sandbox.url}/_sandbox/ledger", params={"limit": 10_000}, timeout=5).json()["entries"]


def test_a_campaign_made_started_and_followed_to_completion_over_the_api_alone(sandbox, worker_process):
    """The issue's test: a template and a campaign created, started and followed to the end by a real
    worker through the sandbox, with the counts of /status and /stats those of the sandbox's ledger."""
    with built_app(REDIS_PREFIX=os.environ["REDIS_PREFIX"]) as app:  # the session worker's queues
        Auth(app.test_client()).signup()
        tenant_id, page_id = sandbox_whatsapp_page(app, "Acme")
        api = ApiClient(app, api_token_for(app, tenant_id), tenant_id)  # pages come from the settings
        refused = ["+5511965010000", "+5511965020000"]  # the sandbox refuses numbers ending in 0000
        phones = [*_phones(10), *refused, "+5511965099999"]
        customers = api.post("/api/v1/lists", json={"name": "Customers"}).get_json()
        people = [
            {"phone": phone, "first_name": f"Person {n}", "custom_fields": {"city": "Rio"}}
            for n, phone in enumerate(phones, start=1)
        ]
        upserted = api.post("/api/v1/contacts/bulk", json={"contacts": people, "list_id": customers["id"]})
        assert upserted.get_json()["created"] == 13, upserted.get_json()
        last = upserted.get_json()["results"][-1]["id"]
        assert api.post(f"/api/v1/contacts/{last}/opt-out", json={}).get_json()["opted_out"] is True

        template = _template(api, name="Launch", body="Hi {{firstName}}, we open in {{city}}!")
        created = api.post(
            "/api/v1/campaigns",
            json={
                "name": "Launch day",
                "page_id": page_id,
                "template_id": template["id"],
                "audience": {"list_ids": [customers["id"]]},
                "schedule": "now",
            },
        )
        assert created.status_code == 201, created.get_json()
        campaign = created.get_json()
        assert (campaign["state"], campaign["total"], campaign["notice"]) == ("running", 12, None)
        url = f"/api/v1/campaigns/{campaign['id']}"

        deadline = time.monotonic() + 30
        status = api.get(f"{url}/status").get_json()
        while status["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.25)
            status = api.get(f"{url}/status").get_json()
        stats = api.get(f"{url}/stats").get_json()
        deliveries = api.get(f"{url}/deliveries?limit=500").get_json()["data"]
        today = api.get("/api/v1/usage/today").get_json()

    ledger = _ledger(sandbox)
    assert status["state"] == "completed", status
    assert max(Counter(entry["reference"] for entry in ledger).values()) == 1, "somebody got two messages"
    assert (status["total"], status["sent"], status["failed"], len(ledger)) == (12, 10, 2, 10)
    assert (status["processed"], status["percent"], status["pending"]) == (12, 100.0, 0)
    assert status["excluded"]["opted_out"] == 1
    assert (stats["sent"], stats["failed"], stats["failure_rate"]) == (len(ledger), 2, round(2 / 12, 4))
    assert [error["count"] for error in stats["errors"]] == [2]
    assert sorted(entry["recipient"].lstrip("+") for entry in ledger) == [p.lstrip("+") for p in _phones(10)]
    assert {entry["body"] for entry in ledger} == {f"Hi Person {n}, we open in Rio!" for n in range(1, 11)}

    sent = {d["id"]: d for d in deliveries if d["state"] == "sent"}
    assert {int(entry["reference"]): entry["message_id"] for entry in ledger} == {
        delivery_id: d["provider_message_id"] for delivery_id, d in sent.items()
    }
    assert sorted(d["address"] for d in deliveries if d["state"] == "failed") == refused
    assert [p["sent"] for p in today["pages"]] == [10]
