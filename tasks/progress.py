"""Live events from workers to browsers, through the Socket.IO Redis message queue: campaign progress
(counts, rate, ETA) and state changes."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from flask import current_app
from flask_socketio import SocketIO

from tasks.connections import redis_client
from tenants import event_hooks
from tenants.campaigns import Campaign, summary
from tenants.db import db
from tenants.models import Tenant
from tenants.pages import Page
from tenants.usage import room_today

log = logging.getLogger(__name__)


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


PROGRESS_EVERY_MS = 750  # at most a few progress events per second per campaign (each counts the deliveries)


def campaign_summary(campaign_id: int) -> dict[str, Any] | None:
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        return None
    db.session.refresh(campaign)
    return summary(campaign)


def add_rate_and_eta(campaign_id: int, data: dict[str, Any]) -> None:
    """Add the current rate (messages/s over the last few seconds) and the ETA, from samples in Redis."""
    client = redis_client()
    key = f"{current_app.config['REDIS_PREFIX']}:progress:{campaign_id}:samples"
    now = time.time()
    processed = data["processed"]
    pipe = client.pipeline()
    pipe.rpush(key, f"{now:.3f}:{processed}")
    pipe.ltrim(key, -20, -1)
    pipe.expire(key, 600)
    pipe.lrange(key, 0, -1)
    samples = [tuple(map(float, s.decode().split(":"))) for s in pipe.execute()[-1]]
    recent = [s for s in samples if now - s[0] <= 5.0] or samples[-1:]
    first = recent[0]
    elapsed = now - first[0]
    rate = (processed - first[1]) / elapsed if elapsed >= 0.3 else 0.0
    data["rate"] = round(max(rate, 0.0), 1)
    remaining = data["pending"] + data["in_flight"]
    data["eta_seconds"] = round(remaining / rate) if rate > 0 and data["state"] == "running" else None
    data["held_back"] = (
        _held_back_by_daily_limit(campaign_id, data["pending"]) if data["state"] == "running" else 0
    )
    if data["held_back"]:
        data["eta_seconds"] = None  # the rest waits for the quota day to roll over, not for the rate


def _held_back_by_daily_limit(campaign_id: int, pending: int) -> int:
    """Of the campaign's pending messages, how many today's quota or the page's cap leave for later days."""
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or not pending:
        return 0
    tenant_row = db.session.get(Tenant, campaign.tenant_id)
    page = db.session.get(Page, campaign.page_id) if campaign.page_id else None
    held = max(0, pending - room_today(tenant_row, page).left)
    db.session.commit()
    return held


def emit_progress(campaign_id: int, tenant_id: int, force: bool = False) -> None:
    """``campaign:progress`` to the tenant's and the campaign's rooms, at most a few times a second."""
    try:
        client = redis_client()
        key = f"{current_app.config['REDIS_PREFIX']}:progress:{campaign_id}:gate"
        if not force and not client.set(key, b"1", nx=True, px=PROGRESS_EVERY_MS):
            return
        data = campaign_summary(campaign_id)
        db.session.commit()
        if data is None:
            return
        add_rate_and_eta(campaign_id, data)
        emit_campaign_event(tenant_id, campaign_id, "campaign:progress", data)
    except (redis.RedisError, OSError) as exc:
        log.info("campaign %s: progress not sent (%s)", campaign_id, exc.__class__.__name__)


def emit_state(campaign_id: int, event: str) -> None:
    """A state change event (started, paused, completed, failed) with the summary."""
    try:
        data = campaign_summary(campaign_id)
        event_hooks.publish_campaign_state(event, data)  # to the tenant's webhooks too
        db.session.commit()
        if data is None:
            return
        campaign = db.session.get(Campaign, campaign_id)
        emit_campaign_event(campaign.tenant_id, campaign_id, event, data)
    except (redis.RedisError, OSError) as exc:
        log.info("campaign %s: %s not sent (%s)", campaign_id, event, exc.__class__.__name__)
