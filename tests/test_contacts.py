"""Browsing and managing contacts and lists."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants, tenant


@pytest.fixture
def acme(app, auth):
    """Acme's owner signed in; 120 contacts (a third in Berlin, a tenth opted out) and a VIP list."""
    auth.signup()
    with app.app_context(), all_tenants(db.session):
        tenant_id = db.session.scalar(select(Tenant.id))
    with app.app_context(), tenant(db.session, tenant_id):
        vip = ContactList(name="VIP")
        db.session.add(vip)
        for n in range(120):
            db.session.add(
                Contact(
                    phone=f"+55119612{n:05d}",
                    email=f"person{n}@acme.example",
                    first_name=f"Person{n:03d}",
                    last_name="Silva" if n % 2 else "Souza",
                    custom_fields={"city": "Berlin" if n % 3 == 0 else "Lisbon"},
                    opted_out=n % 10 == 0,
                )
            )
        db.session.flush()
        ids = db.session.scalars(select(Contact.id).order_by(Contact.id)).all()
        for contact_id in ids[:5]:
            db.session.add(ContactListMember(list_id=vip.id, contact_id=contact_id))
        db.session.commit()
        return {"tenant_id": tenant_id, "vip": vip.id, "ids": ids}


def _names(html: str) -> list[str]:
    return re.findall(r">(Person\d{3}) (?:Silva|Souza)<", html)


