"""Which tenant a request works for, and the decorators views use to require one."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from flask import Flask, abort, flash, g, redirect, request, session, url_for
from flask_login import current_user

from tasks import logs
from tenants.accounts import Workspace, workspace_for, workspaces_of
from tenants.audit import SYSTEM, Actor, set_actor
from tenants.db import db
from tenants.models import Role, User
from tenants.scoping import all_tenants, set_tenant
from webapp.extensions import login_manager

SESSION_TENANT = "tenant_id"


def choose_workspace(user: User, tenant_id: int | None = None) -> Workspace | None:
    """Remember ``tenant_id`` (or the user's first workspace) as the session's tenant."""
    workspace = workspace_for(user, tenant_id) if tenant_id else None
    if workspace is None:
        all_of_them = workspaces_of(user)
        workspace = all_of_them[0] if all_of_them else None
    session[SESSION_TENANT] = workspace.tenant.id if workspace else None
    return workspace


def bind_request_tenant() -> None:
    """Set ``g.workspace`` and the session's tenant for this request (also for an error raised before it)."""
    g.workspace = None
    set_tenant(db.session, None)
    if not current_user.is_authenticated:
        set_actor(SYSTEM)
        return
    set_actor(Actor(current_user.id, current_user.email, request.remote_addr))
    tenant_id = session.get(SESSION_TENANT)
    workspace = workspace_for(current_user, tenant_id) if tenant_id else None
    if workspace is None:
        workspace = choose_workspace(current_user)
    g.workspace = workspace
    if workspace is not None:
        logs.push(tenant_id=workspace.tenant.id)  # popped with the request's id (webapp/request_ids.py)
    if workspace is not None and workspace.tenant.is_active:
        set_tenant(db.session, workspace.tenant.id)


def member_required(view: Callable | None = None, *, manage: bool = False):
    """Require a signed-in member of an active workspace (``manage``: an owner or admin)."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            workspace: Workspace | None = g.workspace
            if workspace is None:
                if current_user.is_platform_admin:
                    return redirect(url_for("admin.index"))
                flash("You are not a member of any workspace yet. Create one to get started.", "info")
                return redirect(url_for("workspaces.new"))
            if not workspace.tenant.is_active:
                return redirect(url_for("workspaces.suspended"))
            if manage and not workspace.role.manages_members:
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorate(view) if view is not None else decorate


def init_app(app: Flask) -> None:
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "basic"

    @login_manager.user_loader
    def load_user(session_user_id: str) -> User | None:
        """The session's user, unless its session version was bumped since (see ``User.get_id``)."""
        user_id, _, version = session_user_id.partition(":")
        if not (user_id.isdigit() and version.isdigit()):
            return None
        with all_tenants(db.session):
            user = db.session.get(User, int(user_id))
        return user if user is not None and user.session_version == int(version) else None

    app.before_request(bind_request_tenant)

    @app.teardown_request
    def _forget_actor(error: BaseException | None = None) -> None:
        set_actor(SYSTEM)  # what runs next on this thread is not this request's user

    @app.context_processor
    def workspace_context() -> dict:
        def my_workspaces() -> list[Workspace]:
            return workspaces_of(current_user) if current_user.is_authenticated else []

        return {"workspace": g.get("workspace"), "my_workspaces": my_workspaces, "Role": Role}
