"""The platform admin's console at /admin: tenants, plans, limits, suspension and the audit log.

Only platform admins get past :func:`_platform_admins_only`; everyone else (signed in or not) gets 404,
so the console's existence is not revealed. Work here spans tenants, so each view opts out of
tenant scoping explicitly with ``all_tenants``.
"""

from __future__ import annotations

from flask import Blueprint, abort
from flask_login import current_user

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _platform_admins_only() -> None:
    if not (current_user.is_authenticated and current_user.is_platform_admin):
        abort(404)
