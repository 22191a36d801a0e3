"""Token authentication for ``/api/v1``: the token, not a cookie, says who acts and for which workspace.

Every request but the public documents must carry ``Authorization: Bearer <token>``. The token's
tenant becomes the session's tenant (the same fail-closed scoping as the browser's), its name the
audit log's actor; a session cookie sent along is ignored, which is why the API needs no CSRF token.
Views state the scope they need with :func:`requires`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from flask import current_app, g, request

from tasks import logs
from tenants import audit
from tenants.api_tokens import ApiToken, Scope, authenticate, note_use
from tenants.audit import Actor, set_actor
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import all_tenants, set_tenant
from webapp.api.problems import ApiProblem

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def current_token() -> ApiToken:
    """The request's token (only inside an authenticated API view)."""
    return g.api_token


def requires(scope: Scope) -> Callable:
    """Answer 403 unless the request's token has ``scope`` (``admin`` has every scope)."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            if not current_token().allows(scope):
                raise ApiProblem("forbidden", f"This needs a token with the {scope.value!r} scope.")
            return view(*args, **kwargs)

        wrapper.required_scope = scope  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _bearer_secret() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def authenticate_request() -> None:
    """Bind the request to its token's tenant, or answer 401/403 with a problem."""
    set_tenant(db.session, None)  # whatever a cookie chose, the token decides
    g.workspace = None
    secret = _bearer_secret()
    if secret is None:
        raise ApiProblem(
            "unauthenticated",
            "Send an API token as 'Authorization: Bearer <token>'. Owners and admins create tokens "
            "under Settings, API tokens.",
            headers={"WWW-Authenticate": 'Bearer realm="crier"'},
        )
    token = authenticate(secret)
    if token is None:
        raise ApiProblem(
            "unauthenticated",
            "This API token is unknown, revoked or expired.",
            headers={"WWW-Authenticate": 'Bearer realm="crier", error="invalid_token"'},
        )
    with all_tenants(db.session):
        tenant_row = db.session.get(Tenant, token.tenant_id)
    if tenant_row is None or not tenant_row.is_active:
        raise ApiProblem("workspace-suspended", "This workspace is suspended; its API is closed.")
    g.api_token = token
    logs.push(tenant_id=tenant_row.id)
    set_actor(Actor(token.created_by_user_id, token.actor_label, request.remote_addr))
    set_tenant(db.session, tenant_row.id)
    note_use(token, request.remote_addr)


def audit_write(response):
    """Every change made with a token is in the audit log: method, path and answer (a POST that needs
    only the read scope, such as a template preview, changes nothing)."""
    token: ApiToken | None = g.get("api_token")
    if token is None or request.method not in WRITE_METHODS or response.status_code >= 400:
        return response
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "required_scope", None) is Scope.READ:
        return response
    audit.record(
        "api.request",
        tenant_id=token.tenant_id,
        target=f"{request.method} {request.path}"[:300],
        after={"status": response.status_code},
    )
    db.session.commit()
    return response
