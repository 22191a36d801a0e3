"""A campaign's report: every recipient and what became of their message, its CSV, and its timeline."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("reports", __name__)
