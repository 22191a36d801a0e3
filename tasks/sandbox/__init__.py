"""Crier's sandbox provider: a local stand-in for Meta's Graph API, Evolution, webhooks and SMTP.

It speaks the wire formats of ``tasks/providers/WIRE.md`` over real HTTP (and SMTP), with
configurable latency, failures and provider-style rate limits, keeps a ledger of every
accepted message (so duplicates can be counted) and sends signed receipts back to Crier.

Running it::

    python -m tasks.sandbox --port 8025 --smtp-port 8026 [--latency-ms 50 --rate-limit 80 ...]
    flask --app wsgi crier sandbox [same options]
    tasks.sandbox.run(host, port, smtp_port, **config)         # blocking
    with SandboxProcess(**config) as sandbox: sandbox.url       # child process, free ports

Provider endpoints (the *account* of a message in brackets):

- ``POST /{v}/me/messages``, ``GET /{v}/me`` — Messenger [the token's page id, 15 digits
  derived from the token; ``GET /{v}/me`` tells it];
- ``POST /{v}/{phone_number_id}/messages``, ``GET /{v}/{phone_number_id}`` — WhatsApp
  [phone_number_id];
- ``POST /message/sendText/{instance}`` (and ``sendMedia``, ``sendWhatsAppAudio``),
  ``GET /instance/connectionState/{instance}`` — Evolution [instance];
- ``POST /webhook/{name}`` — a tenant's webhook, answers ``{"id": ...}`` [name];
- SMTP with AUTH PLAIN/LOGIN, no TLS [username].

Graph tokens that are missing, or start with ``invalid`` or ``expired``, get code 190;
malformed requests code 100; an Evolution key that is missing or starts with ``invalid`` or
``expired`` gets 401; accounts named ``missing`` do not exist. Accounts of different kinds
never share limits or counters, even with the same name.

Control endpoints: ``GET /_sandbox/stats``, ``GET /_sandbox/ledger?after=&limit=``,
``GET``/``PUT /_sandbox/config`` (partial updates), ``POST /_sandbox/reset`` (ledger,
counters, limits, subscriptions, and the config back to the startup one),
``POST``/``GET /_sandbox/subscriptions`` (one per callback URL, that is per Crier page; its
``access_token`` ties it to the messages that page sends, see ``callbacks``),
``POST /_sandbox/inbound``, ``GET /_sandbox/health``.

Configuration keys are the fields of :class:`SandboxConfig` (see its definition for
defaults and meaning). A message that passes validation is judged in this order:
transient failure (``transient_share``), account rate limit (``rate_limit``), WhatsApp pair
limit (``pair_limit``), recipients that always fail (``permanent_suffixes``), else accepted.
Refusals never enter the ledger; they are counted in ``stats["rejected"]`` by class. Media
messages (WhatsApp image/document/video/audio/sticker and template headers, Messenger
attachments, Evolution ``sendMedia``/``sendWhatsAppAudio``, a webhook's ``media_url``) are
validated as the provider does (a missing or non-URL link is a 400) and listed in the ledger
with their ``media_url`` and ``media_type``; their ``body`` is the caption, if any.

``malformed_share`` (HTTP send endpoints only) gives that share of well-formed sends a
malformed answer of ``malformed_kind``: ``html``, a load balancer's 502 error page (the message
is not accepted; counted as a transient refusal), or ``empty`` / ``truncated``, the provider's
acceptance with its body emptied or cut in half (the message *is* accepted and in the ledger,
which is why adapters mark such an answer ``maybe_delivered``). ``stats["malformed"]`` counts them.
"""

from tasks.sandbox.behaviour import SandboxConfig
from tasks.sandbox.process import SandboxProcess, free_port
from tasks.sandbox.server import run, serve

__all__ = ["SandboxConfig", "SandboxProcess", "free_port", "run", "serve"]
