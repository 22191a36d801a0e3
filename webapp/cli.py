"""`flask crier …`: Crier's administrative commands."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from tenants.accounts import AccountError, find_user, make_platform_admin
from tenants.audit import Actor, acting_as
from tenants.db import db
from tenants.models import Tenant, TenantStatus
from tenants.plans import LIMIT_SPECS, Plan, PlanError, plan_named
from tenants.platform import (
    NO_PLAN,
    SORTS,
    DirectoryError,
    describe_changes,
    plans_with_tenant_counts,
    tenant_by_slug,
    tenant_directory,
    tenant_facts,
)
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


def _last_sandbox_mails(url: str, login: str | None, count: int, window: int = 5000) -> list[dict]:
    """The last ``count`` SMTP entries of ``login`` in the sandbox's ledger, oldest first, read backwards
    a window at a time (campaign messages may fill the ledger around them)."""
    import httpx

    ledger = httpx.get(f"{url}/_sandbox/stats", timeout=5).json()["ledger"]
    first, end = ledger["first_seq"], ledger["last_seq"]
    found: list[dict] = []
    while end >= first and len(found) < count:
        start = max(first, end - window + 1)
        page = httpx.get(
            f"{url}/_sandbox/ledger", params={"after": start - 1, "limit": end - start + 1}, timeout=5
        ).json()
        mails = [e for e in page["entries"] if e["kind"] == "smtp" and login in (None, e["account"])]
        found = mails + found
        end = start - 1
    return found[-count:]


@crier_cli.command("mail")
@click.option("--last", default=10, show_default=True, type=click.IntRange(min=1), help="How many messages.")
@click.option("--sandbox-url", default=None, help="The sandbox to read (default: CRIER_SANDBOX_URL).")
def mail(last: int, sandbox_url: str | None) -> None:
    """The last emails Crier sent to the sandbox's SMTP sink: to whom, the subject, and the links to open."""
    import httpx

    from tenants.mail import MailConfigError, mail_server

    config = current_app.config
    try:
        server = mail_server(config)
    except MailConfigError as exc:
        raise click.ClickException(str(exc)) from None
    url = (sandbox_url or config["SANDBOX_URL"]).rstrip("/")
    login = server.username if server else None
    try:
        mails = _last_sandbox_mails(url, login, last)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise click.ClickException(f"Could not read the sandbox at {url}: {exc}") from None
    if not mails:
        click.echo(f"No mail in the sandbox at {url} yet.")
        return
    for entry in mails:
        subject, _, text = entry["body"].partition("\n")
        sent = datetime.fromtimestamp(entry["at"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        click.echo(f"{sent}  to {entry['recipient']}: {subject}")
        for link in re.findall(r"https?://[^\s<>\"]+", text):
            click.echo(f"    {link}")


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


# --------------------------------------------------------------------------- tenants and plans

tenant_cli = AppGroup("tenant", help="Workspaces (tenants): list, inspect, change plan and limits, suspend.")
plan_cli = AppGroup("plan", help="Plans: the limits workspaces are put on.")
crier_cli.add_command(tenant_cli)
crier_cli.add_command(plan_cli)

LIMIT_OPTIONS = (  # option, the limit it sets
    ("daily-quota", "daily_message_quota"),
    ("rate", "max_send_rate"),
    ("pages", "max_pages"),
    ("recipients", "max_recipients_per_campaign"),
    ("contacts", "max_contacts"),
)


@contextmanager
def _as_cli() -> Iterator[None]:
    """Platform work by the CLI: across tenants, audited as "cli"; a PlanError becomes a clean exit."""
    with acting_as(Actor(None, "cli")), all_tenants(db.session):
        try:
            yield
        except (PlanError, DirectoryError) as exc:
            db.session.rollback()
            raise click.ClickException(str(exc)) from None


def _limit_options(help_suffix: str) -> Callable:
    """The five limit options, each passed to the command under its limit's key."""

    def decorate(command: Callable) -> Callable:
        for option, key in reversed(LIMIT_OPTIONS):
            spec = LIMIT_SPECS[key]
            command = click.option(
                f"--{option}",
                key,
                default=None,
                metavar="N",
                help=f"{spec.label} ({spec.unit}){help_suffix}.",
            )(command)
        return command

    return decorate


def _workspace(slug: str) -> Tenant:
    found = tenant_by_slug(slug)
    if found is None:
        raise click.ClickException(f"No workspace {slug!r}.")
    return found


def _plan_named(name: str) -> Plan:
    plan = plan_named(name)
    if plan is None:
        raise click.ClickException(f"No plan {name!r}. `flask crier plan list` shows them.")
    return plan


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


@tenant_cli.command("list")
@click.option("--search", default="", help="Part of a name, slug or member's email.")
@click.option("--status", type=click.Choice([s.value for s in TenantStatus]), default=None)
@click.option("--plan", "plan_name", default=None, help="Only workspaces on this plan ('custom': on none).")
@click.option("--sort", type=click.Choice(list(SORTS)), default="name", show_default=True)
@click.option("--desc", "descending", is_flag=True, help="Largest (or last) first.")
@click.option(
    "--page", default=1, type=click.IntRange(min=1), show_default=True, help="50 workspaces a page."
)
@click.option("--json", "as_json", is_flag=True)
def tenant_list(
    search: str,
    status: str | None,
    plan_name: str | None,
    sort: str,
    descending: bool,
    page: int,
    as_json: bool,
) -> None:
    """Workspaces with their status, plan, today's and the last 30 days' sends."""
    with _as_cli():
        plan_id = None
        if plan_name is not None:
            plan_id = NO_PLAN if plan_name.strip().lower() == "custom" else _plan_named(plan_name).id
        found = tenant_directory(search, status, plan_id, sort, descending, page)
    if as_json:
        rows = [
            {
                "id": row.id,
                "slug": row.slug,
                "name": row.name,
                "status": row.status.value,
                "plan": row.plan_name,
                "overridden": list(row.overridden),
                "sent_today": row.sent_today,
                "daily_message_quota": row.daily_quota,
                "sent_30_days": row.sent_30_days,
                "pages": row.pages,
                "contacts": row.contacts,
                "running_campaigns": row.running_campaigns,
                "created_at": row.created_at.isoformat(),
            }
            for row in found.rows
        ]
        summary = {"matching": found.matching, "total": found.total, "suspended": found.suspended}
        click.echo(json.dumps({"tenants": rows, "page": found.page, "has_more": found.has_more, **summary}))
        return
    for row in found.rows:
        click.echo(
            f"{row.slug:<28} {row.status.value:<9} {row.plan_name or 'custom':<14} "
            f"today {row.sent_today:,}/{row.daily_quota:,}  30 days {row.sent_30_days:,}  {row.name}"
        )
    more = f"; more with --page {page + 1}" if found.has_more else ""
    click.echo(
        f"{_plural(found.matching, 'workspace')} match of {found.total:,} "
        f"({found.suspended:,} suspended){more}."
    )


@tenant_cli.command("show")
@click.argument("slug")
@click.option("--json", "as_json", is_flag=True)
def tenant_show(slug: str, as_json: bool) -> None:
    """A workspace's status, plan, limits (with the plan's and the overrides) and today's use."""
    with _as_cli():
        facts = tenant_facts(_workspace(slug).id)
    workspace, used = facts.tenant, facts.today
    if as_json:
        data = {
            "id": workspace.id,
            "slug": workspace.slug,
            "name": workspace.name,
            "status": workspace.status.value,
            "suspended_reason": workspace.suspended_reason,
            "suspended_at": workspace.suspended_at.isoformat() if workspace.suspended_at else None,
            "timezone": workspace.timezone,
            "plan": facts.plan.name if facts.plan else None,
            "limits": {row.key: row.effective for row in facts.limits},
            "plan_limits": {row.key: row.plan_value for row in facts.limits} if facts.plan else None,
            "overrides": {row.key: row.override for row in facts.limits if row.override is not None},
            "today": {"day": used.day.isoformat(), "used": used.used, "quota": used.quota, "left": used.left},
        }
        click.echo(json.dumps(data))
        return
    status = workspace.status.value
    if not workspace.is_active:
        status += f" since {workspace.suspended_at:%Y-%m-%d %H:%M} UTC: {workspace.suspended_reason}"
    plan = facts.plan.name if facts.plan else "custom (no plan)"
    click.echo(f"{workspace.name} ({workspace.slug}): {status}; plan {plan}; time zone {workspace.timezone}")
    for row in facts.limits:
        source = "plan" if row.override is None else "override"
        if row.override is not None and row.plan_value is not None:
            source += f"; the plan's is {row.plan_value:,}"
        click.echo(f"  {row.label:<24} {row.effective:>12,}  ({source})")
    click.echo(f"  Today ({used.day.isoformat()}): {used.used:,} of {used.quota:,} used, {used.left:,} left")


@tenant_cli.command("set-plan")
@click.argument("slug")
@click.argument("plan_name")
def tenant_set_plan(slug: str, plan_name: str) -> None:
    """Put a workspace on a plan (its overrides stay)."""
    from tasks import lifecycle

    with _as_cli():
        workspace, plan = _workspace(slug), _plan_named(plan_name)
        changes = lifecycle.change_plan(workspace, plan)
        click.echo(
            f"{workspace.name} ({workspace.slug}) is on {plan.name} now"
            + (f": {describe_changes(changes)}." if changes else "; the limits that apply did not change.")
        )


@tenant_cli.command("set-quota")
@click.argument("slug")
@_limit_options(", or 'plan' to use the plan's again")
def tenant_set_quota(slug: str, **limits: str | None) -> None:
    """Override a workspace's limits (the word `plan` drops an override)."""
    from tasks import lifecycle

    values = {key: value for key, value in limits.items() if value is not None}
    if not values:
        raise click.ClickException(
            "Give at least one limit: --daily-quota, --rate, --pages, --recipients or --contacts."
        )
    with _as_cli():
        workspace = _workspace(slug)
        changes = lifecycle.change_limits(workspace, values)
        click.echo(
            f"{workspace.name} ({workspace.slug}): "
            + (
                f"{describe_changes(changes)}."
                if changes
                else "limits saved; the limits that apply did not change."
            )
        )


@tenant_cli.command("suspend")
@click.argument("slug")
@click.option("--reason", required=True, help="Why; the workspace's members see it.")
def tenant_suspend(slug: str, reason: str) -> None:
    """Suspend a workspace: running campaigns pause at once, scheduled ones wait."""
    from tasks import lifecycle

    with _as_cli():
        workspace = _workspace(slug)
        paused = lifecycle.suspend_tenant(workspace, reason)
        paused_text = _plural(len(paused), "running campaign")
        click.echo(f"Suspended {workspace.name} ({workspace.slug}); {paused_text} paused.")


@tenant_cli.command("reactivate")
@click.argument("slug")
def tenant_reactivate(slug: str) -> None:
    """Reactivate a suspended workspace: the campaigns its suspension paused resume."""
    from tasks import lifecycle

    with _as_cli():
        workspace = _workspace(slug)
        resumed = lifecycle.reactivate_tenant(workspace)
        click.echo(
            f"Reactivated {workspace.name} ({workspace.slug}); {_plural(len(resumed), 'campaign')} resumed."
        )


@plan_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def plan_list(as_json: bool) -> None:
    """Every plan with its limits and the number of workspaces on it."""
    with _as_cli():
        plans = plans_with_tenant_counts()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": plan.id,
                        "name": plan.name,
                        "default": plan.is_default,
                        **plan.limits(),
                        "tenants": count,
                    }
                    for plan, count in plans
                ]
            )
        )
        return
    if not plans:
        click.echo("No plans: every workspace keeps its own limits.")
    for plan, count in plans:
        click.echo(
            f"{plan.name:<16} quota {plan.daily_message_quota:,}/day  rate {plan.max_send_rate:,}/s  "
            f"pages {plan.max_pages:,}  recipients {plan.max_recipients_per_campaign:,}  "
            f"contacts {plan.max_contacts:,}  {_plural(count, 'workspace')}"
            + ("  (default)" if plan.is_default else "")
        )


@plan_cli.command("set")
@click.argument("name")
@_limit_options("; a new plan needs all five")
@click.option("--default", "is_default", is_flag=True, help="New workspaces start on this plan.")
def plan_set(name: str, is_default: bool, **limits: str | None) -> None:
    """Create plan NAME, or change its limits; workspaces on it follow at once."""
    from tasks import lifecycle

    given = {key: value for key, value in limits.items() if value is not None}
    with _as_cli():
        plan = plan_named(name)
        creating = plan is None
        values = given if creating else {**plan.limits(), **given}
        changed = lifecycle.save_plan(plan or Plan(), name, values, is_default)
        if creating:
            click.echo(
                f"Created plan {name.strip()}" + (", the default for new workspaces." if is_default else ".")
            )
        else:
            follow = "1 workspace follows" if len(changed) == 1 else f"{len(changed):,} workspaces follow"
            click.echo(f"Changed plan {plan.name}; {follow} its new limits.")
