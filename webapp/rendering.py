"""One URL, two answers: the whole page, or a named block of it for HTMX (htmx's template fragments)."""

from __future__ import annotations

from typing import Any

from flask import Response, make_response, render_template
from htmx_flask import request
from jinja2_fragments.flask import render_block


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
