"""The demo workspace `make run` creates: one page of every kind, all pointing at the local sandbox."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from sqlalchemy import select

from tenants.accounts import find_user, sign_up
from tenants.db import db
from tenants.models import Tenant
from tenants.pages import Page, ProviderKind, apply_form
from tenants.scoping import tenant

DEMO_EMAIL = "demo@crier.example"
DEMO_WORKSPACE = "Crier Demo"
PROVIDER_DEMO_RATE = 50  # messages per second, well under every real provider's limit


def demo_pages(sandbox_url: str, smtp_port: int) -> list[tuple[ProviderKind, str, str, dict, dict]]:
    """(kind, name, base URL, credentials, settings) for each demo page."""
    sandbox = sandbox_url.rstrip("/")
    host = urlsplit(sandbox).hostname

    def secret() -> str:
        return secrets.token_urlsafe(24)

    return [
        (
            ProviderKind.WHATSAPP,
            "Demo WhatsApp",
            sandbox,
            {"access_token": secret(), "app_secret": secret(), "verify_token": secret()},
            {"phone_number_id": "100000000000001", "waba_id": "200000000000001"},
        ),
        (
            ProviderKind.MESSENGER,
            "Demo Messenger",
            sandbox,
            {"page_access_token": secret(), "app_secret": secret(), "verify_token": secret()},
            {"page_id": "300000000000001"},
        ),
        (
            ProviderKind.EVOLUTION,
            "Demo Evolution",
            sandbox,
            {"api_key": secret(), "webhook_token": secret()},
            {"instance": "demo"},
        ),
        (
            ProviderKind.SMTP,
            "Demo email",
            f"smtp://{host}:{smtp_port}",
            {"username": "demo", "password": secret()},
            {"from_address": "news@crier.example", "from_name": "Crier Demo", "starttls": "false"},
        ),
        (ProviderKind.WEBHOOK, "Demo webhook", f"{sandbox}/webhook/demo", {"signing_secret": secret()}, {}),
    ]


def ensure_demo(sandbox_url: str, smtp_port: int) -> tuple[Tenant, str | None]:
    """Create the demo workspace once; returns it and the owner's password when it was just created."""
    existing = find_user(DEMO_EMAIL)
    if existing is not None:
        return db.session.scalar(select(Tenant).where(Tenant.name == DEMO_WORKSPACE)), None
    password = secrets.token_urlsafe(12)
    _, workspace = sign_up(DEMO_EMAIL, password, DEMO_WORKSPACE)
    with tenant(db.session, workspace.id):
        for kind, name, base_url, credentials, settings in demo_pages(sandbox_url, smtp_port):
            page = apply_form(
                Page(kind=kind),
                name=name,
                base_url=base_url,
                send_rate=PROVIDER_DEMO_RATE,
                daily_cap=None,
                credentials=credentials,
                settings=settings,
            )
            db.session.add(page)
        db.session.commit()
    return workspace, password
