"""Everything that runs in workers: the broker, actors, progress events."""

from __future__ import annotations

import logging

from flask import Flask

from tasks.broker import Workers


def init_app(app: Flask) -> None:
    """Give ``app`` its metrics files and its (lazily built) Dramatiq broker, with the workers'
    middleware, and import the actors."""
    from tasks import metrics

    metrics.init_app(app)  # first: a module may make a metric's values when imported
    import tasks.event_hooks
    import tasks.imports
    import tasks.receipts
    import tasks.system  # noqa: F401
    from tasks.dispatch import ThreadResources
    from tasks.heartbeat import HeartbeatMiddleware
    from tasks.logs import LogContextMiddleware
    from tasks.sweeper import SweeperMiddleware

    def middleware() -> list:
        return [
            LogContextMiddleware(),  # first in, last out: the lines of the others below carry the id
            HeartbeatMiddleware(app),
            SweeperMiddleware(app),
            ThreadResources(),
            metrics.ProcessEnd(),
        ]

    app.extensions["crier.workers"] = Workers(app, middleware)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per provider request is too many
