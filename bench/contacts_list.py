"""How fast the contacts page answers with 1,000,000 contacts in the tenant (target: < 100 ms).

    .venv/bin/python bench/contacts_list.py [--contacts 1000000]

Creates a throw-away PostgreSQL database on 127.0.0.1 (user postgres), migrates it, fills one
tenant with N contacts set-based (plus 1,000 contacts in another tenant), signs a user in,
and times GET /contacts for the first page, a deep page (keyset cursor half-way down), a
list filter and a search, through the whole Flask stack. Prints a table; drops the database.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN_URL = os.environ.get("CRIER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


FILL_TENANT = """
INSERT INTO contacts (tenant_id, phone, email, first_name, last_name, company, custom_fields, opted_out,
                      created_at, updated_at)
SELECT 1, '+1415' || lpad(n::text, 7, '0'), 'user' || n || '@example.com',
       (ARRAY['Ana', 'João', 'Zoë', 'Li', 'Omar'])[1 + n % 5], (ARRAY['Silva', 'Müller', 'Zhang'])[1 + n % 3],
       'Company ' || (n % 97), jsonb_build_object('city', (ARRAY['Berlin', 'Lisbon', 'Austin'])[1 + n % 3]),
       n % 50 = 0, now(), now()
FROM generate_series(1, {count}) AS n
"""
FILL_OTHER_TENANT = """
INSERT INTO contacts
    (tenant_id, phone, email, first_name, custom_fields, opted_out, created_at, updated_at)
SELECT 2, '+4915' || lpad(n::text, 8, '0'), 'other' || n || '@example.com', 'Other', '{{}}', false,
       now(), now()
FROM generate_series(1, 1000) AS n
"""
FILL_LIST = """
INSERT INTO contact_lists (tenant_id, name, created_at, updated_at) VALUES (1, 'VIP', now(), now());
INSERT INTO contact_list_members (tenant_id, list_id, contact_id, added_at)
SELECT 1, 1, id, now() FROM contacts WHERE tenant_id = 1 AND id % 10 = 0;
"""


def fill(url: str, contacts: int) -> None:
    """N contacts for tenant 1 (every 10th on list VIP), 1,000 for tenant 2, set-based."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in (FILL_TENANT.format(count=int(contacts)), FILL_OTHER_TENANT.format(), FILL_LIST):
            conn.execute(statement.encode())
        conn.execute("VACUUM ANALYZE")


def timed(client, url: str, runs: int = 7) -> tuple[float, float]:
    client.get(url)  # warm
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--keep", metavar="NAME", help="fill (once) and keep this database for inspection")
    args = parser.parse_args()
    name = args.keep or f"crier_bench_{secrets.token_hex(4)}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    os.environ.update(
        DATABASE_URL=url,
        REDIS_URL="redis://127.0.0.1:6379/0",
        SECRET_KEY=secrets.token_hex(16),
        CRIER_INSTANCE_PATH=tempfile.mkdtemp(prefix="crier-bench-"),
        CRIER_ENV="test",
    )
    try:
        from flask_migrate import upgrade

        from tenants.accounts import sign_up
        from tenants.db import db
        from webapp import create_app

        app = create_app({"WTF_CSRF_ENABLED": False})
        with app.app_context():
            upgrade()
        if not exists:
            with app.app_context():
                sign_up("bench@example.com", "a long bench password", "Bench")
                sign_up("other@example.com", "a long bench password", "Other")
            started = time.perf_counter()
            fill(url, args.contacts)
            print(f"filled {args.contacts:,} contacts in {time.perf_counter() - started:.1f} s")
        client = app.test_client()
        client.post("/login", data={"email": "bench@example.com", "password": "a long bench password"})
        with app.app_context():
            middle = db.session.execute(
                db.text("SELECT max(id) / 2 FROM contacts WHERE tenant_id = 1")
            ).scalar()
        cases = [
            ("first page", "/contacts"),
            ("deep page (keyset, half-way)", f"/contacts?after={middle}"),
            ("last page", "/contacts?after=50"),
            ("list filter (VIP, 10%)", "/contacts?list=1"),
            ("opted out (2%)", "/contacts?opted_out=yes"),
            ("custom field city=Berlin", "/contacts?field=city&value=Berlin"),
            ("search 'user4242'", "/contacts?q=user4242"),
            ("search 'müller' (a third match)", "/contacts?q=m%C3%BCller"),
            ("exact count, all (loaded after)", "/contacts/count"),
            ("exact count, list (loaded after)", "/contacts/count?list=1"),
        ]
        print(f"{'case':32} {'median ms':>10} {'max ms':>8}")
        for label, path in cases:
            median, worst = timed(client, path)
            print(f"{label:32} {median:10.1f} {worst:8.1f}")
        with app.app_context():
            db.engine.dispose()
    finally:
        if not args.keep:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
