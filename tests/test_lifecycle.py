"""A platform admin's changes reach running campaigns: real workers, the sandbox, PostgreSQL and Redis.

Raising a used-up quota resumes what it paused; lowering it below today's use pauses what runs;
suspending a workspace stops its sends and keeps its scheduled campaigns waiting until it is
reactivated. Nobody gets a message twice along the way.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest

from tasks import lifecycle
from tenants.campaigns import Campaign, Schedule, start
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.scoping import all_tenants, tenant
from tests.engine import EngineRun


@pytest.fixture
def engine(sandbox):
    run = EngineRun(sandbox)
    run.configure(callbacks=False)
    yield run
    run.close()


def _tenant(tenant_id: int) -> Tenant:
    row = db.session.get(Tenant, tenant_id)
    db.session.refresh(row)
    return row


def _everyone_once(engine: EngineRun) -> list[dict]:
    ledger = engine.ledger()
    twice = [ref for ref, n in Counter(e["reference"] for e in ledger).items() if n > 1]
    assert not twice, f"sent twice: {twice[:10]}"
    assert engine.stats()["duplicates"] == 0
    return ledger


def test_a_campaign_paused_for_the_quota_resumes_within_seconds_of_a_raise_and_completes(engine):
    tenant_id, page_id, list_id = engine.setup(contacts=300, quota=100)
    campaign_id = engine.campaign(tenant_id, page_id, list_id)
    engine.worker()
    engine.start(tenant_id, campaign_id)
    paused = engine.wait(tenant_id, campaign_id, ("paused",), timeout=30)
    assert (paused["paused_reason"], paused["sent"], paused["pending"]) == ("quota", 100, 200)
    time.sleep(1.5)  # several sweeps: none resumes it while the quota is used up
    assert engine.status(tenant_id, campaign_id)["state"] == "paused"

    with all_tenants(db.session):
        lifecycle.change_limits(_tenant(tenant_id), {"daily_message_quota": 1000})
    engine.wait(tenant_id, campaign_id, ("running", "completed"), timeout=3)

    done = engine.wait(tenant_id, campaign_id, timeout=30)
    assert (done["sent"], done["pending"], done["failed"]) == (300, 0, 0)
    assert len(_everyone_once(engine)) == 300


def test_a_quota_lowered_below_todays_use_pauses_the_campaign_and_sends_stop(engine):
    tenant_id, page_id, list_id = engine.setup(contacts=600, rate=100)
    campaign_id = engine.campaign(tenant_id, page_id, list_id)
    engine.worker()
    engine.start(tenant_id, campaign_id)
    engine.wait_for(lambda: engine.stats()["accepted"] >= 60, 20, "sending")

    with all_tenants(db.session):
        lifecycle.change_limits(_tenant(tenant_id), {"daily_message_quota": 10})
    lowered_at = time.time()

    held = engine.wait(tenant_id, campaign_id, ("paused",), timeout=3)
    assert held["paused_reason"] == "quota"
    time.sleep(2.5)
    late = [e for e in engine.ledger() if e["at"] > lowered_at + 1.0]
    assert late == [], f"{len(late)} messages sent more than 1 s after the quota was lowered"
    held = engine.status(tenant_id, campaign_id)
    assert held["state"] == "paused" and held["in_flight"] == 0 and held["pending"] > 0
    states = engine.states(tenant_id, campaign_id)
    assert set(states) == {"sent", "pending"}, f"a send under way was lost: {states}"
    assert states["sent"] == engine.stats()["accepted"] == len(_everyone_once(engine))


def test_suspension_stops_sends_holds_scheduled_starts_and_reactivation_finishes_everything(engine):
    tenant_id, page_id, list_id = engine.setup(contacts=400, rate=100)
    running_id = engine.campaign(tenant_id, page_id, list_id, name="Running")
    scheduled_id = engine.campaign(tenant_id, page_id, list_id, name="Scheduled")
    engine.worker()
    engine.start(tenant_id, running_id)
    engine.wait_for(lambda: engine.stats()["accepted"] >= 50, 20, "sending")
    due_at = utcnow() + timedelta(seconds=1.5)
    with tenant(db.session, tenant_id):
        scheduled = db.session.get(Campaign, scheduled_id)
        scheduled.schedule, scheduled.scheduled_at = Schedule.AT, due_at
        db.session.commit()
        assert start(scheduled) is False

    with all_tenants(db.session):
        paused = lifecycle.suspend_tenant(_tenant(tenant_id), "Chargeback")
    suspended_at = time.time()

    assert paused == [running_id]
    held = engine.wait(tenant_id, running_id, ("paused",), timeout=5)
    assert held["paused_reason"] == "suspended"
    while utcnow() < due_at + timedelta(seconds=2):  # the scheduled campaign is due, and sweeps go by
        time.sleep(0.2)
    accepted = engine.stats()["accepted"]
    time.sleep(1.0)
    assert engine.stats()["accepted"] == accepted < 400, "sends went on while suspended"
    late = [e for e in engine.ledger() if e["at"] > suspended_at + 2.0]
    assert late == [], f"{len(late)} messages sent more than 2 s after the suspension"
    assert engine.status(tenant_id, scheduled_id)["state"] == "scheduled", "started while suspended"
    assert engine.status(tenant_id, running_id)["in_flight"] == 0

    with all_tenants(db.session):
        resumed = lifecycle.reactivate_tenant(_tenant(tenant_id))

    assert resumed == [running_id]
    first = engine.wait(tenant_id, running_id, timeout=40)
    second = engine.wait(tenant_id, scheduled_id, timeout=40)
    assert (first["sent"], second["sent"]) == (400, 400)
    assert len(_everyone_once(engine)) == 800


def test_a_page_held_by_its_provider_pauses_its_running_campaigns_until_then(engine):
    """What dispatch does when a provider asks for a long wait: the page is throttled until then and
    its running campaigns pause to resume at that time."""
    from tenants.campaigns import CampaignState, PauseReason
    from tenants.pages import Page, PageState

    tenant_id, page_id, list_id = engine.setup(contacts=20)
    campaign_id = engine.campaign(tenant_id, page_id, list_id)
    engine.start(tenant_id, campaign_id)
    until = utcnow() + timedelta(minutes=5)
    with tenant(db.session, tenant_id):
        paused = lifecycle.hold_page(
            page_id,
            PauseReason.PAGE_THROTTLED,
            "130429 rate limit hit",
            resume_at=until,
            state=PageState.THROTTLED,
            throttled_until=until,
        )
        page = db.session.get(Page, page_id)
        db.session.refresh(page)
        campaign = db.session.get(Campaign, campaign_id)
        db.session.refresh(campaign)

    assert paused == [campaign_id]
    assert page.state is PageState.THROTTLED and page.throttled_until == until
    assert campaign.state is CampaignState.PAUSED and campaign.paused_reason is PauseReason.PAGE_THROTTLED
    assert campaign.resume_at == until and campaign.state_detail == "130429 rate limit hit"
