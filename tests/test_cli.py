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


def test_demo_then_campaign_create_start_and_status(app, runner):
    import json

    setup = runner.invoke(
        args=["crier", "demo", "--contacts", "40", "--provider", "evolution", "--rate", "25", "--json"]
    )
    assert setup.exit_code == 0, setup.output
    demo = json.loads(setup.output)
    assert demo["contacts"] == 40 and demo["password"] and demo["email"] == "demo@crier.example"

    again = runner.invoke(args=["crier", "demo", "--contacts", "30", "--json"])
    assert (
        again.exit_code == 0 and json.loads(again.output)["tenant_id"] == demo["tenant_id"]
    )  # refreshed, not new

    created = runner.invoke(
        args=[
            "crier",
            "campaign",
            "create",
            "--tenant",
            demo["slug"],
            "--page",
            str(demo["page_id"]),
            "--list",
            str(demo["list_id"]),
            "--text",
            "Hi {{first_name}}",
        ]
    )
    assert created.exit_code == 0, created.output
    campaign_id = json.loads(created.output)["id"]

    started = runner.invoke(args=["crier", "campaign", "start", str(campaign_id)])
    assert started.exit_code == 0, started.output
    assert json.loads(started.output.splitlines()[-1])["state"] == "running"

    status = json.loads(runner.invoke(args=["crier", "campaign", "status", str(campaign_id)]).output)
    assert (status["state"], status["total"], status["pending"]) == ("running", 30, 30)

    refused = runner.invoke(args=["crier", "campaign", "start", str(campaign_id)])
    assert refused.exit_code != 0 and "cannot start a running campaign" in refused.output
    missing = runner.invoke(args=["crier", "campaign", "status", "999"])
    assert missing.exit_code != 0 and "No campaign 999" in missing.output
