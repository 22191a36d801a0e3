"""A workspace's own audit log at /audit, and the log's refusal to be rewritten."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import delete, select, update

from tenants import audit
from tenants.accounts import hash_password
from tenants.db import db
from tenants.models import Membership, Role, User
from tenants.scoping import all_tenants, tenant
from tests.conftest import Auth, invite_and_join
from tests.factories import tenant_named


def _membership_id(app, email: str, workspace: str) -> int:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(
            select(Membership.id)
            .join(User)
            .where(User.email == email, Membership.tenant_id == tenant_named(workspace).id)
        )


def test_an_owner_sees_their_workspaces_changes_in_its_zone_and_nothing_of_another(
    app, auth, client, other_client, mailbox
):
    bob = Auth(other_client)
    bob.signup(email="bob@bravo.example", workspace="Bravo")
    auth.signup(workspace="Acme", timezone="America/Sao_Paulo")
    invite_and_join(auth, bob, mailbox, "bob@bravo.example")  # joining switches bob to Acme
    with app.app_context(), all_tenants(db.session):
        bob.post(f"/workspaces/{tenant_named('Bravo').id}/switch")
    auth.post(f"/members/{_membership_id(app, 'bob@bravo.example', 'Acme')}", {"role": "admin"})
    auth.post(
        "/workspace/settings", {"name": "Acme Corp", "timezone": "America/Sao_Paulo", "default_country": ""}
    )
    bob.post("/workspace/settings", {"name": "Bravo Secret", "timezone": "UTC", "default_country": ""})

    answer = client.get("/audit")

    page = answer.get_data(as_text=True)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    table = page.split('data-testid="audit-log"')[1]
    assert table.count('data-testid="audit-entry"') == 4
    assert "invited someone" in table
    assert "changed a member&#39;s role" in table and "role: member → admin" in table
    assert "changed the workspace settings" in table and "name: Acme → Acme Corp" in table
    assert "added a member" in table and "owner@acme.example" in table
    assert table.index("changed the workspace settings") < table.index("changed a member")  # newest first
    assert "Bravo Secret" not in page
    assert re.search(r"\d{4}-\d\d-\d\d<br><small>\d\d:\d\d:\d\d America/Sao_Paulo</small>", table)


def test_the_log_pages_back_by_entry_and_filters_by_action(app, auth, client):
    auth.signup()
    with app.app_context(), all_tenants(db.session):
        acme = tenant_named("Acme").id
        for n in range(52):
            audit.record("member.added", tenant_id=acme, target=f"member {n}@acme.example")
        audit.record("workspace.settings_changed", tenant_id=acme, before={"name": "A"}, after={"name": "B"})
        db.session.commit()

    newest = client.get("/audit").get_data(as_text=True)
    assert newest.count('data-testid="audit-entry"') == 50
    older_url = re.search(r'href="([^"]+)" data-testid="audit-older"', newest).group(1)
    older = client.get(older_url).get_data(as_text=True)
    assert older.count('data-testid="audit-entry"') == 3 and "member 0@acme.example" in older

    only_settings = client.get("/audit?action=workspace.settings_changed").get_data(as_text=True)
    assert only_settings.count('data-testid="audit-entry"') == 1 and "name: A → B" in only_settings
    assert client.get("/audit?before=soon").status_code == 400
    assert client.get("/audit?action=nonsense").status_code == 400


def test_a_member_may_not_read_the_log(app, auth, client):
    auth.signup()
    with app.app_context(), all_tenants(db.session):
        acme = tenant_named("Acme").id
    with app.app_context(), tenant(db.session, acme):
        user = User(email="member@acme.example", password_hash=hash_password("a member password"))
        db.session.add(Membership(user=user, role=Role.MEMBER))
        db.session.commit()
    member = app.test_client()
    Auth(member).login("member@acme.example", "a member password")

    assert member.get("/audit").status_code == 403
    assert client.get("/audit").status_code == 200


@pytest.mark.parametrize(
    "statement",
    [
        update(audit.AuditEntry).values(actor="someone else"),
        delete(audit.AuditEntry),
    ],
    ids=["update", "delete"],
)
def test_the_database_refuses_to_change_or_remove_an_entry(app, statement):
    with app.app_context(), all_tenants(db.session), audit.acting_as(audit.Actor(None, "cli")):
        audit.record("tenant.suspended", tenant_id=None, target="workspace X", after={"reason": "spam"})
        db.session.commit()

        with pytest.raises(Exception, match="append-only"):
            db.session.execute(statement.execution_options(synchronize_session=False))
        db.session.rollback()

        (entry,) = db.session.scalars(select(audit.AuditEntry)).all()
        assert entry.actor == "cli" and entry.after == {"reason": "spam"}
