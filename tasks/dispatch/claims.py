"""Claims and quota: reserve today's quota and lease due deliveries in one transaction, committed
before anything is sent, then render each claimed delivery's message.

A claim takes pending rows only (FOR UPDATE SKIP LOCKED), so a dispatch message delivered twice
sends nothing twice."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import and_, select, update

from tasks import attempts, heartbeat, lifecycle
from tasks.connections import with_db_retry
from tasks.providers.base import Outcome, OutgoingMessage, SendResult, TemplateRef
from tenants.campaigns import (
    RENDER_COLUMNS,
    Delivery,
    DeliveryState,
    PauseReason,
    daily_limit_pause_detail,
    next_midnight,
    quota_day,
)
from tenants.contacts import Contact
from tenants.db import db, insert_ignoring_conflicts, utcnow
from tenants.templating import contact_variables
from tenants.usage import TENANT_SCOPE, DailyUsage, add_use, page_scope, room_today

TABLE = Delivery.__table__
CONTACT_COLUMNS = (*RENDER_COLUMNS, Contact.opted_out)


@dataclass(slots=True)
class Claimed:
    id: int
    address: str
    attempts: int
    day: date
    deadline: float  # monotonic time after which it must not be sent (its lease is running out)
    claim_key: str  # where its id is written down before its request leaves (``tasks.attempts``)
    message: OutgoingMessage | None = None
    problem: SendResult | None = None
    started: bool = False
    reslots: int = 0


class Claims:
    """Slice part: reserve the daily quota and lease due deliveries (one transaction), render them."""

    def claim(self, wanted: int) -> list[Claimed]:
        """Reserve quota and claim up to ``wanted`` due deliveries with a lease, committed before sending."""
        loop_now = time.monotonic()
        # The lease end doubles as this claim's token (to the microsecond): if the connection dies
        # after the commit went through, the retry finds the rows it already holds instead of
        # claiming others and leaving these to expire as unknown.
        token = utcnow() + timedelta(
            seconds=self.settings.lease_seconds, microseconds=random.randrange(1, 10**6)
        )

        lease = heartbeat.lease_member(self.tenant_id, self.campaign_id, token)
        claim_key = attempts.key(current_app.config["REDIS_PREFIX"], lease)
        tries = 0

        def work() -> list[Claimed]:
            nonlocal tries
            tries += 1
            now = utcnow()
            day = quota_day(self.tenant_row, now)
            rows = []
            if tries > 1:  # the last try may have committed before its connection died
                rows = db.session.execute(
                    select(TABLE.c.id, TABLE.c.contact_id, TABLE.c.address, TABLE.c.attempts).where(
                        TABLE.c.tenant_id == self.tenant_id,
                        TABLE.c.campaign_id == self.campaign_id,
                        TABLE.c.state == DeliveryState.IN_FLIGHT.value,
                        TABLE.c.lease_until == token,
                    )
                ).all()
            if not rows:
                rows = self.claim_rows(now, day, wanted, token)
            contacts = {}
            contact_ids = [r.contact_id for r in rows if r.contact_id is not None]
            if contact_ids:  # (the hot statements run on the connection, so they name the tenant)
                contacts = {
                    c.id: c
                    for c in db.session.connection().execute(
                        select(*CONTACT_COLUMNS).where(
                            Contact.tenant_id == self.tenant_id, Contact.id.in_(contact_ids)
                        )
                    )
                }
            db.session.commit()
            margin = min(20.0, self.settings.lease_seconds / 2)
            deadline = loop_now + self.settings.lease_seconds - margin
            return [
                self.prepare(
                    Claimed(r.id, r.address, r.attempts, day, deadline, claim_key), contacts.get(r.contact_id)
                )
                for r in rows
            ]

        claimed = with_db_retry(work, f"campaign {self.campaign_id}: claiming")
        if claimed:
            self.hold(lease, claim=True)
        else:
            exhausted = self.daily_limit_reached()
            if exhausted is not None and not self.tenant_has_sends_in_flight():
                self.pause_for_daily_limit(exhausted)  # (while sends are in flight, some may come back)
        return claimed

    def claim_rows(self, now: datetime, day: date, wanted: int, token: datetime) -> list:
        """Reserve quota, then lease up to that many due deliveries with ``token`` as their lease end."""
        allowed = self.reserve_quota(day, wanted)
        if allowed == 0:
            return []
        due = (
            select(TABLE.c.id)
            .where(
                TABLE.c.tenant_id == self.tenant_id,
                TABLE.c.campaign_id == self.campaign_id,
                TABLE.c.state == DeliveryState.PENDING.value,
                TABLE.c.due_at <= now,
            )
            .order_by(TABLE.c.due_at, TABLE.c.id)
            .limit(allowed)
            .with_for_update(skip_locked=True)
            .cte("due")  # a CTE runs once; an IN (subquery) may be re-run per row and claim too many
        )
        rows = (
            db.session.connection()
            .execute(
                update(TABLE)
                .where(TABLE.c.id == due.c.id, TABLE.c.state == DeliveryState.PENDING.value)
                .values(state=DeliveryState.IN_FLIGHT.value, lease_until=token, attempts=TABLE.c.attempts + 1)
                .returning(TABLE.c.id, TABLE.c.contact_id, TABLE.c.address, TABLE.c.attempts)
            )
            .all()
        )
        if len(rows) < allowed:
            self.add_usage(day, len(rows) - allowed)
        return rows

    def tenant_has_sends_in_flight(self) -> bool:
        def work() -> bool:
            found = db.session.scalar(
                select(TABLE.c.id)
                .where(TABLE.c.tenant_id == self.tenant_id, TABLE.c.state == DeliveryState.IN_FLIGHT.value)
                .limit(1)
            )
            db.session.commit()
            return found is not None

        return with_db_retry(work, "looking for sends in flight")

    def reserve_quota(self, day: date, wanted: int) -> int:
        """Lock today's usage rows (tenant, then page) and add what may be sent; returns that."""
        scopes = [(TENANT_SCOPE, self.tenant_row.daily_message_quota)]
        if self.page.daily_cap is not None:
            scopes.append((page_scope(self.page.id), self.page.daily_cap))
        allowed = wanted
        for scope, limit in scopes:
            used = self._usage_row(scope, day)
            allowed = min(allowed, max(0, limit - used))
        if allowed:
            self.add_usage(day, allowed)
        return allowed

    def _usage_row(self, scope: str, day: date) -> int:
        usage = DailyUsage.__table__
        key = and_(usage.c.tenant_id == self.tenant_id, usage.c.scope == scope, usage.c.day == day)
        used = db.session.scalar(select(usage.c.used).where(key).with_for_update())
        if used is None:
            insert = insert_ignoring_conflicts(usage).values(
                tenant_id=self.tenant_id, scope=scope, day=day, used=0
            )
            db.session.execute(insert)
            used = db.session.scalar(select(usage.c.used).where(key).with_for_update()) or 0
        return used

    def add_usage(self, day: date, count: int) -> None:
        capped = self.page.id if self.page.daily_cap is not None else None
        add_use(self.tenant_id, day, count, capped)

    def daily_limit_reached(self) -> PauseReason | None:
        """Which daily limit stops this campaign today: the tenant's quota, the page's cap, or none."""

        def reached() -> PauseReason | None:
            room = room_today(self.tenant_row, self.page)
            db.session.commit()
            if room.quota_left == 0:
                return PauseReason.QUOTA
            return PauseReason.PAGE_CAP if room.cap_left == 0 else None

        return with_db_retry(reached, "reading the quota")

    def pause_for_daily_limit(self, reason: PauseReason) -> None:
        limit = self.tenant_row.daily_message_quota if reason is PauseReason.QUOTA else self.page.daily_cap
        lifecycle.pause_campaigns(
            [self.campaign_id],
            reason,
            resume_at=next_midnight(self.tenant_row),
            detail=daily_limit_pause_detail(reason, limit, self.tenant_row.timezone),
        )
        self.stop = "paused"

    def prepare(self, item: Claimed, contact: Any) -> Claimed:
        """Render the message for one claimed delivery (or note why it cannot be sent)."""
        if contact is not None and contact.opted_out:
            item.problem = SendResult(Outcome.PERMANENT, code="opted_out", detail="the contact opted out")
            return item
        rendered = self.compiled.render(contact_variables(contact) if contact is not None else {})
        if not rendered.ok:
            reason = (
                f"missing {', '.join(sorted(rendered.missing))}"
                if rendered.missing
                else rendered.too_long or str(rendered.problems[0])
            )
            code = "missing_variable" if rendered.missing else "render_error"
            item.problem = SendResult(Outcome.PERMANENT, code=code, detail=reason[:500])
            return item
        template = None
        if self.source.whatsapp_template:
            template = TemplateRef(
                self.source.whatsapp_template,
                self.source.whatsapp_language or "en",
                rendered.whatsapp_parameters,
            )
        item.message = OutgoingMessage(
            reference=str(item.id),
            recipient=item.address,
            text=rendered.text,
            subject=rendered.subject,
            html=rendered.html,
            media_url=self.source.media_url,
            media_type=self.source.media_type,
            template=template,
        )
        return item
