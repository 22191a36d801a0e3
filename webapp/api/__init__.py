"""``/api/v1``: Crier's JSON API for a workspace's own systems (CRMs, shops, scripts).

Requests are validated by pydantic models through spectree, and the OpenAPI 3.1 document at
``/api/v1/openapi.json`` is generated from those same models and routes. Every request carries a
Bearer token (:mod:`webapp.api.auth`); the token's workspace scopes every query, as the browser's
session does. Errors are problem details (:mod:`webapp.api.problems`). The resource modules each add
their routes to :data:`bp` when imported.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template, request
from spectree import SecurityScheme, SecuritySchemeData, SpecTree
from spectree.models import SecureType

from webapp.api import auth, common, idempotency, problems, ratelimit
from webapp.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def _problem_on_invalid_request(req, resp, error, instance, model_adapter) -> None:
    """spectree's hook: its 422 (a bare list) becomes a problem naming each field."""
    if error is None or resp is None:
        return
    where = "query" if request.args and not request.get_data() else "body"
    problem = problems.validation_problem(model_adapter.validation_errors(error), where)
    resp.set_data(problem.get_data())
    resp.status_code = problem.status_code
    resp.mimetype = problems.PROBLEM_JSON


spec = SpecTree(
    "flask",
    title="Crier API",
    version="1",
    description=(
        "Contacts, lists, templates, pages, campaigns and usage of one workspace. Authenticate with "
        "`Authorization: Bearer <token>` (Settings → API tokens). Errors are RFC 9457 problem details; "
        "POSTs honour `Idempotency-Key`; every answer carries `RateLimit-*` headers."
    ),
    mode="strict",  # only routes decorated with spec.validate are documented
    annotations=True,
    naming_strategy=lambda model: model.__name__,  # model names are unique across the API
    nested_naming_strategy=lambda parent, child: child,
    validation_error_status=422,
    validation_error_model=problems.Problem,
    before=_problem_on_invalid_request,
    security_schemes=[
        SecurityScheme(
            name="bearer",
            data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", description="An API token"),
        )
    ],
    security={"bearer": []},
)


def openapi_document() -> dict[str, Any]:
    """The generated document, with error answers declared as ``application/problem+json``."""
    document = copy.deepcopy(spec.spec)
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if status[:1] in "45" and "application/json" in content:
                    content[problems.PROBLEM_JSON] = content.pop("application/json")
    return document


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi_document())


@bp.get("/docs")
def docs() -> str:
    return render_template("api/docs.html")


@bp.get("/problems")
def problem_types() -> Response:
    return jsonify(
        [
            {"type": problems.type_uri(slug), "status": status, "title": title}
            for slug, (status, title) in problems.PROBLEM_TYPES.items()
        ]
    )


@bp.get("/problems/<slug>")
def problem_type(slug: str) -> Response:
    if slug not in problems.PROBLEM_TYPES:
        raise problems.ApiProblem("not-found", f"There is no problem type {slug!r}.")
    status, title = problems.PROBLEM_TYPES[slug]
    return jsonify({"type": problems.type_uri(slug), "status": status, "title": title})


PUBLIC_ENDPOINTS = frozenset({"api.openapi_json", "api.docs", "api.problem_types", "api.problem_type"})


def _guard() -> Response | None:
    """Before every view but the public documents: the token, its rate limit, its idempotency key,
    the objects its URL names (another workspace's id is a 404 here, whatever the body), the body."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    auth.authenticate_request()
    ratelimit.count_request()
    replay = idempotency.claim_key()
    if replay is not None:
        return replay
    common.require_path_objects(request.view_args)
    _require_json_body()
    return None


def _require_json_body() -> None:
    """A body, when there is one, is JSON: anything else is refused, not read as an empty object."""
    if not request.get_data(cache=True):
        return
    if not request.is_json:
        raise problems.ApiProblem(
            "unsupported-media-type", "Send the body as JSON, with 'Content-Type: application/json'."
        )
    if request.get_json(silent=True) is None:
        raise problems.ApiProblem("invalid-request", "The body is not valid JSON.")


def guard(blueprint: Blueprint) -> Blueprint:
    """Put ``blueprint``'s routes behind the API's door: tokens, rate limit, idempotency, problems."""
    blueprint.errorhandler(problems.ApiProblem)(problems.from_api_problem)
    csrf.exempt(blueprint)  # no cookie is ever accepted here: every request must carry a token (auth.py)
    blueprint.before_request(_guard)
    for after in (ratelimit.tell_limit, idempotency.keep_answer, auth.audit_write):
        blueprint.after_request(after)
    return blueprint


guard(bp)  # once, here: a blueprint takes no more hooks after its first app registered it


def init_app(app: Flask) -> None:
    """Register the API: the resource routes, token authentication and problems."""
    from webapp.api import campaigns, contacts, lists, pages, templates, usage  # noqa: F401  (routes)

    app.register_blueprint(bp)  # spec.register is not called: its doc pages load scripts from CDNs
