"""Crier's web application."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from flask import Flask
from flask_sqlalchemy.session import Session as FlaskSQLAlchemySession
from werkzeug.middleware.proxy_fix import ProxyFix

import tasks
import tenants.registry  # noqa: F401  (every model, for the metadata)
from tasks import logs
from tasks.progress import socketio_channel
from tenants import scoping
from tenants.db import db
from webapp import (
    account,
    admin,
    api,
    api_tokens,
    assets,
    audit,
    auth,
    campaigns,
    contacts,
    dashboard,
    errors,
    event_hooks,
    health,
    imports,
    message_templates,
    metrics,
    pages,
    realtime,
    rendering,
    reports,
    request_ids,
    segments,
    tenancy,
    usage,
    webhooks,
    workspaces,
)
from webapp.cli import crier_cli
from webapp.config import settings
from webapp.extensions import csrf, htmx, login_manager, migrate, socketio

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Crier web app: configuration, extensions, tenancy, blueprints, workers."""
    load_dotenv(PROJECT_ROOT / ".env")
    instance = Path(os.environ.get("CRIER_INSTANCE_PATH", PROJECT_ROOT / "instance"))
    app = Flask(__name__, instance_path=str(instance))
    app.config.from_mapping(settings(instance))
    app.config.from_mapping(test_config or {})
    if app.config["TRUST_PROXY_HOPS"]:
        hops = app.config["TRUST_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    logs.configure(app)
    request_ids.init_app(app)  # first of the request hooks: every line of a request carries its id

    scoping.install(FlaskSQLAlchemySession)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"), render_as_batch=True)
    csrf.init_app(app)
    htmx.init_app(app)
    login_manager.init_app(app)
    socketio.init_app(
        app,
        message_queue=app.config["REDIS_URL"],
        channel=socketio_channel(app.config),
        async_mode="threading",
    )
    tasks.init_app(app)

    tenancy.init_app(app)
    errors.init_app(app)
    realtime.init_app(app)
    csrf.exempt(webhooks.bp)
    blueprints = (
        auth,
        account,
        dashboard,
        workspaces,
        pages,
        contacts,
        imports,
        segments,
        message_templates,
        campaigns,
        reports,
        usage,
        audit,
        api_tokens,
        event_hooks,
        admin,
        webhooks,
        health,
        metrics,
        assets,
    )
    for blueprint in (module.bp for module in blueprints):
        app.register_blueprint(blueprint)
    api.init_app(app)
    app.add_template_filter(rendering.chart_time)
    app.cli.add_command(crier_cli)
    return app
