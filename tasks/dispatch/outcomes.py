"""Outcomes: what each send's result means for its delivery (sent, retry, failed, unknown, given back),
written in bulk (only rows still in flight), and what they trigger: slowing the page, disabling it,
pausing a campaign whose sends keep failing."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import bindparam, select, text, update

from tasks import lifecycle, metrics
from tasks.connections import with_db_retry
from tasks.dispatch.claims import TABLE, Claimed
from tasks.dispatch.pacing import HOLD_FROM, PAIR_INTERVAL
from tasks.providers.base import Outcome, SendResult
from tenants import event_hooks
from tenants.campaigns import (
    DeliveryState,
    PauseReason,
    quota_day,
)
from tenants.db import db, utcnow
from tenants.pages import DeliveryPolicy, PageState, ProviderKind
from tenants.usage import count_activity

log = logging.getLogger(__name__)

ERROR_WINDOW, ERROR_MIN_SAMPLE = 100, 20
WRITE_OUTCOME = (  # one row of outcomes (executemany), for databases without arrays
    update(TABLE)
    .where(TABLE.c.id == bindparam("b_id"), TABLE.c.state == DeliveryState.IN_FLIGHT.value)
    .values(
        state=bindparam("b_state"),
        attempts=bindparam("b_attempts"),
        due_at=bindparam("b_due_at"),
        provider_message_id=bindparam("b_provider_message_id"),
        error_code=bindparam("b_error_code"),
        error_text=bindparam("b_error_text"),
        sent_at=bindparam("b_sent_at"),
        retryable=bindparam("b_retryable"),
        lease_until=None,
    )
)
WRITE_OUTCOMES_POSTGRESQL = text(  # the same rows as arrays, one a column, and the day's activity
    """
    WITH written AS (
        UPDATE deliveries AS d
        SET state = v.state, attempts = v.attempts, due_at = v.due_at,
            provider_message_id = v.provider_message_id, error_code = v.error_code,
            error_text = v.error_text, sent_at = v.sent_at, retryable = v.retryable, lease_until = NULL
        FROM unnest(CAST(:b_id AS bigint[]), CAST(:b_state AS varchar[]), CAST(:b_attempts AS integer[]),
                    CAST(:b_due_at AS timestamptz[]), CAST(:b_provider_message_id AS varchar[]),
                    CAST(:b_error_code AS varchar[]), CAST(:b_error_text AS varchar[]),
                    CAST(:b_sent_at AS timestamptz[]), CAST(:b_retryable AS boolean[]))
             AS v(id, state, attempts, due_at, provider_message_id, error_code, error_text, sent_at,
                  retryable)
        WHERE d.id = v.id AND d.tenant_id = :tenant_id AND d.state = (SELECT 'in_flight')
        RETURNING d.id, d.state
    ), counted AS (
        INSERT INTO daily_activity AS a
            (tenant_id, day, campaign_id, page_id, channel, sent, delivered, read, failed, replied)
        SELECT :tenant_id, CAST(:day AS date), CAST(:campaign_id AS integer), CAST(:page_id AS integer),
               CAST(:channel AS varchar), count(*) FILTER (WHERE state = 'sent'), 0, 0,
               count(*) FILTER (WHERE state = 'failed'), 0
        FROM written
        HAVING count(*) FILTER (WHERE state IN ('sent', 'failed')) > 0
        ON CONFLICT (tenant_id, day, campaign_id)
        DO UPDATE SET sent = a.sent + EXCLUDED.sent, failed = a.failed + EXCLUDED.failed
    )
    SELECT id FROM written
    """
)
"""The state is compared with a subquery so that it cannot match the in-flight index's predicate: that
index keeps an entry for every row updated since the last vacuum, and a generic plan scanning it is
far slower than going by primary key (docs/decisions.md).

What the provider accepted and what failed is added to the day's activity (``tenants.usage``'s
``count_activity``, here written for this one statement) in the same round trip: a second statement
in the write's transaction made it longer, and more of them were cut when connections dropped."""


@dataclass(slots=True)
class Write:
    """What to write for one delivery."""

    id: int
    state: DeliveryState
    attempts: int
    due_at: datetime | None = None
    provider_message_id: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    refund: date | None = None  # the quota day to give the message back to
    retryable: bool = False  # a failure worth resending later (its retries ran out)
    counted_as: str | None = None  # the send's outcome in ``crier_sends`` (None: nothing was sent)


