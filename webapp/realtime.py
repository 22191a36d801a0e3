"""Socket.IO: a signed-in member joins their current tenant's room, and nothing else."""

from __future__ import annotations

from flask import Flask, session
from flask_login import current_user
from flask_socketio import join_room

from tasks.progress import tenant_room
from tenants.accounts import is_usable, workspace_for
from webapp.extensions import socketio
from webapp.tenancy import SESSION_TENANT


def connect(auth=None):
    if not current_user.is_authenticated:
        raise ConnectionRefusedError("sign in first")
    tenant_id = session.get(SESSION_TENANT)
    workspace = workspace_for(current_user, tenant_id) if tenant_id else None
    if not is_usable(workspace):
        raise ConnectionRefusedError("no active workspace")
    join_room(tenant_room(workspace.tenant.id))


def init_app(app: Flask) -> None:
    socketio.on_event("connect", connect)
