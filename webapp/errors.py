"""Error pages (a clear message for the user, never a stack trace) and the headers every answer carries."""

from __future__ import annotations

import re

from flask import Flask, Response, render_template, request, session
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from tasks.broker import WorkersUnreachable
from webapp.api.problems import from_http_exception as http_problem


def init_app(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError):
        message = "Your form expired or came from another site. Reload the page and try again."
        return render_template("error.html", code=400, message=message), 400

    @app.errorhandler(WorkersUnreachable)
    def workers_unreachable(error: WorkersUnreachable):
        return render_template("error.html", code=503, message=str(error)), 503

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if request.path.startswith("/api/v1/"):
            return http_problem(error)
        if request.path.startswith("/api/") or request.path == "/healthz":
            return {"error": error.name, "message": error.description}, error.code
        return render_template("error.html", code=error.code, message=error.description), error.code

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            f"connect-src {_connect_sources()}; frame-ancestors 'none'; form-action 'self'; base-uri 'self'",
        )
        if "Cache-Control" not in response.headers and (
            current_user.is_authenticated or _sets_a_cookie(app, response)
        ):
            response.headers["Cache-Control"] = "no-store"  # pages and exports name people
        return response


def _sets_a_cookie(app: Flask, response: Response) -> bool:
    """Whether ``response`` carries a cookie: one set already, or the session, saved after this hook."""
    return "Set-Cookie" in response.headers or app.session_interface.should_set_cookie(app, session)


_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")


def _connect_sources() -> str:
    """This origin, and its own websocket (Socket.IO): not every ``ws:`` host."""
    if not _HOST.fullmatch(request.host):
        return "'self'"
    return f"'self' {'wss' if request.scheme == 'https' else 'ws'}://{request.host}"
