"""Adapter tests talk to local servers only; they never touch the database."""

from collections.abc import Iterator

import pytest


@pytest.fixture(name="_clean_database", autouse=True)
def no_database_cleanup() -> Iterator[None]:
    """Replaces the suite's per-test TRUNCATE, which these tests do not need."""
    yield
