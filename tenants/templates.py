"""Message templates: a body with ``{{variables}}`` per channel kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column

from tenants.db import JSONDocument, TimestampMixin, db, str_enum
from tenants.pages import ProviderKind
from tenants.scoping import TenantScoped
from tenants.templating import check_template, media_type_of


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
    media_type: Mapped[str | None] = mapped_column(String(20))  # chosen; None: told by the URL's extension
    whatsapp_template: Mapped[str | None] = mapped_column(String(200))  # approved template name
    whatsapp_language: Mapped[str | None] = mapped_column(String(20))
    whatsapp_parameters: Mapped[list[str]] = mapped_column(JSONDocument, default=list)  # one expression each

    def sources(self) -> dict[str, Any]:
        """Every part that is rendered, by name."""
        parts = {"subject": self.subject, "body": self.body, "html_body": self.html_body}
        parts.update({f"parameter {n + 1}": p for n, p in enumerate(self.whatsapp_parameters or [])})
        return {name: text for name, text in parts.items() if text}

    @property
    def media_kind(self) -> str | None:
        """The media type sent (image, document, video, audio): the one chosen, else the URL's."""
        return media_type_of(self.media_url, self.media_type)


class TemplateError(ValueError):
    """A template that cannot be saved; ``problems`` are shown next to the editor."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = problems or []


def apply_template_form(template: Template, fields: dict[str, str]) -> Template:
    """Validate and apply the editor's fields; refuses templates that do not compile."""
    name = (fields.get("name") or "").strip()
    if not name:
        raise TemplateError("Give the template a name.")
    duplicate = db.session.scalar(select(Template.id).where(Template.name == name))
    if duplicate is not None and duplicate != template.id:
        raise TemplateError(f"There is already a template called {name}.")
    template.name = name[:120]
    template.subject = (fields.get("subject") or "").strip()[:300] or None
    template.body = fields.get("body") or ""
    template.html_body = fields.get("html_body") or None
    template.media_url = (fields.get("media_url") or "").strip() or None
    chosen = (fields.get("media_type") or "").strip()[:20]  # checked with the rest by check_template
    template.media_type = chosen if chosen and template.media_url else None
    template.whatsapp_template = (fields.get("whatsapp_template") or "").strip()[:200] or None
    template.whatsapp_language = (fields.get("whatsapp_language") or "").strip()[:20] or None
    template.whatsapp_parameters = [
        line.strip() for line in (fields.get("whatsapp_parameters") or "").splitlines() if line.strip()
    ]
    problems = check_template(template)
    if problems:
        raise TemplateError("Fix the problems below before saving.", problems)
    return template
