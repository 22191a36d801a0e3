"""Provider adapters: one per page kind, all behind :class:`tasks.providers.base.ProviderAdapter`.

A worker builds one shared client per event loop and one adapter per page::

    client = make_client(guard=UrlGuard(allowed_hosts=config_allowed_hosts))
    adapter = adapter_for(page_connection, client)
    result = await adapter.send(message)      # never raises for the provider's answer
    ...
    await adapter.aclose()                    # closes what the adapter owns (SMTP connections)
    await client.aclose()
"""

from __future__ import annotations

import httpx

from tasks.providers.base import PageConnection, ProviderAdapter, ProviderKind
from tasks.providers.evolution import EvolutionAdapter
from tasks.providers.http import guard_for, make_client
from tasks.providers.messenger import MessengerAdapter
from tasks.providers.smtp import SmtpAdapter
from tasks.providers.ssrf import UrlGuard
from tasks.providers.webhook import WebhookAdapter
from tasks.providers.whatsapp import WhatsAppAdapter

__all__ = [
    "ADAPTERS",
    "EvolutionAdapter",
    "MessengerAdapter",
    "SmtpAdapter",
    "UrlGuard",
    "WebhookAdapter",
    "WhatsAppAdapter",
    "adapter_for",
    "make_client",
]

ADAPTERS: dict[ProviderKind, type[ProviderAdapter]] = {
    ProviderKind.MESSENGER: MessengerAdapter,
    ProviderKind.WHATSAPP: WhatsAppAdapter,
    ProviderKind.EVOLUTION: EvolutionAdapter,
    ProviderKind.SMTP: SmtpAdapter,
    ProviderKind.WEBHOOK: WebhookAdapter,
}


def adapter_for(
    connection: PageConnection, client: httpx.AsyncClient | None = None, *, guard: UrlGuard | None = None
) -> ProviderAdapter:
    """The adapter for ``connection``'s kind, sending over ``client`` (shared; not closed by the adapter).

    Every page's host is the tenant's choice, so it is checked by ``guard``, else by the guard
    ``client`` was built with, else by one that allows no internal address except
    ``connection.allowed_hosts`` (requests to the provider's own public API are not checked).
    Without ``client`` an HTTP adapter makes its own and closes it in ``aclose()``.
    """
    kind = ProviderKind(connection.kind)
    if kind is ProviderKind.SMTP:
        return SmtpAdapter(connection, guard=guard_for(connection, client, guard))
    return ADAPTERS[kind](connection, client, guard=guard)
