"""Workspaces (tenants) a user belongs to: switching, creating, and managing members."""

from __future__ import annotations

from flask import Blueprint, abort, flash, g, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from tenants import invitations
from tenants.accounts import (
    AccountError,
    change_role,
    create_workspace,
    remove_member,
    update_workspace,
    workspace_for,
)
from tenants.db import db, utcnow
from tenants.models import Invitation, Membership, Role, Tenant, User
from tenants.phones import country_for_timezone
from tenants.scoping import tenant
from webapp.auth import start_session
from webapp.emails import send_invitation
from webapp.forms import (
    EmptyForm,
    InvitedSignupForm,
    InviteForm,
    RoleForm,
    WorkspaceForm,
    WorkspaceSettingsForm,
)
from webapp.realtime import cut_off
from webapp.rendering import render_page
from webapp.tenancy import choose_workspace, member_required

bp = Blueprint("workspaces", __name__)


@bp.post("/workspaces/<int:tenant_id>/switch")
@login_required
def switch(tenant_id: int):
    if workspace_for(current_user, tenant_id) is None:
        abort(404)
    workspace = choose_workspace(current_user, tenant_id)
    flash(f"Now working in {workspace.tenant.name}.", "info")
    return redirect(url_for("dashboard.index"))


@bp.route("/workspaces/new", methods=["GET", "POST"])
@login_required
def new():
    form = WorkspaceForm()
    if form.validate_on_submit():
        try:
            tenant = create_workspace(current_user, form.name.data, form.timezone.data)
        except AccountError as exc:
            form.form_errors.append(str(exc))
        else:
            db.session.commit()
            choose_workspace(current_user, tenant.id)
            flash(f"Workspace {tenant.name} created.", "success")
            return redirect(url_for("dashboard.index"))
    return render_template("workspaces/new.html", form=form), 400 if form.errors or form.form_errors else 200


@bp.route("/workspace/settings", methods=["GET", "POST"])
@member_required(manage=True)
def settings():
    workspace = db.session.get(Tenant, g.workspace.tenant.id)
    form = WorkspaceSettingsForm(obj=workspace) if request.method == "GET" else WorkspaceSettingsForm()
    if request.method == "GET" and not workspace.default_country:
        form.default_country.data = country_for_timezone(workspace.timezone) or ""  # proposed; saved on Save
    if form.validate_on_submit():
        try:
            update_workspace(workspace, form.name.data, form.timezone.data, form.default_country.data or None)
        except AccountError as exc:
            form.form_errors.append(str(exc))
        else:
            db.session.commit()
            flash("Workspace settings saved.", "success")
            return redirect(url_for("workspaces.settings"))
    status = 400 if form.errors or form.form_errors else 200
    return render_template("workspaces/settings.html", form=form), status


@bp.get("/workspaces/suspended")
@login_required
def suspended():
    return render_template("workspaces/suspended.html"), 403


def _members() -> list[tuple[Membership, User]]:
    return db.session.execute(select(Membership, User).join(User).order_by(User.email)).all()


def _members_page(form: InviteForm, status: int = 200, notice: str | None = None, error: str | None = None):
    manages = g.workspace.role.manages_members
    return render_page(
        "workspaces/members.html",
        "member_list",
        status,
        members=_members(),
        invitations=invitations.pending() if manages else [],
        form=form,
        action_form=EmptyForm(),
        notice=notice,
        error=error,
        now=utcnow(),
        invitation_days=invitations.INVITATION_LIFETIME.days,
    )


@bp.get("/members")
@member_required
def members():
    return _members_page(InviteForm())


def _sent(invitation: Invitation, token: str) -> tuple[str | None, str | None]:
    """Email the invitation's link; the notice or the error to show."""
    if send_invitation(invitation, token, g.workspace.tenant, current_user):
        return f"We sent an invitation to {invitation.email} to join as {invitation.role.value}.", None
    return None, (
        f"The invitation of {invitation.email} is saved, but the email could not be sent. "
        "Use Resend below in a few minutes."
    )


@bp.post("/members")
@member_required(manage=True)
def add():
    """Invite by email. The answer is the same whether or not the address has a Crier account."""
    form = InviteForm()
    if form.validate_on_submit():
        try:
            invitation, token = invitations.invite(
                g.workspace.role, current_user, form.email.data, Role(form.role.data)
            )
        except AccountError as exc:
            form.email.errors = [*form.email.errors, str(exc)]
        else:
            db.session.commit()
            notice, error = _sent(invitation, token)
            return _members_page(InviteForm(formdata=None), notice=notice, error=error)
    return _members_page(form, 400)


@bp.post("/members/invitations/<int:invitation_id>/resend")
@member_required(manage=True)
def resend_invitation(invitation_id: int):
    """A new link with a new expiry; the old link stops working."""
    invitation = db.get_or_404(Invitation, invitation_id)
    try:
        token = invitations.resend(g.workspace.role, invitation)
    except AccountError as exc:
        return _members_page(InviteForm(formdata=None), 400, error=str(exc))
    db.session.commit()
    notice, error = _sent(invitation, token)
    return _members_page(InviteForm(formdata=None), notice=notice, error=error)


