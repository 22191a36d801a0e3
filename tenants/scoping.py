"""Tenant scoping, enforced once for every ORM query.

The tenant a session works for lives in ``session.info``. Every ORM SELECT, UPDATE and
DELETE gets ``tenant_id = <current>`` added for every tenant-owned model it touches, and
new rows are stamped on flush. Without a tenant the session fails closed: a statement
aimed at a tenant-owned model raises :class:`TenantNotSet`, and tenant-owned rows that
other statements would pull in (eager or lazy loads) match nothing. Platform-level code
(admin pages, the sweeper, login) opts out explicitly with :func:`all_tenants`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import ForeignKey, event
from sqlalchemy.orm import (
    Mapped,
    ORMExecuteState,
    Session,
    declared_attr,
    mapped_column,
    with_loader_criteria,
)
from sqlalchemy.sql.util import find_tables

TENANT_KEY = "crier.tenant_id"
BYPASS_KEY = "crier.all_tenants"


class TenantNotSet(RuntimeError):
    """A tenant-owned model was queried or written with no tenant chosen."""


class CrossTenantWrite(RuntimeError):
    """A flush would write a row that belongs to another tenant than the session's."""


class TenantScoped:
    """Mixin for every tenant-owned model: a NOT NULL, indexed ``tenant_id``."""

    @declared_attr
    def tenant_id(cls) -> Mapped[int]:
        return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=False)


def set_tenant(session: Session, tenant_id: int | None) -> None:
    """Make ``session`` work for ``tenant_id`` (None: no tenant, fail closed)."""
    session.info[TENANT_KEY] = tenant_id


def current_tenant_id(session: Session) -> int | None:
    return session.info.get(TENANT_KEY)


@contextmanager
def tenant(session: Session, tenant_id: int) -> Iterator[None]:
    """Work for ``tenant_id`` inside the block, restoring the previous tenant after.

    Inside :func:`all_tenants`, this block is scoped again: platform code that turns to one
    tenant (the sweeper, say) gets that tenant's rows only.
    """
    previous, bypass = session.info.get(TENANT_KEY), session.info.get(BYPASS_KEY, False)
    session.info[TENANT_KEY], session.info[BYPASS_KEY] = tenant_id, False
    try:
        yield
    finally:
        session.info[TENANT_KEY], session.info[BYPASS_KEY] = previous, bypass


@contextmanager
def all_tenants(session: Session) -> Iterator[None]:
    """Platform-level work: inside the block no tenant criterion is added."""
    previous = session.info.get(BYPASS_KEY, False)
    session.info[BYPASS_KEY] = True
    try:
        yield
    finally:
        session.info[BYPASS_KEY] = previous


def _scoped_tables() -> dict[str, str]:
    """Table name to model name, for every mapped model that mixes in :class:`TenantScoped`."""
    found, pending = {}, list(TenantScoped.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        table = getattr(cls, "__table__", None)
        if table is not None:
            found[table.name] = cls.__name__
    return found


def _scoped_models_in(state: ORMExecuteState) -> list[str]:
    """Tenant-owned models a statement reads or writes directly."""
    scoped = _scoped_tables()
    tables = find_tables(state.statement, include_crud=True, include_joins=True, include_aliases=True)
    return sorted({scoped[t.name] for t in tables if getattr(t, "name", None) in scoped})


def _scope_statement(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.session.info.get(BYPASS_KEY) or state.execution_options.get("all_tenants"):
        return
    tenant_id = state.session.info.get(TENANT_KEY)
    if tenant_id is None:
        scoped = [] if state.is_relationship_load else _scoped_models_in(state)
        if scoped:
            raise TenantNotSet(f"no tenant set for a query on {', '.join(scoped)}")
        state.statement = state.statement.options(
            with_loader_criteria(TenantScoped, lambda cls: cls.tenant_id.is_(None), include_aliases=True)
        )
        return
    state.statement = state.statement.options(
        with_loader_criteria(TenantScoped, lambda cls: cls.tenant_id == tenant_id, include_aliases=True)
    )


def _stamp_and_check(session: Session, flush_context, instances) -> None:
    tenant_id = session.info.get(TENANT_KEY)
    for obj in session.new:
        if isinstance(obj, TenantScoped) and obj.tenant_id is None:
            if tenant_id is None:
                raise TenantNotSet(f"no tenant set for a new {type(obj).__name__}")
            obj.tenant_id = tenant_id
    if session.info.get(BYPASS_KEY):
        return
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, TenantScoped) and obj.tenant_id != tenant_id:
            raise CrossTenantWrite(
                f"{type(obj).__name__} of tenant {obj.tenant_id} written while working for tenant {tenant_id}"
            )


def install(session_class: type[Session] | Session) -> None:
    """Attach the scoping hooks to a session class (or session); idempotent."""
    if not event.contains(session_class, "do_orm_execute", _scope_statement):
        event.listen(session_class, "do_orm_execute", _scope_statement)
        event.listen(session_class, "before_flush", _stamp_and_check)
