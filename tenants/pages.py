"""Pages: the channels a tenant sends through, with encrypted credentials and a send rate."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Float, LargeBinary, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from tenants import audit
from tenants.crypto import hint, seal, unseal
from tenants.db import JSONDocument, TimestampMixin, db, str_enum, utcnow
from tenants.scoping import TenantScoped


class ProviderKind(enum.StrEnum):
    MESSENGER = "messenger"
    WHATSAPP = "whatsapp"
    EVOLUTION = "evolution"
    SMTP = "smtp"
    WEBHOOK = "webhook"


class PageState(enum.StrEnum):
    ACTIVE = "active"
    THROTTLED = "throttled"
    DISABLED = "disabled"


class DeliveryPolicy(enum.StrEnum):
    """What a send whose outcome is unknown (the worker died mid-request) becomes."""

    AT_MOST_ONCE = "at_most_once"  # marked unknown; the user decides to resend
    AT_LEAST_ONCE = "at_least_once"  # sent again


@dataclass(frozen=True)
class Field:
    key: str
    label: str
    required: bool = True
    default: str = ""
    help: str = ""


@dataclass(frozen=True)
class ProviderSpec:
    """What a provider needs from the user, and its documented defaults."""

    label: str
    default_base_url: str
    default_rate: float
    credentials: tuple[Field, ...]
    settings: tuple[Field, ...]
    address: str  # what a recipient address is for this provider
    receipts: bool = True  # the provider reports deliveries and reads (plain SMTP does not)


GRAPH = "https://graph.facebook.com"
PROVIDERS: dict[ProviderKind, ProviderSpec] = {
    ProviderKind.WHATSAPP: ProviderSpec(
        "WhatsApp Cloud API",
        GRAPH,
        80,
        (
            Field("access_token", "Access token"),
            Field("app_secret", "App secret"),
            Field("verify_token", "Webhook verify token"),
        ),
        (
            Field("phone_number_id", "Phone number ID"),
            Field("waba_id", "WhatsApp Business Account ID", False),
            Field("api_version", "Graph API version", default="v21.0"),
        ),
        "phone number",
    ),
    ProviderKind.MESSENGER: ProviderSpec(
        "Facebook Messenger",
        GRAPH,
        300,
        (
            Field("page_access_token", "Page access token"),
            Field("app_secret", "App secret"),
            Field("verify_token", "Webhook verify token"),
        ),
        (
            Field("page_id", "Facebook page ID"),
            Field("api_version", "Graph API version", default="v21.0"),
            Field("messaging_type", "Messaging type", default="MESSAGE_TAG"),
            Field("tag", "Message tag", False, "ACCOUNT_UPDATE", "Needed outside the 24-hour window."),
        ),
        "page-scoped id",
    ),
    ProviderKind.EVOLUTION: ProviderSpec(
        "Evolution API",
        "",
        5,
        (
            Field("api_key", "API key"),
            Field(
                "webhook_token",
                "Webhook token",
                help="Set it as 'Authorization: Bearer …' in the instance's webhook headers.",
            ),
        ),
        (Field("instance", "Instance name"),),
        "phone number",
    ),
    ProviderKind.SMTP: ProviderSpec(
        "Email (SMTP)",
        "smtp://localhost:587",
        10,
        (Field("username", "Username", False), Field("password", "Password", False)),
        (
            Field("from_address", "From address"),
            Field("from_name", "From name", False),
            Field("starttls", "Use STARTTLS (true/false)", False, "true"),
        ),
        "email address",
        receipts=False,
    ),
    ProviderKind.WEBHOOK: ProviderSpec(
        "Webhook",
        "",
        50,
        (
            Field(
                "signing_secret", "Signing secret", help="Crier signs each request with HMAC-SHA256 of this."
            ),
        ),
        (),
        "contact id",
    ),
}


class PageError(ValueError):
    """A page change that cannot be made; the message is for the user."""


class Page(TenantScoped, TimestampMixin, db.Model):
    """A sending channel of one tenant."""

    __tablename__ = "pages"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[ProviderKind] = mapped_column(str_enum(ProviderKind, "provider_kind"))
    base_url: Mapped[str] = mapped_column(String(500))
    credentials_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    send_rate: Mapped[float] = mapped_column(Float)
    daily_cap: Mapped[int | None]
    state: Mapped[PageState] = mapped_column(
        str_enum(PageState, "page_state"),
        default=PageState.ACTIVE,
    )
    throttled_until: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    delivery_policy: Mapped[DeliveryPolicy] = mapped_column(
        str_enum(DeliveryPolicy, "delivery_policy"),
        default=DeliveryPolicy.AT_MOST_ONCE,
    )
    last_verified_at: Mapped[datetime | None]
    last_verify_ok: Mapped[bool | None]
    last_verify_detail: Mapped[str | None] = mapped_column(String(1000))

    def __repr__(self) -> str:  # never the credentials
        return f"<Page {self.id} {self.kind.value} {self.name!r}>"

    @property
    def spec(self) -> ProviderSpec:
        return PROVIDERS[self.kind]

    @property
    def credentials(self) -> dict[str, str]:
        return unseal(self.credentials_sealed)

    @credentials.setter
    def credentials(self, values: dict[str, str]) -> None:
        self.credentials_sealed = seal(values)

    def credential_hints(self) -> dict[str, str]:
        return {key: hint(value) for key, value in self.credentials.items()}

    def current_state(self, now: datetime | None = None) -> PageState:
        """The state as the user should see it: a cool-down that has passed is over."""
        if (
            self.state is PageState.THROTTLED
            and self.throttled_until
            and self.throttled_until <= (now or utcnow())
        ):
            return PageState.ACTIVE
        return self.state


def _check_base_url(kind: ProviderKind, url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    schemes = ("smtp", "smtps") if kind is ProviderKind.SMTP else ("http", "https")
    if parts.scheme not in schemes or not parts.hostname:
        raise PageError(f"The address must look like {schemes[0]}://host…")
    return url


def apply_form(
    page: Page,
    *,
    name: str,
    base_url: str,
    send_rate: float,
    daily_cap: int | None,
    credentials: dict[str, str],
    settings: dict[str, str],
    delivery_policy: DeliveryPolicy = DeliveryPolicy.AT_MOST_ONCE,
) -> Page:
    """Validate and apply a page form; blank credential fields keep the stored secret."""
    spec = PROVIDERS[page.kind]
    if not name.strip():
        raise PageError("Give the page a name.")
    if not base_url.strip() and not spec.default_base_url:
        raise PageError(f"{spec.label} needs the address of your server.")
    if send_rate <= 0:
        raise PageError("The send rate must be more than 0 messages per second.")
    if daily_cap is not None and daily_cap < 1:
        raise PageError("The daily cap must be at least 1, or empty for none.")
    stored = page.credentials if page.credentials_sealed else {}
    merged = {
        f.key: (credentials.get(f.key) or "").strip() or stored.get(f.key, "") for f in spec.credentials
    }
    missing = [f.label for f in spec.credentials if f.required and not merged[f.key]]
    missing += [
        f.label for f in spec.settings if f.required and not (settings.get(f.key) or f.default).strip()
    ]
    if missing:
        raise PageError("Missing: " + ", ".join(missing) + ".")
    changed = sorted(key for key, value in merged.items() if stored and stored.get(key, "") != value)
    if changed and page.id is not None:  # never the secrets themselves: their hints
        audit.record(
            "page.credentials_changed",
            tenant_id=page.tenant_id,
            target=f"page {page.id} {page.name}",
            before={key: hint(stored.get(key, "")) for key in changed},
            after={key: hint(merged[key]) for key in changed},
        )
    page.name = name.strip()[:120]
    page.base_url = _check_base_url(page.kind, base_url or spec.default_base_url)
    page.send_rate = send_rate
    page.daily_cap = daily_cap
    page.delivery_policy = delivery_policy
    page.credentials = merged
    page.settings = {f.key: (settings.get(f.key) or f.default).strip() for f in spec.settings}
    return page


def has_receipts(kind: ProviderKind | str | None) -> bool:
    """Whether messages sent through this kind of page ever get delivery and read receipts."""
    return kind is not None and PROVIDERS[ProviderKind(kind)].receipts


def check_page_allowance(max_pages: int) -> None:
    count = db.session.scalar(select(func.count()).select_from(Page))
    if count >= max_pages:
        raise PageError(f"Your plan allows {max_pages} pages. Delete one or ask us to raise the limit.")


def disable(page: Page, reason: str) -> None:
    page.state = PageState.DISABLED
    page.disabled_reason = reason[:500]


def enable(page: Page) -> None:
    page.state = PageState.ACTIVE
    page.disabled_reason = None
    page.throttled_until = None


def record_verification(page: Page, ok: bool, detail: str) -> None:
    page.last_verified_at = utcnow()
    page.last_verify_ok = ok
    page.last_verify_detail = detail[:1000]
