"""Writing templates: saved only when they compile, previewed live for a contact and a list."""

from __future__ import annotations

from html import unescape

from sqlalchemy import select

from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants, tenant
from tenants.templates import Template


def _seed(app) -> dict:
    with app.app_context(), all_tenants(db.session):
        tenant_id = db.session.scalar(select(Tenant.id))
    with app.app_context(), tenant(db.session, tenant_id):
        ana = Contact(phone="+5511961234567", first_name="Ana", custom_fields={"city": "Recife"})
        bob = Contact(phone="+5511961234568", custom_fields={})
        customers = ContactList(name="Customers")
        db.session.add_all([ana, bob, customers])
        db.session.flush()
        db.session.add_all([ContactListMember(list_id=customers.id, contact_id=c.id) for c in (ana, bob)])
        db.session.commit()
        return {"ana": ana.id, "bob": bob.id, "list": customers.id}


def _preview(auth, **fields):
    data = {"channel": "whatsapp", "body": "", **fields}
    return auth.post("/templates/preview", data, headers={"HX-Request": "true"}).get_data(as_text=True)


def test_save_a_template_and_edit_it(app, auth, client):
    auth.signup()
    response = auth.post("/templates/new?channel=whatsapp", {"name": "Welcome", "body": "Hi {{firstName}}!"})
    assert response.status_code == 302
    with app.app_context(), all_tenants(db.session):
        template = db.session.scalar(select(Template))
    assert (template.name, template.body) == ("Welcome", "Hi {{firstName}}!")
    assert "Hi {{firstName}}!" in client.get(f"/templates/{template.id}").get_data(as_text=True)
    assert "Welcome" in client.get("/templates").get_data(as_text=True)


def test_syntax_errors_are_shown_with_line_and_column_and_nothing_is_saved(app, auth):
    auth.signup()
    response = auth.post(
        "/templates/new?channel=whatsapp", {"name": "Broken", "body": "Hello\n{{ firstName }"}
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and "body, line 2, column" in html
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(Template)) is None


def test_sandbox_escapes_are_refused(auth):
    auth.signup()
    for attack in (
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
    ):
        html = _preview(auth, body=attack)
        assert 'data-testid="preview-problems"' in html, attack
        assert "&lt;class" not in html and "<class" not in html and "os" + ".system" not in html
    config = _preview(auth, body="{{ config }}|{{ request }}")
    assert "SECRET_KEY" not in config and "This contact has no config, request." in config


def test_preview_for_a_contact_and_missing_variables_on_a_list(app, auth):
    auth.signup()
    ids = _seed(app)
    body = "Hi {{firstName}} from {{city}}, {{ company|default('friend') }}"
    ana = _preview(auth, body=body, contact_id=str(ids["ana"]))
    assert "Hi Ana from Recife, friend" in ana and 'data-testid="missing"' not in ana
    bob = _preview(auth, body=body, contact_id=str(ids["bob"]))
    assert "This contact has no city, firstName." in bob
    audience = _preview(auth, body=body, list_id=str(ids["list"]))
    assert "Of 2 contacts on the list: 1 lack city; 1 lack firstName." in " ".join(audience.split())


def test_rendered_length_is_checked_against_the_channel(auth):
    auth.signup()
    html = _preview(auth, channel="messenger", body="{{ 'x' * 2100 }}")
    assert "2,100 characters of 2,000" in html


def test_a_method_is_refused_when_saving_and_previewing_never_printed(app, auth):
    """``{{ custom.items }}`` printed ``<built-in method items of dict object at 0x…>``."""
    auth.signup()
    ids = _seed(app)
    saved = auth.post("/templates/new?channel=whatsapp", {"name": "Leaky", "body": "Hi {{ custom.items }}"})
    html = unescape(saved.get_data(as_text=True))
    assert saved.status_code == 400
    assert "body, line 1: 'custom.items' is a method, not a value to print" in html
    assert 'for the custom field items, write custom["items"]' in html
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(Template)) is None

    preview = unescape(_preview(auth, body="Hi {{ custom.items }} {{ loop }}", contact_id=str(ids["ana"])))
    assert "'custom.items' is a method" in preview and " at 0x" not in preview and "built-in" not in preview
    for_a_list = unescape(
        _preview(auth, body="{% for x in [1] %}{{ loop.cycle }}{% endfor %}", contact_id=str(ids["ana"]))
    )
    assert "'loop.cycle' is a method or function, not a value to print" in for_a_list
    assert " at 0x" not in for_a_list
