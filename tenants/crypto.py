"""Encryption at rest for provider credentials (Fernet; several keys allow rotation)."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app


class CredentialsUnreadable(RuntimeError):
    """Stored credentials could not be decrypted with any configured key."""


def _cipher() -> MultiFernet:
    keys = current_app.config["ENCRYPTION_KEYS"]
    return MultiFernet([Fernet(key) for key in keys])


def seal(values: dict[str, str]) -> bytes:
    """Encrypt a credentials mapping with the current (first) key."""
    return _cipher().encrypt(json.dumps(values, sort_keys=True).encode())


def unseal(token: bytes) -> dict[str, str]:
    """Decrypt a credentials mapping sealed with any configured key."""
    try:
        return json.loads(_cipher().decrypt(token))
    except InvalidToken:
        raise CredentialsUnreadable(
            "stored credentials cannot be decrypted with the configured keys"
        ) from None


def hint(secret: str) -> str:
    """What the UI may show of a secret: never more than its last four characters."""
    if not secret:
        return ""
    return "••••" + secret[-4:] if len(secret) >= 12 else "••••"
