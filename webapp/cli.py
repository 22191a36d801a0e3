"""`flask crier …`: Crier's administrative commands."""

from __future__ import annotations

import click
from flask.cli import AppGroup

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
