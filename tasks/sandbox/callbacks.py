"""Receipts and incoming messages sent back to Crier, the way each provider sends them.

Subscribing an account (``POST /_sandbox/subscriptions``) is like configuring the webhook
in the provider's dashboard: for Meta kinds the sandbox first does the verification
handshake. Subscriptions are kept per callback URL (one per Crier page): two pages may name
the same account (two workspaces trying the same phone number id), so a subscription may give
the ``access_token`` its page sends with, and the receipts of a message go to the subscription
whose token sent it (else to the account's subscriptions that gave no token).

Receipts of accepted messages wait in one heap until due; a flusher groups the due ones
per subscription (up to ``callback_batch`` statuses per Meta POST) and a few senders POST
them over one shared ``aiohttp.ClientSession``. Failures are counted and logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from tasks.sandbox.behaviour import Behaviour
from tasks.sandbox.ledger import EVOLUTION, MESSENGER, WHATSAPP, Message
from tasks.sandbox.wire import digits_of, display_phone_number, fingerprint, messenger_account

log = logging.getLogger(__name__)

DELIVERED = "delivered"
READ = "read"
SUBSCRIBABLE_KINDS = (MESSENGER, WHATSAPP, EVOLUTION)
CALLBACK_TIMEOUT_SECONDS = 10.0
SENDERS = 8
FAILURE_LOG_INTERVAL_SECONDS = 5.0
EVOLUTION_STATUS = {DELIVERED: "DELIVERY_ACK", READ: "READ"}


class SubscriptionError(ValueError):
    """A subscription the sandbox refuses; the text is shown to the caller."""


@dataclass(frozen=True, slots=True, eq=False)
class Subscription:
    """Where receipts of one account go, and how they are signed."""

    kind: str
    account: str
    callback_url: str
    secret: str
    verify_token: str | None = None
    waba_id: str | None = None
    sender: str | None = None  # fingerprint of the page's sending token; None: every sender's receipts

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "account": self.account, "callback_url": self.callback_url}

    def receives(self, message: Message) -> bool:
        """Whether this subscription gets the receipts of ``message`` (sent through its account)."""
        return self.sender is None or self.sender == message.sender


Receipt = tuple[str, str, str | None, str]
"""``(status, recipient, reference, message_id)``."""


def sign(secret: str, body: bytes) -> str:
    """Meta's ``X-Hub-Signature-256`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _ms() -> int:
    return int(time.time() * 1000)


def _whatsapp_envelope(subscription: Subscription, value: dict[str, Any]) -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": digits_of(display_phone_number(subscription.account)),
            "phone_number_id": subscription.account,
        },
        **value,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": subscription.waba_id or subscription.account,
                "changes": [{"field": "messages", "value": value}],
            }
        ],
    }


def _messenger_envelope(subscription: Subscription, messaging: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "page",
        "entry": [{"id": subscription.account, "time": _ms(), "messaging": messaging}],
    }


def whatsapp_statuses(subscription: Subscription, receipts: list[Receipt]) -> dict[str, Any]:
    timestamp = str(int(time.time()))
    statuses = []
    for status, recipient, reference, message_id in receipts:
        item = {"id": message_id, "status": status, "timestamp": timestamp, "recipient_id": recipient}
        if reference is not None:
            item["biz_opaque_callback_data"] = reference
        statuses.append(item)
    return _whatsapp_envelope(subscription, {"statuses": statuses})


def messenger_receipts(subscription: Subscription, receipts: list[Receipt]) -> dict[str, Any]:
    """Deliveries grouped per recipient (``mids``), reads as one watermark per recipient."""
    now = _ms()
    delivered: dict[str, list[str]] = {}
    read: dict[str, None] = {}
    for status, recipient, _, message_id in receipts:
        if status == DELIVERED:
            delivered.setdefault(recipient, []).append(message_id)
        else:
            read[recipient] = None
    page = {"id": subscription.account}
    messaging: list[dict[str, Any]] = [
        {
            "sender": {"id": recipient},
            "recipient": page,
            "timestamp": now,
            "delivery": {"mids": mids, "watermark": now},
        }
        for recipient, mids in delivered.items()
    ]
    messaging += [
        {"sender": {"id": recipient}, "recipient": page, "timestamp": now, "read": {"watermark": now}}
        for recipient in read
    ]
    return _messenger_envelope(subscription, messaging)


def evolution_update(subscription: Subscription, receipt: Receipt) -> dict[str, Any]:
    status, recipient, _, message_id = receipt
    return {
        "event": "messages.update",
        "instance": subscription.account,
        "data": {
            "keyId": message_id,
            "remoteJid": f"{recipient}@s.whatsapp.net",
            "fromMe": True,
            "status": EVOLUTION_STATUS[status],
        },
        "date_time": datetime.now(UTC).isoformat(),
    }


