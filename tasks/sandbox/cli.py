"""Command-line options of the sandbox, shared by ``python -m tasks.sandbox`` and :class:`SandboxProcess`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from tasks.sandbox.behaviour import SandboxConfig
from tasks.sandbox.server import run


def option_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def parser() -> argparse.ArgumentParser:
    """Options for the address, and one per :class:`SandboxConfig` setting."""
    parse = argparse.ArgumentParser(
        prog="python -m tasks.sandbox", description="Run Crier's sandbox provider."
    )
    parse.add_argument("--host", default="127.0.0.1")
    parse.add_argument("--port", type=int, default=8025, help="HTTP port (default 8025)")
    parse.add_argument("--smtp-port", type=int, default=8026, help="SMTP port (default 8026)")
    parse.add_argument("--no-smtp", action="store_true", help="do not start the SMTP sink")
    defaults = SandboxConfig()
    for setting in fields(SandboxConfig):
        default = getattr(defaults, setting.name)
        doc = f"{setting.metadata['doc']} (default {default})"
        name = option_name(setting.name)
        if isinstance(default, bool):
            parse.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=doc)
        elif isinstance(default, list):
            parse.add_argument(name, default=None, metavar="A,B", help=doc)
        else:
            choices = setting.metadata.get("choices")
            parse.add_argument(name, type=type(default), default=None, choices=choices, help=doc)
    return parse


def main(argv: Sequence[str] | None = None) -> None:
    arguments = vars(parser().parse_args(argv))
    host, port, smtp_port = arguments.pop("host"), arguments.pop("port"), arguments.pop("smtp_port")
    if arguments.pop("no_smtp"):
        smtp_port = None
    config: dict[str, Any] = {name: value for name, value in arguments.items() if value is not None}
    run(host, port, smtp_port, **config)
