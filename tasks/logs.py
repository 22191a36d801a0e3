"""Crier's logs, in web and worker processes alike: one line per record, JSON or text, carrying the ids
of the work under way (the request or Dramatiq message, the tenant, the campaign).

The ids live in a context variable: :func:`bind` sets them for a block (``with logs.bind(tenant_id=3,
campaign_id=9): ...``), nesting and restoring, and :class:`ContextFilter` copies them onto every
record our handlers see. Each thread (a gunicorn request thread, a Dramatiq worker thread) has its own
context, and the dispatch send loop runs a slice's coroutine in its thread's context, so ids never
leak between concurrent work. :func:`configure`, called once by the app factory, sets the format
(``LOG_FORMAT``: ``json`` or ``text``) and level (``LOG_LEVEL``).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import dramatiq
from flask import Flask
from flask.logging import default_handler
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

IDS = ("request_id", "tenant_id", "campaign_id")
"""The ids a log line may carry, in the order the text format shows them."""

TEXT_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"
"""Dramatiq's own line format, so that web and worker lines read alike."""

QUIET_LOGGERS = {  # Socket.IO gives these a handler of its own (plain text) unless they have a level
    "socketio.server": logging.ERROR,
    "engineio.server": logging.ERROR,
}

_ids: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "crier_log_ids", default=MappingProxyType({})
)


def push(**ids: Any) -> contextvars.Token:
    """Add ``ids`` to the current ones (None forgets one) until :func:`pop` with the returned token,
    which also drops whatever was pushed after it. For hooks that cannot wrap a block; otherwise
    use :func:`bind`."""
    unknown = sorted(set(ids) - set(IDS))
    if unknown:
        raise TypeError(f"unknown log id(s) {', '.join(unknown)}; known: {', '.join(IDS)}")
    merged = {name: value for name, value in {**_ids.get(), **ids}.items() if value is not None}
    return _ids.set(MappingProxyType(merged))


def pop(token: contextvars.Token) -> None:
    """Restore the ids to what they were before the :func:`push` that returned ``token``."""
    _ids.reset(token)


@contextmanager
def bind(**ids: Any) -> Iterator[None]:
    """Carry ``ids`` (``request_id``, ``tenant_id``, ``campaign_id``) on every log line of the block."""
    token = push(**ids)
    try:
        yield
    finally:
        pop(token)


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (an id given explicitly in ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _ids.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(_JsonFormatter):
    """One JSON object a line: timestamp, level, logger, message, the ids that are known, the
    exception text when there is one, and any ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            timestamp=True,
            reserved_attrs=[*RESERVED_ATTRS, "taskName"],  # Python 3.12 adds taskName to every record
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {"timestamp": log_data.pop("timestamp"), **log_data}


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, then the known ids: ``... message [request_id=… tenant_id=3]``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{name}={value}" for name in IDS if (value := getattr(record, name, None)) is not None
        )
        line = super().formatMessage(record)
        return f"{line} [{ids}]" if ids else line


def formatter(kind: str) -> logging.Formatter:
    """The formatter for ``LOG_FORMAT`` ``kind``."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return TextFormatter()
    raise ValueError(f"CRIER_LOG_FORMAT must be json or text, not {kind!r}")


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a Dramatiq worker process points it
    at the pipe to its parent; pytest at its capture), like :data:`logging.lastResort`."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


_context_filter = ContextFilter()


def configure(app: Flask) -> None:
    """Write the process's log lines to stderr in ``LOG_FORMAT``, with the bound ids, from
    ``LOG_LEVEL`` up. Idempotent: each app built in the process applies its own settings. Call it
    before ``socketio.init_app`` (see :data:`QUIET_LOGGERS`).

    Plain stream handlers already on the root logger (``dramatiq``'s ``basicConfig``, gunicorn's
    ``logconfig_dict``) are taken over rather than doubled; without any, one on stderr is added.
    """
    chosen = formatter(app.config["LOG_FORMAT"])
    root = logging.getLogger()
    handlers = [
        handler
        for handler in root.handlers
        if type(handler) is logging.StreamHandler or isinstance(handler, StderrHandler)
    ]
    if not handlers:
        handlers = [StderrHandler()]
        root.addHandler(handlers[0])
    for handler in handlers:
        handler.setFormatter(chosen)
        handler.addFilter(_context_filter)
    root.setLevel(app.config["LOG_LEVEL"])
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    app.logger.removeHandler(default_handler)  # the app's lines go through the root's handlers only


class LogContextMiddleware(dramatiq.Middleware):
    """Binds each message's id as the ``request_id`` of the log lines written while it is processed."""

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker, message) -> None:
        self._local.token = push(request_id=message.message_id)

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        token = getattr(self._local, "token", None)
        if token is not None:
            self._local.token = None
            pop(token)

    def after_skip_message(self, broker, message) -> None:
        self.after_process_message(broker, message)
