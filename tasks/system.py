"""Housekeeping actors."""

from __future__ import annotations

import os
import socket
import time

from tasks.broker import actor
from tasks.progress import emit_to_tenant
from tenants.db import db
from tenants.models import Tenant


@actor(max_retries=0, time_limit=10_000)
def ping_workers(tenant_id: int, sent_at: float) -> None:
    """Answer a tenant's "are the workers alive?" with a live event, after a round trip to the database."""
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        return
    emit_to_tenant(
        tenant_id,
        "worker:pong",
        {
            "tenant": tenant.name,
            "latency_ms": round((time.time() - sent_at) * 1000),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        },
    )
