"""Socket.IO: a signed-in member joins their current tenant's room, and the rooms of its campaigns."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, session
from flask_login import current_user
from flask_socketio import join_room
from sqlalchemy import select

from tasks.progress import campaign_room, tenant_room
from tenants.accounts import Workspace, is_usable, workspace_for
from tenants.campaigns import Campaign
from tenants.db import db
from tenants.scoping import tenant
from webapp.extensions import socketio
from webapp.tenancy import SESSION_TENANT

ID_TEXT = re.compile(r"[0-9]{1,12}")
MAX_ID = 2**31 - 1  # campaigns.id is an INTEGER


def _current_workspace() -> Workspace | None:
    """The socket user's current workspace when it is usable, else None."""
    if not current_user.is_authenticated:
        return None
    tenant_id = session.get(SESSION_TENANT)
    workspace = workspace_for(current_user, tenant_id) if tenant_id else None
    return workspace if is_usable(workspace) else None


def connect(auth=None):
    if not current_user.is_authenticated:
        raise ConnectionRefusedError("sign in first")
    workspace = _current_workspace()
    if workspace is None:
        raise ConnectionRefusedError("no active workspace")
    join_room(tenant_room(workspace.tenant.id))


def watch_campaign(data: Any = None) -> dict[str, bool]:
    """Join ``campaign:<id>`` when the campaign belongs to the current tenant; ignore any other id."""
    raw = data.get("id") if isinstance(data, dict) else data
    workspace = _current_workspace()
    if workspace is None or isinstance(raw, bool) or not ID_TEXT.fullmatch(str(raw)):
        return {"watching": False}
    campaign_id = int(raw)
    if campaign_id > MAX_ID:
        return {"watching": False}
    with tenant(db.session, workspace.tenant.id):
        found = db.session.scalar(select(Campaign.id).where(Campaign.id == campaign_id))
        db.session.rollback()
    if found is None:
        return {"watching": False}
    join_room(campaign_room(campaign_id))
    return {"watching": True}


def init_app(app: Flask) -> None:
    socketio.on_event("connect", connect)
    socketio.on_event("campaign:watch", watch_campaign)
