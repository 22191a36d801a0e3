"""One URL, two answers: the whole page, or a named block of it for HTMX (htmx's template fragments)."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from flask import Response, abort, g, make_response, render_template, stream_with_context
from htmx_flask import request
from jinja2_fragments.flask import render_block
from werkzeug.http import quote_header_value

from tenants.campaigns import tenant_zone
from tenants.db import db
from tenants.scoping import tenant


def render_page(template_name: str, block: str, status: int = 200, **context: Any) -> Response:
    """Render ``block`` of ``template_name`` for an HTMX request, else the whole page."""
    body = (
        render_block(template_name, block, **context)
        if request.htmx
        else render_template(template_name, **context)
    )
    response = make_response(body, status)
    response.vary.add("HX-Request")
    return response


def fragment_only(what: str) -> None:
    """Refuse a plain request to a URL that answers only HTMX's fragment of ``what`` (400, not a 500)."""
    if not request.htmx:
        abort(400, f"This address only answers the live count of the {what}; open the {what} instead.")


def chart_time(epoch_seconds: float) -> str:
    """An instant on a chart's time axis as wall-clock time in the workspace's zone (UTC without one)."""
    workspace = g.get("workspace")
    zone = tenant_zone(workspace.tenant) if workspace is not None else UTC
    return datetime.fromtimestamp(epoch_seconds, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def attachment(filename: str) -> str:
    """The ``Content-Disposition`` value offering a download named ``filename`` (RFC 6266), as
    Werkzeug's ``send_file`` writes it: a quoted ASCII ``filename`` and, for a name that is not
    ASCII, the exact name in ``filename*=UTF-8''…``. Control characters are dropped."""
    name = "".join(c for c in filename if unicodedata.category(c) != "Cc") or "download"
    simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").strip()
    fallback = f"attachment; filename={quote_header_value(simple or 'download', allow_token=False)}"
    if name.isascii():
        return fallback
    return f"{fallback}; filename*=UTF-8''{quote(name, safe='!#$&+-.^_`|~')}"


def csv_download(rows: Callable[[], Iterable[Iterable[Any]]], filename: str) -> Response:
    """A CSV attachment streamed row by row from ``rows()`` (already spreadsheet-safe), read for the
    current workspace: the stream runs after the view returned, in a session of its own. Exports name
    people, so they are never cached."""
    tenant_id = g.workspace.tenant.id

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        with tenant(db.session, tenant_id):
            for row in rows():
                writer.writerow(row)
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()

    return Response(
        stream_with_context(lines()),
        mimetype="text/csv",
        headers={"Content-Disposition": attachment(filename), "Cache-Control": "no-store"},
    )
