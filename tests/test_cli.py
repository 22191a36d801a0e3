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


# --------------------------------------------------------------------------- tenants and plans

FIVE_LIMITS = [
    "--daily-quota",
    "20000",
    "--rate",
    "50",
    "--pages",
    "4",
    "--recipients",
    "5000",
    "--contacts",
    "9000",
]


def _workspace(app, slug: str):
    from tenants.models import Tenant
    from tenants.scoping import all_tenants

    with app.app_context(), all_tenants(db.session):
        row = db.session.scalar(select(Tenant).where(Tenant.slug == slug))
        db.session.expunge(row)
        return row


def test_tenant_set_quota_changes_the_limit_and_leaves_an_audit_entry_by_the_cli(app, auth, runner):
    from tenants.audit import entries
    from tenants.scoping import all_tenants

    auth.signup()
    assert runner.invoke(args=["crier", "plan", "set", "Growth", *FIVE_LIMITS]).exit_code == 0
    assert runner.invoke(args=["crier", "tenant", "set-plan", "acme", "Growth"]).exit_code == 0

    result = runner.invoke(
        args=["crier", "tenant", "set-quota", "acme", "--daily-quota", "50,000", "--pages", "7"]
    )

    assert result.exit_code == 0, result.output
    assert result.output == "Acme (acme): daily message quota 20,000 → 50,000, max pages 4 → 7.\n"
    acme = _workspace(app, "acme")
    assert (acme.daily_message_quota, acme.max_pages, acme.limit_overrides) == (
        50_000,
        7,
        {"daily_message_quota": 50_000, "max_pages": 7},
    )
    with app.app_context(), all_tenants(db.session):
        (entry,) = entries(acme.id, action="tenant.limits_changed")
        assert (entry.actor, entry.actor_user_id, entry.ip) == ("cli", None, None)
        assert entry.after == {"daily_message_quota": 50_000, "max_pages": 7}

    back = runner.invoke(args=["crier", "tenant", "set-quota", "acme", "--pages", "plan"])
    assert back.exit_code == 0 and "max pages 7 → 4" in back.output
    assert _workspace(app, "acme").limit_overrides == {"daily_message_quota": 50_000}


def test_tenant_commands_refuse_an_unknown_workspace_or_plan_and_a_bad_number(auth, runner):
    auth.signup()
    for args, message in [
        (["tenant", "show", "nobody"], "No workspace 'nobody'."),
        (["tenant", "set-quota", "nobody", "--rate", "5"], "No workspace 'nobody'."),
        (["tenant", "suspend", "nobody", "--reason", "spam"], "No workspace 'nobody'."),
        (["tenant", "set-plan", "acme", "Gold"], "No plan 'Gold'."),
        (["tenant", "set-quota", "acme", "--rate", "fast"], "Send rate: 'fast' is not a whole number."),
        (["tenant", "set-quota", "acme", "--daily-quota", "-1"], "Daily message quota must be between 0"),
        (["tenant", "set-quota", "acme"], "Give at least one limit"),
        (["tenant", "list", "--plan", "Gold"], "No plan 'Gold'."),
        (["plan", "set", "Tiny", "--daily-quota", "10"], "Missing: Send rate, Pages"),
    ]:
        result = runner.invoke(args=["crier", *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)


def test_tenant_list_and_show(app, auth, other_client, runner):
    import json

    from tests.conftest import Auth

    auth.signup(workspace="Acme")
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo", timezone="Asia/Tokyo")
    runner.invoke(args=["crier", "tenant", "suspend", "bravo", "--reason", "Chargeback"])

    listed = runner.invoke(args=["crier", "tenant", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].startswith("acme") and "active" in lines[0] and "today 0/" in lines[0]
    assert lines[1].startswith("bravo") and "suspended" in lines[1]
    assert lines[-1] == "2 workspaces match of 2 (1 suspended)."
    only = json.loads(
        runner.invoke(args=["crier", "tenant", "list", "--status", "suspended", "--json"]).output
    )
    assert [t["slug"] for t in only["tenants"]] == ["bravo"] and only["has_more"] is False

    shown = json.loads(runner.invoke(args=["crier", "tenant", "show", "bravo", "--json"]).output)
    assert (shown["status"], shown["suspended_reason"], shown["timezone"]) == (
        "suspended",
        "Chargeback",
        "Asia/Tokyo",
    )
    assert shown["today"]["used"] == 0 and shown["today"]["quota"] == shown["limits"]["daily_message_quota"]
    text = runner.invoke(args=["crier", "tenant", "show", "bravo"]).output
    assert text.startswith("Bravo (bravo): suspended since ") and "Chargeback" in text
    assert "Daily message quota" in text and "Today (" in text


def test_suspend_and_reactivate_from_the_cli(app, auth, client, runner):
    auth.signup()
    assert runner.invoke(args=["crier", "tenant", "suspend", "acme"]).exit_code != 0  # --reason is required

    suspended = runner.invoke(args=["crier", "tenant", "suspend", "acme", "--reason", "Unpaid invoice"])

    assert suspended.output == "Suspended Acme (acme); 0 running campaigns paused.\n"
    assert client.get("/dashboard").headers["Location"].endswith("/workspaces/suspended")
    again = runner.invoke(args=["crier", "tenant", "suspend", "acme", "--reason", "twice"])
    assert again.exit_code != 0 and "Acme is already suspended." in again.output

    reactivated = runner.invoke(args=["crier", "tenant", "reactivate", "acme"])
    assert reactivated.output == "Reactivated Acme (acme); 0 campaigns resumed.\n"
    assert client.get("/dashboard").status_code == 200
    assert _workspace(app, "acme").suspended_reason is None


def test_plan_set_creates_then_changes_a_plan_its_workspaces_follow(app, auth, runner):
    import json

    auth.signup()
    created = runner.invoke(args=["crier", "plan", "set", "Growth", *FIVE_LIMITS, "--default"])
    assert created.output == "Created plan Growth, the default for new workspaces.\n"
    runner.invoke(args=["crier", "tenant", "set-plan", "acme", "Growth"])

    changed = runner.invoke(args=["crier", "plan", "set", "Growth", "--rate", "75"])

    assert changed.output == "Changed plan Growth; 1 workspace follows its new limits.\n"
    acme = _workspace(app, "acme")
    assert (acme.max_send_rate, acme.daily_message_quota) == (75, 20_000)  # the other limits stay
    plans = {p["name"]: p for p in json.loads(runner.invoke(args=["crier", "plan", "list", "--json"]).output)}
    assert (
        plans["Growth"]["tenants"] == 1
        and plans["Growth"]["default"]
        and plans["Growth"]["max_send_rate"] == 75
    )
    listed = runner.invoke(args=["crier", "plan", "list"]).output
    assert any(
        line.startswith("Growth") and "1 workspace" in line and "(default)" in line
        for line in listed.splitlines()
    )
