"""Every request's id: the caller's ``X-Request-ID`` when it is a sane token (a proxy's or a load
balancer's, so lines join up across hops), otherwise a new one; bound to the request's log lines
(tasks/logs.py) and echoed in the answer's ``X-Request-ID`` header."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from tasks import logs

HEADER = "X-Request-ID"
SANE = re.compile(r"[A-Za-z0-9._:+=-]{1,128}")


def request_id_for(incoming: str | None) -> str:
    """``incoming`` when it is short and made of token characters only, else a new uuid4 hex."""
    if incoming and SANE.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def init_app(app: Flask) -> None:
    """Register the hooks; call before anything else registers ``before_request`` hooks, so that
    every line of a request (CSRF refusals included) carries the id."""

    @app.before_request
    def bind_request_id() -> None:
        g.request_id = request_id_for(request.headers.get(HEADER))
        g.request_log_ids = logs.push(request_id=g.request_id)

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers[HEADER] = g.request_id
        return response

    @app.teardown_request
    def unbind_request_id(error: BaseException | None = None) -> None:
        token = g.pop("request_log_ids", None)
        if token is not None:
            logs.pop(token)  # what runs next on this thread is not this request
