"""`flask crier …`: Crier's administrative commands."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from tenants.accounts import AccountError, find_user, make_platform_admin
from tenants.db import db
from tenants.scoping import all_tenants

crier_cli = AppGroup("crier", help="Crier administration.")


@crier_cli.command("create-admin")
@click.argument("email")
@click.option(
    "--password", envvar="CRIER_ADMIN_PASSWORD", help="Password for a new account (prompted if absent)."
)
def create_admin(email: str, password: str | None) -> None:
    """Make EMAIL a platform admin, creating the account if needed."""
    with all_tenants(db.session):
        try:
            if password is None and find_user(email) is None:
                password = click.prompt(
                    "Password for the new admin", hide_input=True, confirmation_prompt=True
                )
            user, created = make_platform_admin(email, password)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{'Created' if created else 'Promoted'} platform admin {user.email}.")


@crier_cli.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Dramatiq worker processes.")
def dev(host: str, port: int, workers: int) -> None:
    """Migrate, then run the web server, worker(s) and (without REDIS_URL) an embedded Redis."""
    from webapp.devserver import run_everything

    run_everything(host, port, workers)


@crier_cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Run only the web server (with Socket.IO)."""
    from flask import current_app

    from webapp.devserver import serve_web

    serve_web(current_app._get_current_object(), host, port)


@crier_cli.command(
    "sandbox",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def sandbox(options: tuple[str, ...]) -> None:
    """Run the sandbox provider until Ctrl-C (`flask crier sandbox --help` lists every option)."""
    from tasks.sandbox.cli import main

    main(list(options))


@crier_cli.command("demo")
@click.option(
    "--contacts", default=1000, show_default=True, type=int, help="Generated contacts in the demo list."
)
@click.option(
    "--provider",
    default="whatsapp",
    show_default=True,
    type=click.Choice(["whatsapp", "messenger", "evolution", "smtp", "webhook"]),
)
@click.option("--page-url", default=None, help="Send to this provider URL instead of the built-in sandbox.")
@click.option("--rate", default=None, type=float, help="The page's send rate, messages per second.")
@click.option("--json", "as_json", is_flag=True, help="Print what was set up as JSON.")
def demo(contacts: int, provider: str, page_url: str | None, rate: float | None, as_json: bool) -> None:
    """Create or refresh the demo workspace: its login, one page and a list of generated contacts."""
    from tenants.demo import refresh_demo
    from tenants.pages import PageError, ProviderKind

    config = current_app.config
    try:
        setup = refresh_demo(
            config["SANDBOX_URL"],
            config["SANDBOX_SMTP_PORT"],
            contacts,
            ProviderKind(provider),
            page_url,
            rate,
        )
    except PageError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(setup.__dict__))
        return
    click.echo(f"Demo workspace {setup.slug}: sign in as {setup.email} with password {setup.password}")
    click.echo(f"Page {setup.page_id} ({provider}), list {setup.list_id} with {setup.contacts:,} contacts.")


campaign_cli = AppGroup("campaign", help="Create, start and inspect campaigns.")
crier_cli.add_command(campaign_cli)


def _campaign_tenant(campaign_id: int) -> int:
    from tenants.campaigns import Campaign

    with all_tenants(db.session):
        tenant_id = db.session.scalar(select(Campaign.tenant_id).where(Campaign.id == campaign_id))
    if tenant_id is None:
        raise click.ClickException(f"No campaign {campaign_id}.")
    return tenant_id


def _echo_summary(campaign_id: int) -> None:
    from tenants.campaigns import Campaign, summary

    click.echo(json.dumps(summary(db.session.get(Campaign, campaign_id))))


@campaign_cli.command("create")
@click.option("--tenant", "slug", required=True, help="The workspace's slug.")
@click.option("--page", "page_id", required=True, type=int)
@click.option("--list", "list_ids", required=True, type=int, multiple=True)
@click.option("--text", required=True, help="The message, with {{variables}}.")
@click.option("--name", default=None)
@click.option("--rate", default=None, type=float, help="Messages per second, below the page's rate.")
def campaign_create(
    slug: str, page_id: int, list_ids: tuple[int, ...], text: str, name: str | None, rate
) -> None:
    """Create a draft campaign; prints its id as JSON."""
    from tenants.campaigns import Campaign, CampaignError, apply_campaign_form
    from tenants.models import Tenant
    from tenants.scoping import tenant

    with all_tenants(db.session):
        workspace = db.session.scalar(select(Tenant).where(Tenant.slug == slug))
    if workspace is None:
        raise click.ClickException(f"No workspace {slug!r}.")
    with tenant(db.session, workspace.id):
        campaign = Campaign()
        fields = {
            "name": name or f"Campaign to list {', '.join(map(str, list_ids))}",
            "page_id": page_id,
            "list_ids": list(list_ids),
            "body": text,
            "schedule": "manual",
            "send_rate": "" if rate is None else str(rate),
        }
        try:
            apply_campaign_form(campaign, fields, workspace)
        except CampaignError as exc:
            raise click.ClickException(str(exc)) from None
        db.session.add(campaign)
        db.session.commit()
        click.echo(json.dumps({"id": campaign.id}))


@campaign_cli.command("start")
@click.argument("campaign_id", type=int)
def campaign_start(campaign_id: int) -> None:
    """Start a draft now; prints its status as JSON."""
    from tasks import lifecycle
    from tenants.campaigns import Campaign, CampaignError
    from tenants.scoping import tenant

    with tenant(db.session, _campaign_tenant(campaign_id)):
        campaign = db.session.get(Campaign, campaign_id)
        try:
            started = lifecycle.start_campaign(campaign)
        except CampaignError as exc:
            raise click.ClickException(str(exc)) from None
        if started.problem:
            click.echo(f"Started; {started.problem} (the sweeper launches it when they are back).", err=True)
        _echo_summary(campaign_id)


@campaign_cli.command("status")
@click.argument("campaign_id", type=int)
def campaign_status(campaign_id: int) -> None:
    """The campaign's state and counters as JSON."""
    from tenants.scoping import tenant

    with tenant(db.session, _campaign_tenant(campaign_id)):
        _echo_summary(campaign_id)