@bp.post("/members/invitations/<int:invitation_id>/revoke")
@member_required(manage=True)
def revoke_invitation(invitation_id: int):
    invitation = db.get_or_404(Invitation, invitation_id)
    try:
        invitations.revoke(g.workspace.role, invitation)
    except AccountError as exc:
        return _members_page(InviteForm(formdata=None), 400, error=str(exc))
    db.session.commit()
    return _members_page(
        InviteForm(formdata=None), notice=f"The invitation of {invitation.email} is revoked."
    )


# --------------------------------------------------------------------------- the invitation's link


def _invitation_page(found: invitations.Found, token: str, signup_form=None, already=False, status=200):
    return render_template(
        "workspaces/invitation.html",
        invitation=found.invitation,
        invited_to=found.workspace,
        already=already,
        form=EmptyForm(),
        signup_form=signup_form or InvitedSignupForm(formdata=None),
        token=token,
    ), status


def _usable_invitation(token: str) -> invitations.Found:
    """The token's invitation, or the one message for every link that cannot be used (404/410)."""
    found = invitations.find(token)
    if found is None or not found.usable:
        page = render_template("workspaces/invitation_dead.html", message=invitations.UNUSABLE)
        abort(make_response(page, 404 if found is None else 410))
    return found


@bp.route("/invitations/<token>", methods=["GET", "POST"])
def invitation(token: str):
    """The emailed link: signed in, accept (POST) and switch to the workspace; signed out, sign up
    for the invited address or sign in and come back."""
    found = _usable_invitation(token)
    workspace = found.workspace
    if request.method == "POST" and not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.path))
    with tenant(db.session, workspace.id):  # the invitation is the inviting workspace's row
        already = current_user.is_authenticated and invitations.is_member(current_user, workspace.id)
        if request.method == "GET" or not EmptyForm().validate_on_submit():
            return _invitation_page(found, token, already=already)
        if already:
            return _invitation_page(found, token, already=True, status=409)
        role = found.invitation.role
        try:
            invitations.accept(found.invitation, current_user)
        except AccountError as exc:
            return render_template("workspaces/invitation_dead.html", message=str(exc)), 410
    choose_workspace(current_user, workspace.id)
    flash(f"You joined {workspace.name} as {role.value}.", "success")
    return redirect(url_for("dashboard.index"))


@bp.post("/invitations/<token>/signup")
def invitation_signup(token: str):
    """A new account for the invited address that joins the inviting workspace, and no other."""
    found = _usable_invitation(token)
    workspace = found.workspace
    if current_user.is_authenticated:
        return redirect(url_for("workspaces.invitation", token=token))
    form = InvitedSignupForm()
    with tenant(db.session, workspace.id):
        if not form.validate_on_submit():
            return _invitation_page(found, token, signup_form=form, status=400)
        role = found.invitation.role
        try:
            user = invitations.sign_up_invited(found.invitation, form.password.data)
        except AccountError as exc:
            form.form_errors.append(str(exc))
            return _invitation_page(found, token, signup_form=form, status=400)
    start_session(user)
    choose_workspace(user, workspace.id)
    flash(f"Welcome to Crier! You joined {workspace.name} as {role.value}.", "success")
    return redirect(url_for("dashboard.index"))


@bp.route("/members/<int:membership_id>", methods=["GET", "POST"])
@member_required(manage=True)
def edit(membership_id: int):
    membership = db.get_or_404(Membership, membership_id)
    form = RoleForm(role=membership.role.value)
    if form.validate_on_submit():
        try:
            change_role(g.workspace.role, membership, Role(form.role.data))
        except AccountError as exc:
            form.role.errors = [*form.role.errors, str(exc)]
        else:
            db.session.commit()
            cut_off(membership.user_id)  # their pages reconnect under the new role
            flash(f"{membership.user.email} is now {membership.role.value}.", "success")
            return redirect(url_for("workspaces.members"))
    return render_template(
        "workspaces/member.html", membership=membership, form=form, remove_form=EmptyForm()
    )


@bp.post("/members/<int:membership_id>/remove")
@member_required(manage=True)
def remove(membership_id: int):
    membership = db.get_or_404(Membership, membership_id)
    email, user_id = membership.user.email, membership.user_id
    removed_self = user_id == current_user.id
    try:
        remove_member(g.workspace.role, membership)
    except AccountError as exc:
        flash(str(exc), "error")
        return redirect(url_for("workspaces.edit", membership_id=membership_id))
    db.session.commit()
    cut_off(user_id)
    if removed_self:
        flash(f"You left {g.workspace.tenant.name}. Sign in again to go on in your other workspaces.", "info")
        return redirect(url_for("auth.login"))
    flash(f"{email} was removed from the workspace.", "success")
    return redirect(url_for("workspaces.members"))
