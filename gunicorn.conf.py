"""Crier's web process in production: ``gunicorn -c gunicorn.conf.py wsgi:app``.

One gunicorn process per host, with threads: Socket.IO (``async_mode="threading"``) keeps each
client on the process that answered its handshake, which gunicorn's own balancing between
processes cannot do; scale out with more hosts behind a proxy with sticky sessions (events cross
processes through Redis). Command-line options win over these (``--bind 127.0.0.1:9000``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

os.environ.setdefault("CRIER_LOG_FORMAT", "json")  # the app's lines (tasks/logs.py), in every worker

bind = [f"0.0.0.0:{os.environ['PORT']}"] if os.environ.get("PORT") else ["127.0.0.1:8000"]
workers = 1
worker_class = "gthread"  # simple-websocket serves Socket.IO's websockets from a gthread worker's threads
threads = int(os.environ.get("CRIER_WEB_THREADS", "100"))  # each open websocket holds one
timeout = 60
graceful_timeout = 30  # after SIGTERM, requests under way get this long to finish
keepalive = 5
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'  # the line's time and request id: see below


class AccessRequestId(logging.Filter):
    """Gives an access line the request id Crier answered with (``X-Request-ID``), which the app's
    formats show as they show every line's (a JSON field, or ``[request_id=…]`` in text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, Mapping) and atoms.get("{x-request-id}o"):
            record.request_id = atoms["{x-request-id}o"]
        return True


# gunicorn's own lines (start-up, workers, access) in the app's format, through one handler on stderr,
# which the app's tasks.logs.configure then takes over in each worker
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"crier": {"()": "tasks.logs.formatter", "kind": os.environ["CRIER_LOG_FORMAT"]}},
    "filters": {"access_request_id": {"()": AccessRequestId}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "crier"}
    },
    # WARNING until the app sets CRIER_LOG_LEVEL: what libraries say at INFO while being imported is noise
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {
            "level": "INFO",
            "handlers": [],
            "propagate": True,
            "filters": ["access_request_id"],
        },
    },
}


def post_worker_init(worker) -> None:
    """Once the app is loaded: the same calm garbage collector as the workers (a bulk upsert of 10,000
    contacts makes a few million objects, which the default thresholds would walk again and again)."""
    from tasks.runtime import calm_garbage_collector

    calm_garbage_collector()
