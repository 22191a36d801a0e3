"""Message templates: a body with ``{{variables}}`` per channel kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tenants.db import JSONDocument, TimestampMixin, db, str_enum
from tenants.pages import ProviderKind
from tenants.scoping import TenantScoped


class Template(TenantScoped, TimestampMixin, db.Model):
    """What a campaign says; rendered per contact in a sandbox (see ``tenants.templating``)."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_templates_tenant_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    channel: Mapped[ProviderKind] = mapped_column(str_enum(ProviderKind, "provider_kind"))
    subject: Mapped[str | None] = mapped_column(String(300))  # email
    body: Mapped[str] = mapped_column(Text, default="")  # text (and the plain part of email)
    html_body: Mapped[str | None] = mapped_column(Text)  # email
    media_url: Mapped[str | None] = mapped_column(String(1000))
    whatsapp_template: Mapped[str | None] = mapped_column(String(200))  # approved template name
    whatsapp_language: Mapped[str | None] = mapped_column(String(20))
    whatsapp_parameters: Mapped[list[str]] = mapped_column(JSONDocument, default=list)  # one expression each

    def sources(self) -> dict[str, Any]:
        """Every part that is rendered, by name."""
        parts = {"subject": self.subject, "body": self.body, "html_body": self.html_body}
        parts.update({f"parameter {n + 1}": p for n, p in enumerate(self.whatsapp_parameters or [])})
        return {name: text for name, text in parts.items() if text}