def test_contacts_page_through_newest_first_with_keyset_cursors(client, acme):
    first = client.get("/contacts").get_data(as_text=True)
    assert client.get("/contacts/count").get_data(as_text=True) == "120 contacts"
    assert _names(first)[:2] == ["Person119", "Person118"] and len(_names(first)) == 50
    older = re.search(r'href="(/contacts\?after=\d+[^"]*)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get(older).get_data(as_text=True)
    assert _names(second)[0] == "Person069" and len(_names(second)) == 50
    newer = (
        re.search(r'href="(/contacts\?before=\d+[^"]*)" rel="prev"', second).group(1).replace("&amp;", "&")
    )
    assert _names(client.get(newer).get_data(as_text=True)) == _names(first)
    third = client.get(
        re.search(r'href="(/contacts\?after=\d+[^"]*)" rel="next"', second).group(1).replace("&amp;", "&")
    )
    assert len(_names(third.get_data(as_text=True))) == 20 and 'rel="next"' not in third.get_data(
        as_text=True
    )


def test_search_and_filters(client, acme):
    assert _names(client.get("/contacts?q=person007").get_data(as_text=True)) == ["Person007"]
    assert "Person012" in client.get("/contacts?q=%2B5511961200012").get_data(as_text=True)
    assert client.get("/contacts/count?opted_out=yes").get_data(as_text=True) == "12 contacts"
    assert client.get("/contacts/count?field=city&value=Berlin").get_data(as_text=True) == "40 contacts"
    assert client.get("/contacts/count?q=silva").get_data(as_text=True) == "60 contacts"
    vip = client.get(f"/contacts?list={acme['vip']}").get_data(as_text=True)
    assert sorted(_names(vip)) == [f"Person{n:03d}" for n in range(5)]
    fragment = client.get("/contacts?q=person1", headers={"HX-Request": "true"})
    assert "<html" not in fragment.get_data(as_text=True) and "HX-Request" in fragment.headers["Vary"]
    assert client.get("/contacts?after=abc").status_code == 400
    assert "No contact matches these filters." in client.get("/contacts?q=nobody-at-all").get_data(
        as_text=True
    )


def test_view_opt_out_and_back_in(app, auth, client, acme):
    contact_id = acme["ids"][1]
    page = client.get(f"/contacts/{contact_id}").get_data(as_text=True)
    assert "Person001 Silva" in page and "Lisbon" in page and "receives campaigns" in page
    auth.post(f"/contacts/{contact_id}/opt-out")
    assert "set by a member" in client.get(f"/contacts/{contact_id}").get_data(as_text=True)
    auth.post(f"/contacts/{contact_id}/opt-in")
    with app.app_context(), all_tenants(db.session):
        contact = db.session.get(Contact, contact_id)
        assert contact.opted_out is False and contact.opted_out_at is None


def test_delete_erases_the_person_and_their_list_memberships(app, auth, client, acme):
    contact_id = acme["ids"][0]
    auth.post(f"/contacts/{contact_id}/delete")
    assert client.get(f"/contacts/{contact_id}").status_code == 404
    with app.app_context(), all_tenants(db.session):
        assert db.session.get(Contact, contact_id) is None
        assert db.session.scalar(select(func.count()).select_from(ContactListMember)) == 4


def test_lists_create_fill_and_delete(app, auth, client, acme):
    assert auth.post("/lists", {"name": "Newsletter"}).status_code == 302
    duplicate = auth.post("/lists", {"name": "Newsletter"})
    assert duplicate.status_code == 400 and "already a list called Newsletter" in duplicate.get_data(
        as_text=True
    )
    with app.app_context(), all_tenants(db.session):
        newsletter = db.session.scalar(select(ContactList.id).where(ContactList.name == "Newsletter"))
    contact_id = acme["ids"][7]
    auth.post(f"/contacts/{contact_id}/lists", {"list_id": str(newsletter)})
    auth.post(f"/contacts/{contact_id}/lists", {"list_id": str(newsletter)})  # twice is still once
    assert client.get(f"/contacts/count?list={newsletter}").get_data(as_text=True) == "1 contact"
    auth.post(f"/contacts/{contact_id}/lists/{newsletter}/remove")
    assert client.get(f"/contacts/count?list={newsletter}").get_data(as_text=True) == "0 contacts"
    auth.post(f"/lists/{newsletter}/delete")
    assert "List Newsletter deleted" in client.get("/lists").get_data(as_text=True)
    assert "Newsletter</a>" not in client.get("/lists").get_data(as_text=True)
    assert client.get(f"/contacts?list={newsletter}").status_code == 404


def test_add_and_edit_a_contact_with_validation(app, auth, client, acme):
    with app.app_context(), all_tenants(db.session):
        db.session.get(Tenant, acme["tenant_id"]).default_country = "BR"
        db.session.commit()
    form = {
        "phone": "(11) 96555-1234",
        "email": "Maria@Acme.EXAMPLE",
        "first_name": "Maria",
        "last_name": "",
        "company": "Acme",
        "custom_fields": "city: Recife\nplan: pro",
    }
    response = auth.post("/contacts/new", form)
    assert response.status_code == 302
    with app.app_context(), all_tenants(db.session):
        maria = db.session.scalar(select(Contact).where(Contact.first_name == "Maria"))
    assert (maria.phone, maria.email, maria.custom_fields) == (
        "+5511965551234",
        "maria@acme.example",
        {"city": "Recife", "plan": "pro"},
    )

    taken = auth.post(f"/contacts/{maria.id}/edit", {**form, "phone": "+5511961200003"})
    assert taken.status_code == 400 and "Another contact already has this phone number" in taken.get_data(
        as_text=True
    )
    bad = auth.post(f"/contacts/{maria.id}/edit", {**form, "phone": "12"})
    assert bad.status_code == 400 and "Phone:" in bad.get_data(as_text=True)
    bad_field = auth.post(f"/contacts/{maria.id}/edit", {**form, "custom_fields": "no colon here"})
    assert "Custom fields line 1" in bad_field.get_data(as_text=True)
    empty = auth.post("/contacts/new", {"phone": "", "email": "", "first_name": "Nobody"})
    assert "needs a phone number or an email" in empty.get_data(as_text=True)
    assert auth.post(f"/contacts/{maria.id}/edit", {**form, "last_name": "Souza"}).status_code == 302
    assert "Maria Souza" in client.get(f"/contacts/{maria.id}").get_data(as_text=True)


def test_export_is_spreadsheet_safe_filtered_and_only_this_tenants(app, auth, client, acme, other_client):
    from tests.conftest import Auth

    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    with app.app_context(), all_tenants(db.session):
        bravo = db.session.scalar(select(Tenant.id).where(Tenant.name == "Bravo"))
        db.session.add(
            Contact(tenant_id=bravo, phone="+4915100000001", first_name="Secret", custom_fields={})
        )
        contact = db.session.get(Contact, acme["ids"][3])
        contact.company = '=HYPERLINK("http://evil.example","click")'
        db.session.commit()
    response = client.get("/contacts/export.csv?field=city&value=Berlin")
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0] == "phone,email,first_name,last_name,company,opted_out,created_at,city"
    assert len(lines) == 1 + 40
    evil = next(line for line in lines if "HYPERLINK" in line)
    assert "'=HYPERLINK" in evil and "'+5511961200003" in evil
    assert "Secret" not in response.get_data(as_text=True)


def test_a_new_contact_beyond_the_plans_limit_is_refused_but_edits_go_on(app, auth, client, acme):
    with app.app_context(), all_tenants(db.session):
        db.session.get(Tenant, acme["tenant_id"]).max_contacts = 120  # the fixture made 120
        db.session.commit()
    refused = auth.post("/contacts/new", {"phone": "+5511961299999", "first_name": "One more"})
    assert refused.status_code == 400
    assert "Your plan allows 120 contacts and you have 120." in refused.get_data(as_text=True)
    edited = auth.post(
        f"/contacts/{acme['ids'][0]}/edit", {"phone": "+5511961200000", "first_name": "Still editable"}
    )
    assert edited.status_code == 302
    with app.app_context(), tenant(db.session, acme["tenant_id"]):
        assert db.session.scalar(select(func.count()).select_from(Contact)) == 120