def incoming_message(subscription: Subscription, sender: str, name: str, text: str) -> dict[str, Any]:
    """The provider's webhook for a person writing ``text`` to the account."""
    if subscription.kind == WHATSAPP:
        return _whatsapp_envelope(
            subscription,
            {
                "contacts": [{"profile": {"name": name}, "wa_id": sender}],
                "messages": [
                    {
                        "from": sender,
                        "id": f"wamid.IN{secrets.token_hex(12).upper()}",
                        "timestamp": str(int(time.time())),
                        "type": "text",
                        "text": {"body": text},
                    }
                ],
            },
        )
    if subscription.kind == MESSENGER:
        now = _ms()
        return _messenger_envelope(
            subscription,
            [
                {
                    "sender": {"id": sender},
                    "recipient": {"id": subscription.account},
                    "timestamp": now,
                    "message": {"mid": f"m_in{secrets.token_hex(12)}", "text": text},
                }
            ],
        )
    return {
        "event": "messages.upsert",
        "instance": subscription.account,
        "data": {
            "key": {
                "remoteJid": f"{sender}@s.whatsapp.net",
                "fromMe": False,
                "id": secrets.token_hex(8).upper(),
            },
            "pushName": name,
            "message": {"conversation": text},
            "messageType": "conversation",
            "messageTimestamp": int(time.time()),
        },
        "date_time": datetime.now(UTC).isoformat(),
    }


