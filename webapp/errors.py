"""Error pages: a clear message for the user, never a stack trace."""

from __future__ import annotations

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from tasks.broker import WorkersUnreachable


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
        if request.path.startswith("/api/") or request.path == "/healthz":
            return {"error": error.name, "message": error.description}, error.code
        return render_template("error.html", code=error.code, message=error.description), error.code

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self' ws: wss:; frame-ancestors 'none'; form-action 'self'; base-uri 'self'",
        )
        return response
