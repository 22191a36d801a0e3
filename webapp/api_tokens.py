"""A workspace's API tokens at /settings/api-tokens: owners and admins list, create and revoke them.

A new token's secret is shown once, in the answer to the form that created it (never in a flash
message or the session: those travel in a cookie). Afterwards only its first characters are shown.
"""

from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import DateField, SelectMultipleField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from tenants import api_tokens
from tenants.accounts import AccountError
from tenants.api_tokens import ApiToken, Scope
from tenants.campaigns import tenant_zone
from tenants.db import db
from webapp.forms import EmptyForm
from webapp.tenancy import member_required

bp = Blueprint("api_tokens", __name__)


class CheckboxesField(SelectMultipleField):
    """A multiple choice shown as one checkbox per choice."""

    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class ApiTokenForm(FlaskForm):
    name = StringField(
        "Name",
        validators=[DataRequired(), Length(max=80)],
        description="The system that will use it, such as “Shop CRM”.",
    )
    scopes = CheckboxesField(
        "Scopes",
        choices=[SelectChoice(scope.value, scope.label) for scope in Scope],
        validators=[DataRequired(message="Choose at least one scope.")],
    )
    expires_on = DateField(
        "Expires on (optional)",
        validators=[Optional()],
        description="The token stops working at the end of this day, in the workspace's time zone. "
        "Leave empty for a token that works until it is revoked.",
    )


def _page(form: ApiTokenForm, status: int = 200, created: tuple[ApiToken, str] | None = None):
    return render_template(
        "api_tokens/index.html",
        form=form,
        tokens=api_tokens.tokens(),
        created=created,
        revoke_form=EmptyForm(),
        zone=tenant_zone(g.workspace.tenant),
        api_base=request.url_root.rstrip("/") + "/api/v1",
    ), status


@bp.get("/settings/api-tokens")
@member_required(manage=True)
def index():
    return _page(ApiTokenForm(formdata=None))


@bp.post("/settings/api-tokens")
@member_required(manage=True)
def create():
    """Make a token and show its secret, this once."""
    form = ApiTokenForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    expires_at = (
        api_tokens.end_of_day(form.expires_on.data, tenant_zone(g.workspace.tenant))
        if form.expires_on.data
        else None
    )
    try:
        token, secret = api_tokens.issue(
            g.workspace.role, current_user, form.name.data, form.scopes.data, expires_at
        )
    except AccountError as exc:
        form.form_errors.append(str(exc))
        return _page(form, 400)
    db.session.commit()
    return _page(ApiTokenForm(formdata=None), 201, created=(token, secret))


@bp.post("/settings/api-tokens/<int:api_token_id>/revoke")
@member_required(manage=True)
def revoke(api_token_id: int):
    """Refuse every request with the token from now on (the form's CSRF token is checked app-wide)."""
    token = db.get_or_404(ApiToken, api_token_id)
    try:
        api_tokens.revoke(g.workspace.role, token)
    except AccountError as exc:
        flash(str(exc), "error")
    else:
        db.session.commit()
        flash(f"The token {token.name} is revoked: requests with it are refused from now on.", "success")
    return redirect(url_for("api_tokens.index"))
