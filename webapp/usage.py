"""The tenant's usage page: quota use per day and per page, with the plan's limits, and its CSV."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("usage", __name__)
