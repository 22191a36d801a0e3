"""Workspaces (tenants) a user belongs to: switching, creating, and managing members."""

from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from tenants.accounts import (
    AccountError,
    add_member,
    change_role,
    create_workspace,
    remove_member,
    update_workspace,
    workspace_for,
)
from tenants.db import db
from tenants.models import Membership, Role, Tenant, User
from webapp.forms import AddMemberForm, EmptyForm, RoleForm, WorkspaceForm, WorkspaceSettingsForm
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


def _members_page(form: AddMemberForm, status: int = 200, notice: str | None = None):
    return render_page(
        "workspaces/members.html", "member_list", status, members=_members(), form=form, notice=notice
    )


@bp.get("/members")
@member_required
def members():
    return _members_page(AddMemberForm())


@bp.post("/members")
@member_required(manage=True)
def add():
    form = AddMemberForm()
    if form.validate_on_submit():
        try:
            membership = add_member(g.workspace.role, form.email.data, Role(form.role.data))
        except AccountError as exc:
            form.email.errors = [*form.email.errors, str(exc)]
        else:
            db.session.commit()
            notice = f"{membership.user.email} joined as {membership.role.value}."
            return _members_page(AddMemberForm(formdata=None), notice=notice)
    return _members_page(form, 400)


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
