"""A workspace's own audit log at /audit, for its owners and admins."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("audit", __name__)
