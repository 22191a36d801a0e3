"""Invitations by email: invite, resend, revoke, and the link that signs up or signs in straight into
the inviting workspace."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select

from tenants.audit import AuditEntry
from tenants.db import db, utcnow
from tenants.models import Invitation, Membership, Tenant, User
from tenants.scoping import all_tenants
from tests.conftest import PASSWORD, Auth, built_app, csrf_token, free_port, invite_and_join

HTMX = {"HX-Request": "true"}


def _text(response) -> str:
    return response.get_data(as_text=True)


def _invitation_id(app, email: str) -> int:
    with app.app_context(), all_tenants(db.session):
        return db.session.scalar(select(Invitation.id).where(Invitation.email == email))


def _tenants(app) -> list[str]:
    with app.app_context(), all_tenants(db.session):
        return list(db.session.scalars(select(Tenant.name).order_by(Tenant.name)))


def _workspaces_of(app, email: str) -> list[str]:
    with app.app_context(), all_tenants(db.session):
        return list(
            db.session.scalars(
                select(Tenant.name)
                .join(Membership, Membership.tenant_id == Tenant.id)
                .join(User, User.id == Membership.user_id)
                .where(User.email == email)
                .order_by(Tenant.name)
            )
        )


def _actions(app) -> list[str]:
    with app.app_context(), all_tenants(db.session):
        return list(db.session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def test_the_answer_never_tells_whether_an_address_has_an_account(app, auth, other_client, mailbox):
    Auth(other_client).signup(email="bob@bravo.example", workspace="Bravo")
    auth.signup()

    known = auth.post("/members", {"email": "bob@bravo.example", "role": "member"}, headers=HTMX)
    unknown = auth.post("/members", {"email": "nobody@acme.example", "role": "member"}, headers=HTMX)

    assert known.status_code == unknown.status_code == 200
    answers = [(known, "bob@bravo.example"), (unknown, "nobody@acme.example")]
    assert "We sent an invitation to bob@bravo.example to join as member." in _text(known)
    assert "We sent an invitation to nobody@acme.example to join as member." in _text(unknown)
    notices = [re.findall(r'<p class="flash[^>]*>(.*?)</p>', _text(r)) for r, _ in answers]
    assert [
        [n.replace(email, "X") for n in said] for said, (_, email) in zip(notices, answers, strict=True)
    ] == [["We sent an invitation to X to join as member."]] * 2
    assert "Ask them to sign up first" not in _text(unknown)
    to_bob = mailbox.wait_for("bob@bravo.example", 2)  # after the verification email of his sign-up
    assert to_bob[-1]["subject"] == "owner@acme.example invites you to Acme on Crier"
    assert mailbox.wait_for("nobody@acme.example")
    assert _workspaces_of(app, "bob@bravo.example") == ["Bravo"]  # nobody joins without the link


def test_a_newcomer_signs_up_from_the_link_into_the_workspace_without_a_workspace_of_their_own(
    app, auth, other_client, mailbox
):
    auth.signup(workspace="Acme")
    auth.post("/members", {"email": "new@crier.example", "role": "admin"})
    link = mailbox.link("new@crier.example", "/invitations/")
    newcomer = other_client

    page = newcomer.get(link)
    assert page.status_code == 200
    assert "Join Acme" in _text(page) and "new@crier.example" in _text(page)
    assert "Workspace name" not in _text(page)  # no stray workspace to name
    signup = newcomer.post(
        f"{link}/signup", data={"csrf_token": csrf_token(_text(page)), "password": "short"}
    )
    assert signup.status_code == 400 and "Passwords need at least 10 characters." in _text(signup)
    joined = newcomer.post(
        f"{link}/signup", data={"csrf_token": csrf_token(_text(page)), "password": PASSWORD}
    )

    assert joined.status_code == 302 and joined.headers["Location"] == "/dashboard"
    dashboard = newcomer.get("/dashboard", follow_redirects=True)
    assert "You joined Acme as admin." in _text(dashboard)
    assert "Verify your email address" not in _text(dashboard)  # the link proved the address
    assert _workspaces_of(app, "new@crier.example") == ["Acme"]
    assert _tenants(app) == ["Acme"]
    assert _actions(app)[-2:] == ["member.invited", "member.added"]
    # single use: the link is dead now, for anyone
    again = app.test_client().get(link)
    assert again.status_code == 410 and "no longer works" in _text(again)


def test_signing_in_first_then_accepting_joins_and_switches(app, auth, other_client, mailbox):
    bob = Auth(other_client)
    bob.signup(email="bob@bravo.example", workspace="Bravo")
    bob.logout()
    auth.signup(workspace="Acme")
    auth.post("/members", {"email": "bob@bravo.example", "role": "member"})
    link = mailbox.link("bob@bravo.example", "/invitations/")
    path = link.removeprefix("http://localhost")

    signed_out = other_client.get(link)
    assert "Sign in first" in _text(signed_out)
    login = other_client.get(f"/login?next={path}")
    assert (
        other_client.post(
            f"/login?next={path}",
            data={"csrf_token": csrf_token(_text(login)), "email": "bob@bravo.example", "password": PASSWORD},
        ).headers["Location"]
        == path
    )
    page = other_client.get(link)
    assert "You are signed in as bob@bravo.example." in _text(page)
    joined = other_client.post(link, data={"csrf_token": csrf_token(_text(page))})

    assert joined.status_code == 302
    dashboard = other_client.get("/dashboard")
    assert "<summary>Acme</summary>" in _text(dashboard)
    assert _workspaces_of(app, "bob@bravo.example") == ["Acme", "Bravo"]


def test_accepting_when_already_a_member_says_so(app, auth, other_client, mailbox):
    bob = Auth(other_client)
    bob.signup(email="bob@bravo.example", workspace="Bravo")
    auth.signup(workspace="Acme")
    invite_and_join(auth, bob, mailbox, "bob@bravo.example")

    again = auth.post("/members", {"email": "bob@bravo.example", "role": "admin"})
    assert again.status_code == 400 and "bob@bravo.example is already a member of this workspace." in _text(
        again
    )

    # an invitation for someone else, opened by a member
    auth.post("/members", {"email": "carol@crier.example", "role": "member"})
    link = mailbox.link("carol@crier.example", "/invitations/")
    page = other_client.get(link)
    assert "You are already a member of Acme." in _text(page)
    answer = other_client.post(link, data={"csrf_token": csrf_token(_text(page))})
    assert answer.status_code == 409 and "You are already a member of Acme." in _text(answer)


def test_resend_kills_the_old_link_and_revoke_kills_the_new_one(app, auth, client, mailbox):
    auth.signup()
    auth.post("/members", {"email": "new@crier.example", "role": "member"})
    first = mailbox.link("new@crier.example", "/invitations/")
    invitation_id = _invitation_id(app, "new@crier.example")
    members = _text(client.get("/members"))
    assert "Invitations waiting for an answer" in members and "new@crier.example" in members

    resent = auth.post(f"/members/invitations/{invitation_id}/resend", headers=HTMX)
    assert resent.status_code == 200 and "We sent an invitation to new@crier.example" in _text(resent)
    second = mailbox.link("new@crier.example", "/invitations/", count=2)
    assert second != first
    assert app.test_client().get(first).status_code == 404  # replaced: its token is gone
    assert app.test_client().get(second).status_code == 200

    revoked = auth.post(f"/members/invitations/{invitation_id}/revoke")
    assert revoked.status_code == 200 and "The invitation of new@crier.example is revoked." in _text(revoked)
    dead = app.test_client().get(second)
    assert dead.status_code == 410 and "no longer works" in _text(dead)
    assert "Invitations waiting for an answer" not in _text(client.get("/members"))
    assert auth.post(f"/members/invitations/{invitation_id}/resend").status_code == 400
    assert _actions(app)[-2:] == ["member.invited", "invitation.revoked"]


def test_expired_and_unknown_links_get_one_clear_message(app, auth, mailbox):
    auth.signup()
    auth.post("/members", {"email": "late@crier.example", "role": "member"})
    link = mailbox.link("late@crier.example", "/invitations/")
    with app.app_context(), all_tenants(db.session):
        db.session.scalar(select(Invitation)).expires_at = utcnow() - timedelta(minutes=1)
        db.session.commit()

    visitor = app.test_client()
    expired = visitor.get(link)
    assert expired.status_code == 410 and "no longer works" in _text(expired)
    token = csrf_token(_text(visitor.get("/login")))
    signup = visitor.post(f"{link}/signup", data={"csrf_token": token, "password": PASSWORD})
    assert signup.status_code == 410
    unknown = visitor.get("/invitations/not-a-token")
    assert unknown.status_code == 404 and "no longer works" in _text(unknown)
    with app.app_context(), all_tenants(db.session):
        assert db.session.scalar(select(func.count()).select_from(User)) == 1  # nobody signed up


def test_an_invitation_for_an_owner_needs_an_owner_and_the_members_page_explains_roles(
    app, auth, client, mailbox
):
    auth.signup()
    assert auth.post("/members", {"email": "co@crier.example", "role": "owner"}).status_code == 200
    page = _text(client.get("/members"))
    assert "What each role may do" in page
    assert "Cannot create, start or stop campaigns" in page  # a member
    assert "the only one who can invite, make or remove owners" in page


def test_invitation_email_failure_is_said_and_can_be_resent():
    """No mail server answers: the invitation is kept, the page says the email could not be sent and
    offers Resend; nothing breaks."""
    with built_app(MAIL_URL=f"smtp://crier:x@127.0.0.1:{free_port()}") as app:
        auth = Auth(app.test_client())
        auth.signup()
        answer = auth.post("/members", {"email": "new@crier.example", "role": "member"}, headers=HTMX)
        assert answer.status_code == 200
        assert "the email could not be sent" in _text(answer) and "Resend" in _text(answer)
        assert _invitation_id(app, "new@crier.example") is not None
