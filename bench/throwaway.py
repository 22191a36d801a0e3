"""A throw-away PostgreSQL database for one benchmark run, and the environment that points Crier at it."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = os.environ.get("CRIER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def throwaway_database(kind: str) -> Iterator[str]:
    """Create ``crier_bench_<kind>_<hex>``, point ``DATABASE_URL`` (and a fresh Redis prefix, secret and
    instance folder) at it, yield its URL, and drop it afterwards whatever happened."""
    database = f"crier_bench_{kind}_{secrets.token_hex(4)}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')  # our own hex name
    os.environ.update(
        DATABASE_URL=url,
        REDIS_URL=os.environ.get("CRIER_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
        REDIS_PREFIX=f"crier-bench-{secrets.token_hex(4)}",
        SECRET_KEY=secrets.token_hex(32),
        CRIER_INSTANCE_PATH=tempfile.mkdtemp(prefix="crier-bench-"),
        CRIER_ENV="test",
    )
    try:
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
