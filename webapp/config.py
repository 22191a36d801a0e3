"""Configuration from the environment, with embedded defaults for a newcomer's machine."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

EMBEDDED_REDIS_PORT = 6390


def database_url(raw: str | None, instance: Path) -> str:
    """SQLAlchemy URL for ``DATABASE_URL``: PostgreSQL through psycopg 3, or SQLite in ``instance/``."""
    if not raw:
        return f"sqlite:///{instance / 'crier.db'}"
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw.removeprefix(prefix)
    return raw


def instance_secret(instance: Path, name: str, make: Any = lambda: secrets.token_hex(32)) -> str:
    """A secret generated once and kept in ``instance/`` (mode 0600), never in the source."""
    path = instance / name
    if not path.exists():
        instance.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def _encryption_keys(env: Mapping[str, str], instance: Path) -> list[bytes]:
    """Fernet keys, newest first: ``CRIER_ENCRYPTION_KEYS`` (comma-separated) or one kept in ``instance/``."""
    raw = env.get("CRIER_ENCRYPTION_KEYS") or instance_secret(
        instance, "encryption_key", lambda: Fernet.generate_key().decode()
    )
    return [key.strip().encode() for key in raw.split(",") if key.strip()]


def settings(instance: Path, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Every setting Crier reads, from ``env``; see the README's configuration table."""
    crier_env = env.get("CRIER_ENV", "development")
    production = crier_env == "production"
    redis_url = env.get("REDIS_URL")
    embedded_port = int(env.get("CRIER_EMBEDDED_REDIS_PORT", EMBEDDED_REDIS_PORT))
    return {
        "CRIER_ENV": crier_env,
        "SECRET_KEY": env.get("SECRET_KEY") or instance_secret(instance, "secret_key"),
        "ENCRYPTION_KEYS": _encryption_keys(env, instance),
        "SANDBOX_URL": env.get("CRIER_SANDBOX_URL", "http://127.0.0.1:8025"),
        "SANDBOX_SMTP_PORT": int(env.get("CRIER_SANDBOX_SMTP_PORT", "8026")),
        "PUBLIC_URL": env.get("CRIER_PUBLIC_URL", ""),
        # Crier's own mail (tenants/mail.py): without a URL, the sandbox's sink outside production
        "MAIL_URL": env.get("CRIER_MAIL_URL", ""),
        "MAIL_FROM": env.get("CRIER_MAIL_FROM", "Crier <crier@localhost>"),
        "MAIL_TIMEOUT": float(env.get("CRIER_MAIL_TIMEOUT", "5")),
        "SQLALCHEMY_DATABASE_URI": database_url(env.get("DATABASE_URL"), instance),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "REDIS_URL": redis_url or f"redis://127.0.0.1:{embedded_port}/0",
        "EMBEDDED_REDIS": not redis_url,
        "EMBEDDED_REDIS_PORT": embedded_port,
        "REDIS_PREFIX": env.get("REDIS_PREFIX", "crier"),
        "TRUST_PROXY_HOPS": int(env.get("TRUST_PROXY_HOPS", "0")),
        # log lines (tasks/logs.py): "json" in production (gunicorn.conf.py sets it), "text" to read
        "LOG_FORMAT": env.get("CRIER_LOG_FORMAT", "text"),
        "LOG_LEVEL": env.get("CRIER_LOG_LEVEL", "INFO").upper(),
        # Prometheus (tasks/metrics.py): every process of this host writes its counts here; /metrics
        # answers loopback requests only, or any request bearing the token when one is set
        "METRICS_DIR": Path(env.get("CRIER_METRICS_DIR") or instance / "metrics"),
        "METRICS_TOKEN": env.get("CRIER_METRICS_TOKEN", ""),
        # the campaign engine (see tasks/dispatch/ and tasks/sweeper.py)
        "DISPATCH_SLICE_SECONDS": float(env.get("CRIER_DISPATCH_SLICE_SECONDS", "2")),
        "DISPATCH_WINDOW": int(env.get("CRIER_DISPATCH_WINDOW", "250")),
        "DISPATCH_CHAINS": int(env.get("CRIER_DISPATCH_CHAINS", "2")),
        "LEASE_SECONDS": float(env.get("CRIER_LEASE_SECONDS", "60")),
        "RETRY_BASE_SECONDS": float(env.get("CRIER_RETRY_BASE_SECONDS", "2")),
        "SWEEP_SECONDS": float(env.get("CRIER_SWEEP_SECONDS", "5")),
        "STALE_DISPATCH_SECONDS": float(env.get("CRIER_STALE_DISPATCH_SECONDS", "20")),
        "STOP_KEYWORDS": env.get(
            "CRIER_STOP_KEYWORDS", "STOP,STOPALL,UNSUBSCRIBE,CANCEL,END,QUIT,OPTOUT,OPT OUT,PARAR,SAIR,BAJA"
        ),
        "EXTRA_ALLOWED_HOSTS": [
            h.strip() for h in env.get("CRIER_ALLOWED_PRIVATE_HOSTS", "").split(",") if h.strip()
        ],
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": production,
        "MAX_IMPORT_BYTES": int(env.get("MAX_IMPORT_BYTES", 50 * 1024 * 1024)),
        # a request may carry a whole import file plus its form; larger uploads get the import's own message
        "MAX_CONTENT_LENGTH": int(env.get("MAX_IMPORT_BYTES", 50 * 1024 * 1024)) + 1024 * 1024,
        "WTF_CSRF_TIME_LIMIT": None,
        "API_REQUESTS_PER_MINUTE": int(env.get("API_REQUESTS_PER_MINUTE", 600)),  # per API token
        "NODE_MODULES": Path(
            env.get("CRIER_NODE_MODULES", Path(__file__).resolve().parent.parent / "node_modules")
        ),
    }
