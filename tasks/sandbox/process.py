"""The sandbox in a child process (``python -m tasks.sandbox``), for tests, benchmarks and dev runners."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from tasks.sandbox.cli import option_name

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out for ``host`` (free unless someone grabs it first)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def config_arguments(config: dict[str, Any]) -> list[str]:
    """Command-line options for :class:`~tasks.sandbox.behaviour.SandboxConfig` settings."""
    arguments = []
    for name, value in config.items():
        if isinstance(value, bool):
            arguments.append(option_name(name) if value else option_name(name).replace("--", "--no-", 1))
        elif isinstance(value, list | tuple):
            arguments += [option_name(name), ",".join(value)]
        else:
            arguments += [option_name(name), str(value)]
    return arguments


class SandboxProcess:
    """A sandbox child process on free (or given) ports; a context manager.

    ``cpu`` pins it to one core with ``taskset`` when available; ``log`` receives its
    output (a temporary file by default, shown if it fails to start).
    """

    def __init__(
        self,
        port: int | None = None,
        smtp_port: int | None = None,
        *,
        host: str = "127.0.0.1",
        cpu: int | None = None,
        log: Path | None = None,
        **config: Any,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.smtp_port = smtp_port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.cpu = cpu
        self.config = config
        self.log_path = log
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "tasks.sandbox", "--host", self.host, "--port", str(self.port)]
        command += ["--smtp-port", str(self.smtp_port), *config_arguments(self.config)]
        taskset = shutil.which("taskset")
        if self.cpu is not None and taskset:
            command = [taskset, "-c", str(self.cpu), *command]
        return command

    def start(self, timeout: float = 30.0) -> Self:
        if self.log_path is None:
            self._log = tempfile.NamedTemporaryFile(prefix="crier-sandbox-", suffix=".log")  # noqa: SIM115
            self.log_path = Path(self._log.name)
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                self.command(), cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sandbox did not start:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_sandbox/health", timeout=1) as response:  # noqa: S310
                return response.status == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
