"""Forms (Flask-WTF gives each one its CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from tenants.accounts import MIN_PASSWORD_LENGTH, country_codes, timezones
from tenants.models import Role

ROLE_CHOICES = [SelectChoice(role.value, role.value.capitalize()) for role in Role]


def _timezone_field() -> SelectField:
    return SelectField("Time zone", choices=lambda: timezones(), default="UTC")


def _new_password_field(label: str = "Password") -> PasswordField:
    return PasswordField(
        label,
        validators=[
            DataRequired(),
            Length(
                min=MIN_PASSWORD_LENGTH,
                max=1024,
                message=f"Passwords need at least {MIN_PASSWORD_LENGTH} characters.",
            ),
        ],
        description=f"At least {MIN_PASSWORD_LENGTH} characters.",
    )


class SignupForm(FlaskForm):
    workspace_name = StringField("Workspace name", validators=[DataRequired(), Length(max=120)])
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = _new_password_field()
    timezone = _timezone_field()


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class WorkspaceForm(FlaskForm):
    name = StringField("Workspace name", validators=[DataRequired(), Length(max=120)])
    timezone = _timezone_field()


class WorkspaceSettingsForm(WorkspaceForm):
    default_country = SelectField(
        "Country of national phone numbers",
        choices=lambda: [
            SelectChoice("", "None: numbers must be international"),
            *(SelectChoice(code, label) for code, label in country_codes()),
        ],
        default="",
        description="Imports and forms read numbers without a country code as this country's.",
    )


class InviteForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    role = SelectField("Role", choices=ROLE_CHOICES, default=Role.MEMBER.value)


class InvitedSignupForm(FlaskForm):
    """Sign-up from an invitation: the address is the invitation's, and no workspace is created."""

    password = _new_password_field()


class ChangePasswordForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[DataRequired(), Length(max=1024)])
    new_password = _new_password_field("New password")


class ForgotPasswordForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])


class NewPasswordForm(FlaskForm):
    password = _new_password_field("New password")


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=ROLE_CHOICES)


class EmptyForm(FlaskForm):
    """A button-only form: just the CSRF token."""
