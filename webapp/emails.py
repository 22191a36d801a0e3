"""The emails Crier sends about accounts, written from templates in ``templates/mail``; their links are
absolute, on ``PUBLIC_URL`` when set, else on the host the request came to."""

from __future__ import annotations

from flask import current_app, render_template, url_for

from tenants import mail
from tenants.accounts import TEST_AUDIENCE, VERIFICATION_LINK_MAX_AGE, verification_token
from tenants.invitations import INVITATION_LIFETIME
from tenants.models import Invitation, Tenant, User


def external_url(endpoint: str, **values: object) -> str:
    """An absolute link for an email: on ``PUBLIC_URL`` when set, else on the request's host."""
    public = current_app.config.get("PUBLIC_URL")
    if public:
        return public.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def send_verification(user: User) -> bool:
    """Email the user a link that verifies their address; False when it could not be sent."""
    link = external_url("account.verify", token=verification_token(user))
    days = VERIFICATION_LINK_MAX_AGE.days
    text = render_template("mail/verify.txt", user=user, link=link, days=days, test_audience=TEST_AUDIENCE)
    return mail.send(user.email, "Verify your email address for Crier", text)


def send_invitation(invitation: Invitation, token: str, workspace: Tenant, inviter: User) -> bool:
    """Email the invitation's link; False when it could not be sent (it can be resent)."""
    link = external_url("workspaces.invitation", token=token)
    text = render_template(
        "mail/invitation.txt",
        invitation=invitation,
        workspace=workspace,
        inviter=inviter,
        link=link,
        days=INVITATION_LIFETIME.days,
    )
    return mail.send(invitation.email, f"{inviter.email} invites you to {workspace.name} on Crier", text)
