"""Front-end libraries served from node_modules (installed from package.json, never committed)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, send_from_directory

bp = Blueprint("assets", __name__)

VENDOR_FILES = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "socket.io.min.js": "socket.io-client/dist/socket.io.min.js",
    "pico.min.css": "@picocss/pico/css/pico.min.css",
    "uPlot.iife.min.js": "uplot/dist/uPlot.iife.min.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
    "swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",  # the API's docs page
    "swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
}


@bp.get("/vendor/<name>")
def vendor(name: str):
    relative = VENDOR_FILES.get(name)
    if relative is None:
        abort(404)
    return send_from_directory(current_app.config["NODE_MODULES"], relative, max_age=86_400)
