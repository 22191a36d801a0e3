"""Errors of the API as RFC 9457 problem details (``application/problem+json``).

Every error has a stable ``type`` (``/api/v1/problems/<slug>``, listed at ``/api/v1/problems``) that a
client can switch on, a ``title`` that is the same for every instance of the type, and a ``detail``
that says what was wrong with this request. Validation errors add ``errors``: one entry per field.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from pydantic import BaseModel, Field
from werkzeug.exceptions import HTTPException

PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "unauthenticated": (401, "A valid API token is needed"),
    "forbidden": (403, "The token may not do this"),
    "workspace-suspended": (403, "The workspace is suspended"),
    "not-found": (404, "No such object"),
    "method-not-allowed": (405, "Method not allowed"),
    "conflict": (409, "The object's state does not allow this"),
    "idempotency-key-in-use": (409, "A request with this Idempotency-Key is still running"),
    "payload-too-large": (413, "The request is too large"),
    "unsupported-media-type": (415, "Send JSON"),
    "invalid-request": (422, "The request is not valid"),
    "idempotency-key-reused": (422, "This Idempotency-Key was used for a different request"),
    "rate-limited": (429, "Too many requests"),
    "unavailable": (503, "Try again shortly"),
    "server-error": (500, "Something went wrong on our side"),
}
_BY_STATUS = {
    400: "invalid-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "rate-limited",
    503: "unavailable",
}
PROBLEM_JSON = "application/problem+json"


class FieldError(BaseModel):
    """What is wrong with one field of the request."""

    field: str = Field(description="The field's path, dotted (``contacts.3.phone``), or the query parameter")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem: ``type`` is stable, ``detail`` explains this occurrence."""

    type: str = Field(description="A URI naming the kind of error; stable, switch on it")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="The request's path")
    errors: list[FieldError] | None = Field(default=None, description="Per field, for invalid requests")


class ApiProblem(Exception):
    """Raise to answer with a problem of type ``slug`` (one of :data:`PROBLEM_TYPES`)."""

    def __init__(self, slug: str, detail: str, *, errors: list[FieldError] | None = None, headers=None):
        super().__init__(detail)
        if slug not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem type {slug!r}")
        self.slug, self.detail, self.errors, self.headers = slug, detail, errors, headers or {}


def type_uri(slug: str) -> str:
    return f"/api/v1/problems/{slug}"


def problem_response(
    slug: str, detail: str, *, errors: list[FieldError] | None = None, headers: dict[str, Any] | None = None
) -> Response:
    status, title = PROBLEM_TYPES[slug]
    body = Problem(
        type=type_uri(slug), title=title, status=status, detail=detail, instance=request.path, errors=errors
    )
    response = jsonify(body.model_dump(exclude_none=True))
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    for name, value in (headers or {}).items():
        response.headers[name] = str(value)
    return response


def from_api_problem(error: ApiProblem) -> Response:
    return problem_response(error.slug, error.detail, errors=error.errors, headers=error.headers)


def from_http_exception(error: HTTPException) -> Response:
    slug = _BY_STATUS.get(error.code or 500, "server-error")
    response = problem_response(slug, error.description or PROBLEM_TYPES[slug][1])
    if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def validation_problem(errors: list[dict[str, Any]], where: str) -> Response:
    """A 422 problem from pydantic's error list (``where``: body, query, path)."""
    fields = [
        FieldError(field=".".join(str(part) for part in error.get("loc", ())) or where, message=error["msg"])
        for error in errors
    ]
    summary = "; ".join(f"{f.field}: {f.message}" for f in fields[:3])
    more = f" (and {len(fields) - 3} more)" if len(fields) > 3 else ""
    return problem_response("invalid-request", f"Invalid {where}: {summary}{more}", errors=fields)
