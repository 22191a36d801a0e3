"""`flask crier …` commands."""

from sqlalchemy import select

from tenants.db import db
from tenants.models import User


def test_create_admin_creates_a_platform_admin(app, runner):
    result = runner.invoke(
        args=["crier", "create-admin", "Root@Crier.example", "--password", "a long admin password"]
    )
    assert result.exit_code == 0, result.output
    assert "Created platform admin root@crier.example." in result.output
    with app.app_context():
        user = db.session.scalar(select(User))
        assert user.is_platform_admin and user.password_hash.startswith("$argon2id$")


def test_create_admin_promotes_an_existing_user(app, auth, runner):
    auth.signup()
    result = runner.invoke(args=["crier", "create-admin", "owner@acme.example"])
    assert result.exit_code == 0 and "Promoted platform admin owner@acme.example." in result.output
    with app.app_context():
        assert db.session.scalar(select(User.is_platform_admin))


def test_create_admin_prompts_for_a_password_and_rejects_a_short_one(runner):
    result = runner.invoke(args=["crier", "create-admin", "root@crier.example"], input="short\nshort\n")
    assert result.exit_code != 0 and "at least 10 characters" in result.output
