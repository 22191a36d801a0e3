"""The sandbox's HTTP application: provider endpoints, and the ``/_sandbox`` control endpoints."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import web

from tasks.sandbox.behaviour import Behaviour, SandboxConfig, Verdict
from tasks.sandbox.callbacks import Receipts, SubscriptionError
from tasks.sandbox.ledger import Ledger, Message
from tasks.sandbox.wire import (
    Answered,
    Evolution,
    EvolutionAudio,
    EvolutionMedia,
    Messenger,
    Webhook,
    WhatsApp,
    Wire,
    bad_gateway,
    garbled,
    json_response,
)

GRAPH_VERSION = r"{version:v\d+(?:\.\d+)?}"
LEDGER_PAGE_DEFAULT = 1000
LEDGER_PAGE_MAX = 10_000
MAX_BODY_BYTES = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Decision(NamedTuple):
    verdict: Verdict
    retry_after: float | None
    message_id: str | None


class Sandbox:
    """Configuration, behaviour, ledger and receipts of one running sandbox."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.initial_config = (config or SandboxConfig()).copy()
        self.config = self.initial_config.copy()
        self.behaviour = Behaviour(self.config)
        self.ledger = Ledger()
        self.receipts = Receipts(self.behaviour)

    async def submit(self, message: Message) -> Decision:
        """Wait the configured latency, judge the message and record it if accepted."""
        await self.wait()
        now = time.monotonic()
        verdict, retry_after = self.behaviour.judge(message.kind, message.account, message.recipient, now)
        if verdict is not Verdict.ACCEPTED:
            self.ledger.refuse(verdict, message.kind, message.account)
            return Decision(verdict, retry_after, None)
        return Decision(verdict, None, self.record(message, now))

    async def wait(self) -> None:
        """The configured latency, jitter or hang before an answer."""
        seconds, hung = self.behaviour.delay()
        if hung:
            self.ledger.hung += 1
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def bad_gateway(self, message: Message) -> None:
        """A send that a load balancer answers instead of the provider: late, refused as transient."""
        await self.wait()
        self.ledger.malformed += 1
        self.ledger.refuse(Verdict.TRANSIENT, message.kind, message.account)

    def record(self, message: Message, now: float | None = None) -> str:
        """Put an accepted message in the ledger, schedule its receipts, return its message id."""
        now = time.monotonic() if now is None else now
        message_id = self.ledger.record(message, now)
        if self.receipts.subscriptions:
            self.receipts.accepted(message, message_id, now)
        return message_id

    def configure(self, changes: dict[str, Any]) -> None:
        self.config.update(changes)
        if "seed" in changes:
            self.behaviour.rng.seed(self.config.seed)

    def reset(self) -> None:
        """Forget everything: ledger, counters, limits, subscriptions; back to the startup config."""
        self.config.update(self.initial_config.to_dict())
        self.behaviour.reset()
        self.ledger.reset()
        self.receipts.reset()

    def stats(self) -> dict[str, Any]:
        return {**self.ledger.stats(), "callbacks": self.receipts.stats()}


SANDBOX = web.AppKey("sandbox", Sandbox)


def send_endpoint(wire: Wire) -> Handler:
    """The handler of a provider's send endpoint.

    With ``malformed_share`` set, that share of well-formed sends gets a malformed answer:
    ``html`` a 502 error page instead of the provider (the message is refused as transient),
    ``empty``/``truncated`` the provider's acceptance with its body emptied or cut in half (the
    message is accepted; a refusal is answered normally).
    """

    async def send(request: web.Request) -> web.StreamResponse:
        sandbox = request.app[SANDBOX]
        try:
            message = await wire.read(request)
        except Answered as answered:
            if answered.reason is not None:
                sandbox.ledger.refuse(answered.reason, wire.kind, answered.account)
            return answered.response
        malformed = None
        if sandbox.config.malformed_share:
            malformed = sandbox.behaviour.malformed()
            if malformed == "html":
                await sandbox.bad_gateway(message)
                return bad_gateway()
        verdict, retry_after, message_id = await sandbox.submit(message)
        if message_id is None:
            return wire.refused(message, verdict, retry_after)
        if malformed is not None:
            sandbox.ledger.malformed += 1
            return garbled(wire.accepted(message, message_id), malformed)
        return wire.accepted(message, message_id)

    return send


