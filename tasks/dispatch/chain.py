"""The dispatch chains: enqueueing a running campaign's chains, and the actor that runs one slice of a
chain and enqueues the next."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time

import redis
from flask import current_app

from tasks import heartbeat, logs
from tasks.broker import WorkersUnreachable, actor
from tasks.connections import redis_client
from tasks.dispatch.loop import send_loop
from tasks.dispatch.settings import DispatchSettings
from tasks.dispatch.slice import Slice
from tenants.campaigns import (
    Campaign,
)
from tenants.db import db
from tenants.scoping import tenant

log = logging.getLogger(__name__)

MAX_PASSES = 10  # times a slice may be passed on to spread a campaign's chains over worker processes
PASS_PAUSE = 0.1  # seconds a worker holds a slice it passes on


def launch(campaign: Campaign) -> None:
    """Enqueue the dispatch chains of a campaign that is now running (its current generation).

    Raises :class:`WorkersUnreachable` when the broker is down; the sweeper starts them later.
    """
    chains = DispatchSettings.of(current_app.config).chains
    for chain in range(chains):
        dispatch_campaign.send(campaign.id, campaign.tenant_id, campaign.dispatch_generation, chain)
    with contextlib.suppress(redis.RedisError):  # (the sweeper tells a Redis that lost these by the mark)
        heartbeat.mark_redis_in_use(redis_client(), current_app.config["REDIS_PREFIX"])


def launch_quietly(campaign: Campaign) -> str | None:
    """:func:`launch`, returning the reason instead of raising when the workers are unreachable."""
    try:
        launch(campaign)
    except WorkersUnreachable as exc:
        return str(exc)
    return None


@actor(queue_name="campaigns", max_retries=0, time_limit=15 * 60 * 1000)
def dispatch_campaign(campaign_id: int, tenant_id: int, generation: int, chain: int, passes: int = 0) -> None:
    """Run one slice of one chain of a campaign, then enqueue the next slice.

    A worker process already running its share of the campaign's chains passes the slice on
    (up to ``MAX_PASSES`` times), so that the chains spread over the worker processes.
    """
    with (
        logs.bind(tenant_id=tenant_id, campaign_id=campaign_id),
        send_loop.running(campaign_id, chain) as crowded,
        tenant(db.session, tenant_id),
    ):
        if crowded and passes < MAX_PASSES:
            # wait a moment first: a consumer that just fetched polls again within milliseconds
            # and would win the message straight back; by then it backs off like the others
            time.sleep(PASS_PAUSE * random.uniform(0.5, 1.5))
            try:
                dispatch_campaign.send(campaign_id, tenant_id, generation, chain, passes + 1)
                return
            except WorkersUnreachable:
                pass  # run it here
        job = Slice.load(campaign_id, generation, chain)
        if job is None:
            return
        job.enqueue_next = functools.partial(
            dispatch_campaign.send, campaign_id, tenant_id, generation, chain
        )
        job.mark_started()
        job.hold(heartbeat.running_member(tenant_id, campaign_id))  # relaunched at once if this process dies
        try:
            go_on = send_loop.run(job.run)
        finally:
            db.session.rollback()
            job.let_go()
        if go_on:
            try:
                dispatch_campaign.send(campaign_id, tenant_id, generation, chain)
            except WorkersUnreachable:
                log.warning("campaign %s: could not re-enqueue; the sweeper will", campaign_id)
