"""Live events from workers to browsers, through the Socket.IO Redis message queue."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_socketio import SocketIO


def tenant_room(tenant_id: int) -> str:
    return f"tenant:{tenant_id}"


def campaign_room(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


def socketio_channel(config) -> str:
    return f"{config['REDIS_PREFIX']}-socketio"


def _emitter() -> SocketIO:
    app = current_app._get_current_object()
    emitter = app.extensions.get("crier.emitter")
    if emitter is None:
        emitter = SocketIO(message_queue=app.config["REDIS_URL"], channel=socketio_channel(app.config))
        app.extensions["crier.emitter"] = emitter
    return emitter


def emit_to_tenant(tenant_id: int, event: str, data: dict[str, Any]) -> None:
    """Send ``event`` to every browser of ``tenant_id`` that is connected to any web process."""
    _emitter().emit(event, data, to=tenant_room(tenant_id), namespace="/")


def emit_campaign_event(tenant_id: int, campaign_id: int, event: str, data: dict[str, Any]) -> None:
    """Send a campaign's ``event`` to its tenant's room and its own room (each browser gets it once)."""
    _emitter().emit(event, data, to=[tenant_room(tenant_id), campaign_room(campaign_id)], namespace="/")
