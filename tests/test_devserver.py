"""What `make run` shows a newcomer: a verified sandbox page and a campaign with receipts on first run."""

from __future__ import annotations

import os
import time

from sqlalchemy import select

from tenants.campaigns import Campaign, summary
from tenants.db import db
from tenants.demo import FIRST_CAMPAIGN, FIRST_CAMPAIGN_RECIPIENTS, refresh_demo
from tenants.pages import Page, ProviderKind
from tenants.scoping import tenant
from tenants.templates import Template
from tests.conftest import built_app
from webapp.devserver import show_the_demo_working


def test_first_run_verifies_the_demo_page_and_sends_a_campaign_that_gets_receipts(
    live_server, worker_process, sandbox
):
    # the session's prefix: the real worker consumes what this app enqueues
    with built_app(REDIS_PREFIX=os.environ["REDIS_PREFIX"]) as app:
        with app.app_context():
            setup = refresh_demo(app.config["SANDBOX_URL"], app.config["SANDBOX_SMTP_PORT"], 300)
        said = show_the_demo_working(app, live_server, setup.tenant_id)
        assert any("verified" in line for line in said), said
        assert any(f"to {FIRST_CAMPAIGN_RECIPIENTS} contacts" in line for line in said), said

        with app.app_context(), tenant(db.session, setup.tenant_id):
            page = db.session.scalar(select(Page).where(Page.kind == ProviderKind.WHATSAPP))
            assert page.last_verify_ok is True
            assert db.session.scalar(select(Template.name)) == "Welcome"
            deadline, facts = time.monotonic() + 60, {}
            while time.monotonic() < deadline:
                campaign = db.session.scalar(select(Campaign).where(Campaign.name == FIRST_CAMPAIGN))
                facts = summary(campaign)
                db.session.commit()
                if facts["state"] == "completed" and facts["delivered"] == FIRST_CAMPAIGN_RECIPIENTS:
                    break
                time.sleep(0.5)
            assert (facts["state"], facts["sent"]) == ("completed", FIRST_CAMPAIGN_RECIPIENTS)
            assert facts["delivered"] == FIRST_CAMPAIGN_RECIPIENTS and facts["read"] > 0

        # a second `make run` leaves the demo as it is: no second campaign
        said_again = show_the_demo_working(app, live_server, setup.tenant_id)
        assert not any("started" in line for line in said_again)
        with app.app_context(), tenant(db.session, setup.tenant_id):
            assert len(db.session.scalars(select(Campaign.id)).all()) == 1