def graph_endpoint(messenger: Messenger, whatsapp: WhatsApp) -> Handler:
    """``POST /{v}/me/messages`` (Messenger) and ``POST /{v}/{phone_number_id}/messages`` (WhatsApp)."""
    send_messenger, send_whatsapp = send_endpoint(messenger), send_endpoint(whatsapp)

    async def send(request: web.Request) -> web.StreamResponse:
        if request.match_info["node"] == "me":
            return await send_messenger(request)
        return await send_whatsapp(request)

    return send


def graph_node(messenger: Messenger, whatsapp: WhatsApp) -> Handler:
    """``GET /{v}/me`` (the Messenger page) and ``GET /{v}/{phone_number_id}`` (the WhatsApp number)."""

    async def verify(request: web.Request) -> web.StreamResponse:
        if request.match_info["node"] == "me":
            return await messenger.verify(request)
        return await whatsapp.verify(request)

    return verify


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        payload = json.loads(await request.read())
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}), content_type="application/json"
        )
    return payload


def _int_query(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be an integer"}), content_type="application/json"
        ) from None


async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    return json_response(request.app[SANDBOX].stats())


async def ledger(request: web.Request) -> web.Response:
    after = _int_query(request, "after", 0)
    limit = min(max(_int_query(request, "limit", LEDGER_PAGE_DEFAULT), 1), LEDGER_PAGE_MAX)
    entries, next_after = request.app[SANDBOX].ledger.page(after, limit)
    return json_response({"entries": entries, "next": next_after})


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[SANDBOX].config.to_dict())


async def put_config(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    try:
        sandbox.configure(await _json_object(request))
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    return json_response(sandbox.config.to_dict())


async def reset(request: web.Request) -> web.Response:
    request.app[SANDBOX].reset()
    return json_response({"reset": True})


async def subscribe(request: web.Request) -> web.Response:
    try:
        subscription = await request.app[SANDBOX].receipts.subscribe(await _json_object(request))
    except SubscriptionError as exc:
        return json_response({"error": str(exc)}, 400)
    return json_response({"subscribed": True, **subscription.to_dict()})


async def subscriptions(request: web.Request) -> web.Response:
    listed = [item.to_dict() for item in request.app[SANDBOX].receipts.subscriptions.values()]
    return json_response({"subscriptions": listed})


async def inbound(request: web.Request) -> web.Response:
    try:
        subscription, status = await request.app[SANDBOX].receipts.inbound(await _json_object(request))
    except SubscriptionError as exc:
        return json_response({"error": str(exc)}, 400)
    except LookupError as exc:
        return json_response({"error": str(exc)}, 404)
    if status is None:
        return json_response({"error": f"the callback to {subscription.callback_url} failed"}, 502)
    return json_response({"delivered": True, "callback_status": status})


async def _receipts_running(app: web.Application) -> AsyncIterator[None]:
    receipts = app[SANDBOX].receipts
    await receipts.start()
    yield
    await receipts.close()


def build_app(sandbox: Sandbox) -> web.Application:
    """The aiohttp application serving ``sandbox``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SANDBOX] = sandbox
    app.cleanup_ctx.append(_receipts_running)
    whatsapp, messenger, evolution, webhook = WhatsApp(), Messenger(), Evolution(), Webhook()
    app.router.add_post(f"/{GRAPH_VERSION}/{{node}}/messages", graph_endpoint(messenger, whatsapp))
    app.router.add_get(f"/{GRAPH_VERSION}/{{node}}", graph_node(messenger, whatsapp))
    app.router.add_post("/message/sendText/{instance}", send_endpoint(evolution))
    app.router.add_post("/message/sendMedia/{instance}", send_endpoint(EvolutionMedia()))
    app.router.add_post("/message/sendWhatsAppAudio/{instance}", send_endpoint(EvolutionAudio()))
    app.router.add_get("/instance/connectionState/{instance}", evolution.verify)
    app.router.add_post("/webhook/{name}", send_endpoint(webhook))
    app.router.add_get("/_sandbox/health", health)
    app.router.add_get("/_sandbox/stats", stats)
    app.router.add_get("/_sandbox/ledger", ledger)
    app.router.add_get("/_sandbox/config", get_config)
    app.router.add_put("/_sandbox/config", put_config)
    app.router.add_post("/_sandbox/reset", reset)
    app.router.add_post("/_sandbox/subscriptions", subscribe)
    app.router.add_get("/_sandbox/subscriptions", subscriptions)
    app.router.add_post("/_sandbox/inbound", inbound)
    return app