def _required(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise SubscriptionError(f"{name} is required")
    return value


class Receipts:
    """Subscriptions, due receipts, and the senders that POST them."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.subscriptions: dict[str, Subscription] = {}  # by callback URL: one per Crier page
        self._by_account: dict[tuple[str, str], list[Subscription]] = {}
        self._due: list[tuple[float, int, Subscription, Receipt]] = []
        self._order = itertools.count()
        self._outbox: asyncio.Queue[tuple[Subscription, list[Receipt]]] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_failure_logged: dict[str, float] = {}
        self.counters = {"posts": 0, "statuses": 0, "failed": 0, "inbound": 0}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_SECONDS),
            headers={"User-Agent": "facebookexternalua"},
        )
        self._outbox = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._flush_forever(), name="sandbox-receipts-flusher")]
        self._tasks += [
            asyncio.create_task(self._send_forever(), name=f"sandbox-receipts-sender-{n}")
            for n in range(SENDERS)
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reset(self) -> None:
        self.subscriptions.clear()
        self._by_account.clear()
        self._due.clear()
        if self._outbox is not None:
            while not self._outbox.empty():
                self._outbox.get_nowait()
        self.counters = dict.fromkeys(self.counters, 0)

    def stats(self) -> dict[str, int]:
        waiting = self._outbox.qsize() if self._outbox is not None else 0
        return {**self.counters, "due": len(self._due), "waiting_posts": waiting}

    async def subscribe(self, payload: dict[str, Any]) -> Subscription:
        """Register where an account's receipts go, after Meta's verification handshake."""
        kind = payload.get("kind")
        if kind not in SUBSCRIBABLE_KINDS:
            raise SubscriptionError(f"kind must be one of {', '.join(SUBSCRIBABLE_KINDS)}")
        account = _required(payload, "account")
        callback_url = _required(payload, "callback_url")
        if not callback_url.startswith(("http://", "https://")):
            raise SubscriptionError("callback_url must be an http(s) URL")
        token = payload.get("access_token")
        sender = fingerprint(token) if isinstance(token, str) and token else None
        if kind == EVOLUTION:
            secret = _required(payload, "webhook_token")
            subscription = Subscription(kind, account, callback_url, secret, sender=sender)
        else:
            if kind == MESSENGER:
                account = messenger_account(account)
            waba_id = payload.get("waba_id")
            subscription = Subscription(
                kind,
                account,
                callback_url,
                _required(payload, "app_secret"),
                _required(payload, "verify_token"),
                waba_id if isinstance(waba_id, str) and waba_id else None,
                sender,
            )
            await self._handshake(subscription)
        self.subscriptions.pop(callback_url, None)
        self.subscriptions[callback_url] = subscription  # the latest subscription of a page replaces it
        self._by_account.clear()
        for known in self.subscriptions.values():
            self._by_account.setdefault((known.kind, known.account), []).append(known)
        return subscription

    async def _handshake(self, subscription: Subscription) -> None:
        assert self._session is not None
        challenge = str(secrets.randbelow(9 * 10**9) + 10**9)
        params = {
            "hub.mode": "subscribe",
            "hub.verify_token": subscription.verify_token or "",
            "hub.challenge": challenge,
        }
        try:
            async with self._session.get(subscription.callback_url, params=params) as response:
                answer = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SubscriptionError(
                f"The URL couldn't be validated. Callback verification failed: {exc!r}"
            ) from None
        if status != 200 or answer != challenge:
            raise SubscriptionError(
                "The URL couldn't be validated. Response does not match challenge, "
                f'expected value="{challenge}", received="{answer[:100]}" (HTTP {status})'
            )

    def accepted(self, message: Message, message_id: str, now: float) -> None:
        """Schedule the receipts of an accepted message for the page that sent it, if subscribed."""
        subscribed = self._by_account.get((message.kind, message.account))
        if not subscribed:
            return
        config = self.behaviour.config
        if not config.callbacks:
            return
        senders = [s for s in subscribed if s.sender is not None and s.sender == message.sender]
        targets = senders or [s for s in subscribed if s.sender is None]
        if not targets:
            return
        due = [(now + config.delivered_after_ms / 1000, DELIVERED)]
        if self.behaviour.wants_read_receipt():
            due.append((now + config.read_after_ms / 1000, READ))
        for subscription in targets:
            for at, status in due:
                receipt: Receipt = (status, message.recipient, message.reference, message_id)
                heapq.heappush(self._due, (at, next(self._order), subscription, receipt))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(max(self.behaviour.config.callback_flush_ms, 1.0) / 1000)
            self.flush(time.monotonic())

    def flush(self, now: float) -> None:
        """Move the receipts due by ``now`` to the outbox, grouped per subscription and batch."""
        assert self._outbox is not None
        due = self._due
        grouped: dict[Subscription, list[Receipt]] = {}
        while due and due[0][0] <= now:
            _, _, subscription, receipt = heapq.heappop(due)
            grouped.setdefault(subscription, []).append(receipt)
        batch = self.behaviour.config.callback_batch
        for subscription, receipts in grouped.items():
            if subscription.kind == EVOLUTION:
                for receipt in receipts:
                    self._outbox.put_nowait((subscription, [receipt]))
            else:
                for start in range(0, len(receipts), batch):
                    self._outbox.put_nowait((subscription, receipts[start : start + batch]))

    async def _send_forever(self) -> None:
        assert self._outbox is not None
        while True:
            subscription, receipts = await self._outbox.get()
            try:
                await self._send(subscription, receipts)
            except Exception as exc:
                self._failed(subscription, f"{type(exc).__name__}: {exc}")

    async def _send(self, subscription: Subscription, receipts: list[Receipt]) -> None:
        if subscription.kind == WHATSAPP:
            payload = whatsapp_statuses(subscription, receipts)
        elif subscription.kind == MESSENGER:
            payload = messenger_receipts(subscription, receipts)
        else:
            payload = evolution_update(subscription, receipts[0])
        if await self.post(subscription, payload) is not None:
            self.counters["statuses"] += len(receipts)

    def _request(self, subscription: Subscription, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if subscription.kind == EVOLUTION:
            headers["Authorization"] = f"Bearer {subscription.secret}"
        else:
            headers["X-Hub-Signature-256"] = sign(subscription.secret, body)
        return body, headers

    async def post(self, subscription: Subscription, payload: dict[str, Any]) -> int | None:
        """POST one signed payload; the HTTP status if it was a 2xx, else None (counted and logged)."""
        assert self._session is not None
        body, headers = self._request(subscription, payload)
        try:
            async with self._session.post(subscription.callback_url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failed(subscription, f"{type(exc).__name__}: {exc}")
            return None
        if not 200 <= status < 300:
            self._failed(subscription, f"HTTP {status}")
            return None
        self.counters["posts"] += 1
        return status

    def _failed(self, subscription: Subscription, what: str) -> None:
        self.counters["failed"] += 1
        now = time.monotonic()
        url = subscription.callback_url
        if (
            now - self._last_failure_logged.get(url, -FAILURE_LOG_INTERVAL_SECONDS)
            >= FAILURE_LOG_INTERVAL_SECONDS
        ):
            self._last_failure_logged[url] = now
            log.warning("callback to %s failed (%s); %d failures so far", url, what, self.counters["failed"])

    async def inbound(self, payload: dict[str, Any]) -> tuple[Subscription, int | None]:
        """Send the webhook of a person writing to an account; the callback's 2xx status or None."""
        kind = payload.get("kind")
        account = _required(payload, "account")
        if kind == MESSENGER:
            account = messenger_account(account)
        sender = _required(payload, "sender")
        text = _required(payload, "text")
        subscribed = self._by_account.get((kind, account), [])
        callback_url = payload.get("callback_url")
        if callback_url:  # which page's subscription, when several pages name this account
            subscribed = [s for s in subscribed if s.callback_url == callback_url]
        if not subscribed:
            raise LookupError(f"no {kind} subscription for account {account}")
        subscription = subscribed[-1]
        name = payload.get("name")
        if not isinstance(name, str) or not name:
            name = f"Sandbox Contact {sender[-4:]}"
        self.counters["inbound"] += 1
        return subscription, await self.post(subscription, incoming_message(subscription, sender, name, text))
