"""Socket.IO: a signed-in member joins their current tenant's room, and the rooms of its campaigns.

Each user's open sockets are listed in Redis (``<prefix>:sockets:user:<id>``) so that signing out,
a removal or a role change can close them in whichever web process holds them: the Socket.IO
message queue carries the disconnect there. Membership is checked again on every room joined.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

import redis
from flask import Flask, current_app, request, session
from flask_login import current_user
from flask_socketio import join_room
from sqlalchemy import select

from tasks.connections import redis_client
from tasks.progress import campaign_room, tenant_room
from tenants.accounts import Workspace, is_usable, workspace_for
from tenants.campaigns import Campaign
from tenants.db import db
from tenants.scoping import tenant
from webapp.extensions import socketio
from webapp.tenancy import SESSION_TENANT

ID_TEXT = re.compile(r"[0-9]{1,12}")
MAX_ID = 2**31 - 1  # campaigns.id is an INTEGER
SOCKET_LIST_SECONDS = 24 * 3600  # a list nobody refreshed for a day lists only closed sockets

log = logging.getLogger(__name__)


def _sockets_key(user_id: int) -> str:
    return f"{current_app.config['REDIS_PREFIX']}:sockets:user:{user_id}"


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
    try:
        with redis_client().pipeline() as pipe:
            pipe.sadd(_sockets_key(current_user.id), request.sid)
            pipe.expire(_sockets_key(current_user.id), SOCKET_LIST_SECONDS)
            pipe.execute()
    except redis.RedisError as exc:  # the socket still works; only cutting it off later would not
        log.warning("socket %s of user %s not listed: %s", request.sid, current_user.id, exc)


def disconnect(reason: Any = None) -> None:
    # the list expires anyway; a stale entry only costs a no-op disconnect later
    if current_user.is_authenticated:
        with contextlib.suppress(redis.RedisError):
            redis_client().srem(_sockets_key(current_user.id), request.sid)


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


def cut_off(user_id: int) -> None:
    """Close every open socket of the user, in every web process (through the message queue)."""
    try:
        sids = [sid.decode() for sid in redis_client().smembers(_sockets_key(user_id))]
        redis_client().delete(_sockets_key(user_id))
    except redis.RedisError as exc:
        log.warning("could not list the sockets of user %s to close them: %s", user_id, exc)
        return
    for sid in sids:
        socketio.server.disconnect(sid, namespace="/")


def init_app(app: Flask) -> None:
    socketio.on_event("connect", connect)
    socketio.on_event("disconnect", disconnect)
    socketio.on_event("campaign:watch", watch_campaign)