class Outcomes:
    """Slice part: what each send's result means for its delivery, written in bulk, and acted on."""

    def release(self, item: Claimed, due_in: float = 0.0, cancelled: bool = False) -> None:
        """Give a claimed delivery back untouched: its attempt and its quota are not spent."""
        if cancelled:
            self.outcomes.append(
                Write(
                    item.id,
                    DeliveryState.CANCELLED,
                    item.attempts - 1,
                    error_text="cancelled",
                    refund=item.day,
                )
            )
            return
        self.release_with_error(item, due_in, None, None)

    def record(self, item: Claimed, result: SendResult) -> None:
        """What one send's result means for its delivery (counted in ``crier_sends`` once written)."""
        written = len(self.outcomes)
        self._judge(item, result)
        for write in self.outcomes[written:]:
            write.counted_as = _counted_as(write, result)

    def _judge(self, item: Claimed, result: SendResult) -> None:
        outcome = result.outcome
        now = utcnow()
        if outcome is Outcome.SENT:
            self.outcomes.append(
                Write(
                    item.id, DeliveryState.SENT, item.attempts, provider_message_id=result.provider_message_id
                )
            )
            self.recent_failures.append(False)
            return
        code, text = (result.code or "")[:50] or None, (result.detail or "")[:500] or None
        if outcome is not Outcome.RECIPIENT_PACED and not result.maybe_delivered:
            self.unreached.append(item.address)  # its retry need not wait out the pair interval
        if outcome is Outcome.THROTTLED:
            # a short wait is that message's: the page only slows down (after_flush); a long one holds
            # the page, and the sends booked meanwhile are given back
            if (result.retry_after or 0) >= HOLD_FROM:
                if self.throttled is None or result.retry_after > (self.throttled.retry_after or 0):
                    self.throttled = result
            else:
                self.slowed = True
            self.release_with_error(item, result.retry_after or 1.0, code, text)
        elif outcome is Outcome.RECIPIENT_PACED:
            self.release_with_error(item, result.retry_after or PAIR_INTERVAL, code, text)
        elif outcome is Outcome.PAGE_FATAL:
            self.page_fatal = self.page_fatal or result
            self.release_with_error(item, 0.0, code, text)
        elif outcome is Outcome.PERMANENT:
            self.fail(item, code, text)
        elif result.maybe_delivered and self.page.delivery_policy is not DeliveryPolicy.AT_LEAST_ONCE:
            self.outcomes.append(
                Write(
                    item.id,
                    DeliveryState.UNKNOWN,
                    item.attempts,
                    error_code=code,
                    error_text=(f"may have been delivered: {text or 'no answer'}")[:500],
                )
            )
        elif item.attempts >= self.max_attempts:
            detail = f"gave up after {item.attempts} attempts: {text or 'no detail'}"[:500]
            self.fail(item, code, detail, retryable=True)
        else:
            backoff = self.settings.retry_base_seconds * 2 ** (item.attempts - 1) * random.uniform(0.5, 1.5)
            wait = result.retry_after if result.retry_after is not None else min(300.0, backoff)
            self.outcomes.append(
                Write(
                    item.id,
                    DeliveryState.PENDING,
                    item.attempts,
                    due_at=now + timedelta(seconds=wait),
                    error_code=code,
                    error_text=text,
                    refund=item.day,
                )
            )

    def release_with_error(self, item: Claimed, due_in: float, code: str | None, text: str | None) -> None:
        """Back to pending in ``due_in`` seconds, attempt and quota given back, with why it waits."""
        self.outcomes.append(
            Write(
                item.id,
                DeliveryState.PENDING,
                item.attempts - 1,
                due_at=utcnow() + timedelta(seconds=due_in),
                error_code=code,
                error_text=text,
                refund=item.day,
            )
        )

    def fail(self, item: Claimed, code: str | None, text: str | None, retryable: bool = False) -> None:
        self.outcomes.append(
            Write(
                item.id,
                DeliveryState.FAILED,
                item.attempts,
                error_code=code,
                error_text=text,
                refund=item.day,
                retryable=retryable,
            )
        )
        self.recent_failures.append(True)

    async def flush(self) -> None:
        """Write every outcome recorded so far, off the event loop so sends keep their slots."""
        if self.outcomes:
            outcomes, self.outcomes = self.outcomes, []
            await asyncio.to_thread(self.write, outcomes)

    def write(self, outcomes: list[Write]) -> None:
        """Write outcomes in one transaction (only rows still in flight), then act on what they say."""

        def work() -> set[int]:
            # only rows still in flight are written and refunded: after a lost commit acknowledgement
            # the retry finds them written and gives nothing back twice
            held = self._write_rows(outcomes, utcnow())
            event_hooks.publish_failed_deliveries(self.tenant_id, self.campaign_id, outcomes, held)
            refunds: dict[date, int] = {}
            for o in outcomes:
                if o.refund is not None and o.id in held:
                    refunds[o.refund] = refunds.get(o.refund, 0) + 1
            for day, count in refunds.items():
                self.add_usage(day, -count)
            db.session.commit()
            return held

        # outcomes are what a lost write turns into "unknown": they get the longest retries (about 9 s)
        held = with_db_retry(work, f"campaign {self.campaign_id}: recording outcomes", attempts=8)
        counted = Counter(o.counted_as for o in outcomes if o.counted_as is not None and o.id in held)
        for outcome, count in counted.items():
            metrics.SENDS.labels(channel=self.page.kind.value, outcome=outcome).inc(count)
        self.after_flush()

    def activity_key(self, now: datetime) -> dict[str, Any]:
        """Where this slice's outcomes are counted in the daily activity (charts, usage)."""
        return {
            "tenant_id": self.tenant_id,
            "day": quota_day(self.tenant_row, now),
            "campaign_id": self.campaign_id,
            "page_id": self.page.id,
            "channel": self.page.kind.value,
        }

    def _write_rows(self, outcomes: list[Write], now: datetime) -> set[int]:
        """Update the rows of ``outcomes`` still in flight and count them in the day's activity; their ids."""
        rows = [
            {
                "b_id": o.id,
                "b_state": o.state.value,
                "b_attempts": o.attempts,
                "b_due_at": o.due_at or now,
                "b_provider_message_id": o.provider_message_id,
                "b_error_code": o.error_code,
                "b_error_text": o.error_text,
                "b_sent_at": now if o.state is DeliveryState.SENT else None,
                "b_retryable": o.retryable,
            }
            for o in outcomes
        ]
        connection = db.session.connection()
        if connection.dialect.name == "postgresql":
            # one statement over arrays (a column each): one round trip for the whole batch
            columns = {name: [row[name] for row in rows] for name in rows[0]}
            return set(
                connection.execute(WRITE_OUTCOMES_POSTGRESQL, {**self.activity_key(now), **columns}).scalars()
            )
        held = set(
            connection.execute(
                select(TABLE.c.id)
                .where(
                    TABLE.c.tenant_id == self.tenant_id,
                    TABLE.c.id.in_([o.id for o in outcomes]),
                    TABLE.c.state == DeliveryState.IN_FLIGHT.value,
                )
                .with_for_update()
            ).scalars()
        )
        if held:
            connection.execute(WRITE_OUTCOME, [row for row in rows if row["b_id"] in held])
            states = [o.state for o in outcomes if o.id in held]
            count_activity(
                [
                    {
                        **self.activity_key(now),
                        "sent": states.count(DeliveryState.SENT),
                        "failed": states.count(DeliveryState.FAILED),
                    }
                ]
            )
        return held

    def after_flush(self) -> None:
        if self.unreached and self.page.kind is ProviderKind.WHATSAPP:
            unreached, self.unreached = self.unreached, []
            try:
                self.limiter.unpace_recipients(f"page:{self.page.id}", unreached)
            except redis.RedisError:
                log.warning("page %s: pacing of %s recipients not cleared", self.page.id, len(unreached))
        if self.throttled is not None or self.slowed:
            self.cool_down(self.throttled)
            self.throttled, self.slowed = None, False
        if self.page_fatal is not None:
            fatal, self.page_fatal = self.page_fatal, None
            self.disable_page(fatal)
        failures = self.recent_failures
        if len(failures) >= ERROR_MIN_SAMPLE and sum(failures) / len(failures) >= self.error_threshold:
            share = sum(failures) / len(failures)
            lifecycle.pause_campaigns(
                [self.campaign_id],
                PauseReason.ERROR_THRESHOLD,
                detail=f"{share:.0%} of the last {len(failures)} sends failed",
            )
            self.stop = "paused"
        self.emit_progress()

    def disable_page(self, result: SendResult) -> None:
        reason = f"The provider refused the page: {result.code or ''} {result.detail or ''}".strip()[:500]

        lifecycle.hold_page(
            self.page.id, PauseReason.PAGE_FAILING, reason, state=PageState.DISABLED, disabled_reason=reason
        )
        self.stop = "paused"


def _counted_as(write: Write, result: SendResult) -> str:
    """A send's outcome for ``crier_sends``: what its delivery became (sent, failed, unknown), why it
    waits (throttled, recipient_paced, page_fatal) or ``retry``."""
    if write.state in (DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.UNKNOWN):
        return write.state.value
    if result.outcome in (Outcome.THROTTLED, Outcome.RECIPIENT_PACED, Outcome.PAGE_FATAL):
        return result.outcome.value
    return "retry"
