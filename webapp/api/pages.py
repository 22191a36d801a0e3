"""Pages over the API: list and status, never a credential."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from spectree import Response
from sqlalchemy import select

from tenants.api_tokens import Scope
from tenants.db import db
from tenants.pages import Page
from webapp.api import bp, spec
from webapp.api.auth import requires
from webapp.api.common import ERRORS, get_or_404


class PageOut(BaseModel):
    """A sending channel and whether it can send now (its credentials are never shown)."""

    id: int
    name: str
    kind: str = Field(description="messenger, whatsapp, evolution, smtp or webhook")
    send_rate: float = Field(description="Messages per second this page may send")
    daily_cap: int | None
    state: str = Field(description="active, throttled (until throttled_until) or disabled")
    throttled_until: datetime | None
    disabled_reason: str | None
    last_verified_at: datetime | None
    last_verify_ok: bool | None
    last_verify_detail: str | None

    @classmethod
    def of(cls, page: Page) -> PageOut:
        return cls(
            id=page.id,
            name=page.name,
            kind=page.kind.value,
            send_rate=page.send_rate,
            daily_cap=page.daily_cap,
            state=page.current_state().value,
            throttled_until=page.throttled_until,
            disabled_reason=page.disabled_reason,
            last_verified_at=page.last_verified_at,
            last_verify_ok=page.last_verify_ok,
            last_verify_detail=page.last_verify_detail,
        )


class PageList(BaseModel):
    data: list[PageOut]


@bp.get("/pages")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=PageList, **ERRORS), tags=["pages"])
def list_pages():
    """The workspace's pages."""
    pages = db.session.scalars(select(Page).order_by(Page.id))
    return PageList(data=[PageOut.of(page) for page in pages])


@bp.get("/pages/<int:page_id>")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=PageOut, **ERRORS), tags=["pages"])
def get_page(page_id: int):
    """One page and its state."""
    return PageOut.of(get_or_404(Page, page_id))
