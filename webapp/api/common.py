"""What every resource module of the API shares: error answers, lookups, keyset pagination."""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import BigInteger, Select
from sqlalchemy import inspect as sa_inspect

from tenants.db import db
from tenants.scoping import TenantScoped
from webapp.api.problems import ApiProblem, Problem

T = TypeVar("T")

# the error answers every authenticated route may give, for spectree's Response(...)
ERRORS: dict[str, Any] = {
    "HTTP_401": Problem,
    "HTTP_403": Problem,
    "HTTP_404": Problem,
    "HTTP_429": Problem,
}
WRITE_ERRORS: dict[str, Any] = {**ERRORS, "HTTP_409": Problem, "HTTP_415": Problem, "HTTP_422": Problem}

MAX_PAGE_SIZE = 500


def _largest_id(model: type) -> int:
    """No row has a larger id: a larger number is a 404, not the database's "out of range" error."""
    id_type = sa_inspect(model).primary_key[0].type
    return 2**63 - 1 if isinstance(id_type, BigInteger) else MAX_ID


def get_or_404(model: type[T], object_id: int) -> T:
    """The current tenant's ``model`` row with this id, or a 404 problem (another tenant's ids too)."""
    row = db.session.get(model, object_id) if 0 < object_id <= _largest_id(model) else None
    if row is None:
        raise ApiProblem("not-found", f"No {_spoken(model)} {object_id} in this workspace.")
    return row


def _spoken(model: type) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", model.__name__).lower()


@cache
def path_models() -> dict[str, type]:
    """Path arguments that name a tenant-owned object: ``contact_list_id`` → ``ContactList``."""
    return {
        re.sub(r"(?<!^)(?=[A-Z])", "_", mapper.class_.__name__).lower() + "_id": mapper.class_
        for mapper in db.Model.registry.mappers
        if issubclass(mapper.class_, TenantScoped) and [c.key for c in mapper.primary_key] == ["id"]
    }


def require_path_objects(view_args: dict[str, Any] | None) -> None:
    """404 for a URL naming an object that is not the workspace's, before its body is even read.

    Every route's ids are checked here, once, so another workspace's id is a 404 whatever the
    method and whatever the body (an invalid body would otherwise be a 422 first).
    """
    models = path_models()
    for name, value in (view_args or {}).items():
        if name in models and isinstance(value, int):
            get_or_404(models[name], value)


class PageQuery(BaseModel):
    """Keyset pagination: ``after`` is the ``next_after`` of the previous page (ids ascending)."""

    after: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="The next_after cursor of the previous page"
    )
    limit: int = Field(default=100, ge=1, le=MAX_PAGE_SIZE)


class PageInfo(BaseModel):
    next_after: int | None = Field(description="Pass as ?after= for the next page; null on the last page")


def keyset_page(statement: Select, model: Any, query: PageQuery) -> tuple[list[Any], PageInfo]:
    """One page of ``statement``'s ``model`` rows by id ascending after ``query.after``, and its cursor."""
    statement = statement.where(model.id > (query.after or 0)).order_by(model.id).limit(query.limit + 1)
    rows = list(db.session.scalars(statement))
    return rows[: query.limit], page_info([row.id for row in rows], query.limit)


def page_info(ids: list[int], limit: int) -> PageInfo:
    """The cursor after a page of ``ids`` fetched with ``limit + 1`` rows asked (the extra one says more)."""
    return PageInfo(next_after=ids[limit - 1] if len(ids) > limit else None)


MAX_ID = 2**31 - 1  # ids are INTEGER columns: a larger one names nothing


def storable_text(text: str) -> str:
    """Refuse what PostgreSQL cannot store or compare as text (NUL, lone surrogates)."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return valid_unicode(text)


def valid_unicode(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return text


StoredText = Annotated[str, AfterValidator(storable_text)]
RowId = Annotated[int, Field(ge=1, le=MAX_ID)]


def body(model: Any) -> Any:
    """The validated JSON body; a form-encoded one was not read at all (spectree reads JSON only)."""
    if model is None:
        raise ApiProblem("unsupported-media-type", "Send the body as JSON (Content-Type: application/json).")
    return model


class IdPageQuery(PageQuery):
    """Keyset pagination over ids ascending (``after`` as large as an id can be)."""

    after: int | None = Field(
        default=None, ge=0, le=MAX_ID, description="The next_after cursor of the previous page"
    )
