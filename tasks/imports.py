"""The contact import job: run one ``ContactImport`` and tell the tenant's browsers how it goes.

Events, to the tenant room (``tenant:<id>``):

* ``import:progress`` — ``{import_id, total, processed, created, updated, merged, skipped, rejected,
  percent}``, at most every :data:`PROGRESS_INTERVAL` seconds (first one once the rows are counted);
* ``import:completed`` — the same fields plus ``status: "completed"``, ``notes`` ({text: count} of
  rows adjusted without being rejected) and ``seconds``;
* ``import:failed`` — the counters reached plus ``status: "failed"`` and ``error`` (for the user).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import redis

from tasks.broker import actor
from tasks.metrics import ImportRowCounter
from tasks.progress import emit_to_tenant
from tenants.contact_import import (
    ImportFailed,
    ImportProgress,
    claim_import,
    configure_import,
    import_contacts,
)
from tenants.contacts import ContactImport
from tenants.db import db
from tenants.scoping import tenant

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.25  # seconds between two import:progress events of one import


def start_import(
    contact_import: ContactImport,
    *,
    mapping: dict[str, str],
    list_id: int | None,
    update_existing: bool,
    phone_country: str | None = None,
) -> None:
    """Confirm the mapping screen's choices, commit, and enqueue the import.

    Raises ``MappingError`` (nothing changed) or ``WorkersUnreachable`` (the import is saved as
    ``queued``; calling this again once the workers are back enqueues it).
    """
    configure_import(
        contact_import,
        mapping=mapping,
        list_id=list_id,
        update_existing=update_existing,
        phone_country=phone_country,
    )
    db.session.commit()
    run_contact_import.send(contact_import.id)


class ThrottledProgress:
    """An ``on_progress`` callback that emits ``import:progress`` at most every ``interval`` seconds."""

    def __init__(self, tenant_id: int, interval: float = PROGRESS_INTERVAL):
        self.tenant_id = tenant_id
        self.interval = interval
        self.last = float("-inf")

    def __call__(self, progress: ImportProgress) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            _emit(self.tenant_id, "import:progress", progress.as_event())


def _emit(tenant_id: int, event: str, data: dict[str, Any]) -> None:
    try:
        emit_to_tenant(tenant_id, event, data)
    except (redis.RedisError, OSError) as exc:  # live events are a courtesy; the import row has the truth
        log.warning("could not emit %s for tenant %s: %s", event, tenant_id, exc)


class _Reported:
    """What an import's progress goes to: the tenant's browsers (throttled) and ``crier_import_rows``."""

    def __init__(self, tenant_id: int):
        self.events = ThrottledProgress(tenant_id)
        self.rows = ImportRowCounter()

    def __call__(self, progress: ImportProgress) -> None:
        self.rows(progress)
        self.events(progress)


@actor(max_retries=0, time_limit=2 * 60 * 60 * 1000)
def run_contact_import(import_id: int) -> None:
    """Run a queued import (or take over one whose worker died); a finished one is left alone."""
    tenant_id = claim_import(import_id)
    if tenant_id is None:
        return
    with tenant(db.session, tenant_id):
        contact_import = db.session.get(ContactImport, import_id)
        try:
            result = import_contacts(contact_import, on_progress=_Reported(tenant_id))
        except ImportFailed as exc:
            _emit(tenant_id, "import:failed", _failure(import_id, str(exc)))
            return
        except BaseException:  # a bug, the database gone, the worker's time limit or shutdown
            with contextlib.suppress(Exception):  # what is raised next is the story
                _emit(tenant_id, "import:failed", _failure(import_id, "The import stopped: internal error."))
            raise
    _emit(tenant_id, "import:completed", {**result.as_event(), "status": "completed"})


def _failure(import_id: int, error: str) -> dict[str, Any]:
    record = db.session.get(ContactImport, import_id)
    counts = ImportProgress(import_id, total=None)
    if record is not None:
        counts = ImportProgress(
            import_id,
            total=record.rows_total or None,
            processed=record.rows_processed,
            created=record.created_count,
            updated=record.updated_count,
            merged=record.merged_count,
            rejected=record.rejected_count,
        )
        counts.skipped = counts.processed - counts.created - counts.updated - counts.merged - counts.rejected
        error = record.error or error
    return {**counts.as_event(), "status": "failed", "error": error}
