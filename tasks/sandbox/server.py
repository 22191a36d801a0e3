"""Running the sandbox: the HTTP server and the SMTP sink on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from aiohttp import web

from tasks.runtime import calm_garbage_collector
from tasks.sandbox.app import Sandbox, build_app
from tasks.sandbox.behaviour import SandboxConfig
from tasks.sandbox.smtp import start_smtp

log = logging.getLogger("tasks.sandbox")

SHUTDOWN_GRACE_SECONDS = 1.0


async def serve(
    host: str = "127.0.0.1",
    port: int = 8025,
    smtp_port: int | None = 8026,
    config: SandboxConfig | None = None,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or the task is cancelled); ``smtp_port=None`` skips SMTP."""
    sandbox = Sandbox(config)
    runner = web.AppRunner(
        build_app(sandbox), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
    )
    await runner.setup()
    smtp_server: asyncio.Server | None = None
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        if smtp_port is not None:
            smtp_server = await start_smtp(sandbox, host, smtp_port)
        log.info(
            "Crier sandbox on http://%s:%d%s",
            host,
            port,
            f", SMTP on {host}:{smtp_port}" if smtp_port is not None else "",
        )
        await (stop or asyncio.Event()).wait()
    finally:
        if smtp_server is not None:
            smtp_server.close()
        await runner.cleanup()
        if smtp_server is not None:
            await smtp_server.wait_closed()


async def _serve_until_signalled(host: str, port: int, smtp_port: int | None, config: SandboxConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await serve(host, port, smtp_port, config, stop=stop)


def run(host: str = "127.0.0.1", port: int = 8025, smtp_port: int | None = 8026, **config: Any) -> None:
    """Run the sandbox until SIGINT/SIGTERM; ``config`` keys are those of :class:`SandboxConfig`."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SandboxConfig.from_mapping(config)
    calm_garbage_collector()  # its ledger grows by the message: full collections would stall it
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signalled(host, port, smtp_port, settings))
