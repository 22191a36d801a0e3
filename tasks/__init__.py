"""Everything that runs in workers: the broker, actors, progress events."""

from __future__ import annotations

import logging

from flask import Flask

from tasks.broker import Workers


def init_app(app: Flask) -> None:
    """Give ``app`` its (lazily built) Dramatiq broker and import the actors."""
    import tasks.dispatch
    import tasks.imports
    import tasks.receipts
    import tasks.sweeper
    import tasks.system  # noqa: F401

    app.extensions["crier.workers"] = Workers(app)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per provider request is too many
