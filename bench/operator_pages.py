"""The operator's and the tenant's report pages at scale: the admin tenants list at 10,000 tenants, a
campaign report at 100,000 deliveries (target: each under 200 ms), and the 100,000-row CSV export
(streamed in seconds, with flat memory).

    .venv/bin/python bench/operator_pages.py [--tenants 10000] [--deliveries 100000] [--runs 15] \\
        [--history-days 365] [--json]

Creates a throw-away PostgreSQL database (crier_bench_ops_<hex>), migrates it, and fills it
set-based: ``--tenants`` tenants on the three seeded plans (1% suspended, four time zones), each
with an owner, two pages, ten contacts, three campaigns (every tenth one running),
``--history-days`` (365) days of quota use (the tenant's and a page's) and 30 days of daily
activity; tenant 1 also has a completed campaign of ``--deliveries`` deliveries (sent, delivered,
read, failed with three provider codes, unknown, some replied) to as many contacts, and one of a
tenth of that. Then, through the real views (Flask's test client, so routing, queries and templates
all count), it times each page ``--runs`` times after two warm-ups and prints the median and the
95th percentile; the export is read to its end, timing it and tracing Python's allocations (peak,
tracemalloc, in a second read) for both campaigns: flat memory means the 100,000-row peak is close
to the 10,000-row one. Exit 1 when a page's median is 200 ms or more, the export took 10 s or more,
or its peak grew more than 50% over the tenfold rows (and past 3 MiB, room for a read batch). The
database is dropped at the end.

Environment: CRIER_BENCH_POSTGRES (admin URL, default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throwaway import throwaway_database  # noqa: E402

PASSWORD = "a bench password"
LIMIT_MS = 200.0
EXPORT_LIMIT_S = 10.0

FILL = [
    # tenants on the seeded plans (1 Free, 2 Standard, 3 Business); every hundredth suspended
    """
    INSERT INTO tenants (name, slug, timezone, status, daily_message_quota, max_pages,
                         max_recipients_per_campaign, max_send_rate, max_contacts, plan_id, limit_overrides,
                         suspended_reason, created_at, updated_at)
    SELECT 'Tenant ' || n, 'tenant-' || n,
           (ARRAY['UTC', 'Europe/Berlin', 'America/Sao_Paulo', 'Asia/Tokyo'])[1 + n % 4],
           CASE WHEN n % 100 = 0 THEN 'suspended' ELSE 'active' END,
           CASE WHEN n = 1 THEN 1000000 ELSE 10000 END, 10, 200000, 100, 200000, 1 + n % 3,
           CASE WHEN n = 1 THEN '{"daily_message_quota": 1000000, "max_recipients_per_campaign": 200000,
                                 "max_contacts": 200000}'::jsonb ELSE '{}'::jsonb END,
           CASE WHEN n % 100 = 0 THEN 'unpaid invoice' END,
           now() - (n || ' minutes')::interval, now()
    FROM generate_series(1, {tenants}) AS n
    """,
    """
    INSERT INTO users (email, password_hash, is_platform_admin, created_at, updated_at)
    SELECT 'owner-' || n || '@bench.example', :hash, false, now(), now()
    FROM generate_series(1, {tenants}) AS n
    """,
    """
    INSERT INTO users (email, password_hash, is_platform_admin, created_at, updated_at)
    VALUES ('root@bench.example', :hash, true, now(), now())
    """,
    """
    INSERT INTO memberships (tenant_id, user_id, role, created_at, updated_at)
    SELECT n, n, 'owner', now(), now() FROM generate_series(1, {tenants}) AS n
    """,
    """
    INSERT INTO pages (tenant_id, name, kind, base_url, credentials_sealed, settings, send_rate, daily_cap,
                       state, delivery_policy, created_at, updated_at)
    SELECT t, 'Page ' || p, 'whatsapp', 'https://graph.example', :sealed,
           jsonb_build_object('phone_number_id', (t * 10 + p)::text), 80,
           CASE WHEN p = 2 THEN 5000 END, 'active', 'at_most_once', now(), now()
    FROM generate_series(1, {tenants}) AS t, generate_series(1, 2) AS p
    ORDER BY t, p
    """,
    """
    INSERT INTO contacts (tenant_id, phone, first_name, last_name, custom_fields, opted_out,
                          created_at, updated_at)
    SELECT t, '+44' || lpad((t * 10 + c)::text, 10, '0'), 'Person', 'No ' || c, '{}'::jsonb, false,
           now(), now()
    FROM generate_series(2, {tenants}) AS t, generate_series(1, 10) AS c
    """,
    # tenant 1's report audience: one contact per delivery
    """
    INSERT INTO contacts (tenant_id, phone, first_name, last_name, company, custom_fields, opted_out,
                          created_at, updated_at)
    SELECT 1, '+447' || lpad(n::text, 8, '0') || '1', (ARRAY['Ana', 'Bruno', '=Chidi', 'Dana'])[1 + n % 4],
           'Report' || n, CASE WHEN n % 7 = 0 THEN '@Acme, Inc.' END, '{}'::jsonb, false, now(), now()
    FROM generate_series(1, {deliveries}) AS n
    """,
    """
    INSERT INTO campaigns (tenant_id, name, page_id, body, audience, schedule, max_attempts, error_threshold,
                           state, total, exclusions, dispatch_generation, created_at, updated_at,
                           started_at, finished_at, message)
    SELECT t, 'Campaign ' || k || ' of ' || t, (t - 1) * 2 + 1, 'Hi {{first_name}}',
           '{"all": true, "lists": [], "segments": []}'::jsonb, 'manual', 3, 0.5,
           CASE WHEN k = 3 AND t % 10 = 0 AND t % 100 <> 0 THEN 'running' ELSE 'completed' END,
           CASE WHEN t = 1 AND k = 1 THEN {deliveries}
                WHEN t = 1 AND k = 2 THEN {deliveries} / 10 ELSE 10 END,
           '{}'::jsonb, 0, now() - (k || ' days')::interval, now(), now() - (k || ' days')::interval,
           now() - (k || ' days')::interval + interval '2 minutes',
           '{"channel": "whatsapp", "body": "Hi {{first_name}}"}'::jsonb
    FROM generate_series(1, {tenants}) AS t, generate_series(1, 3) AS k
    ORDER BY t, k
    """,
    # tenant 1: campaign 1 reaches every report contact, campaign 2 a tenth of them
    """
    INSERT INTO deliveries (tenant_id, campaign_id, contact_id, address, state, attempts, due_at,
                            provider_message_id, error_code, error_text, sent_at, delivered_at, read_at,
                            replied_at, retryable)
    SELECT 1, (SELECT id FROM campaigns WHERE tenant_id = 1 AND name = 'Campaign ' || c.k || ' of 1'), ct.id,
           ct.phone,
           (ARRAY['sent', 'delivered', 'read', 'read', 'delivered', 'read', 'delivered', 'read', 'sent',
                  'delivered', 'read', 'delivered', 'read', 'delivered', 'read', 'delivered', 'failed',
                  'failed', 'failed', 'unknown'])[1 + ct.n % 20],
           CASE WHEN ct.n % 20 = 18 THEN 3 ELSE 1 END, now() - interval '1 day',
           CASE WHEN ct.n % 20 < 16 THEN 'wamid.' || ct.n END,
           (ARRAY[NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, '131026', '131047', '503', 'lease_expired'])[1 + ct.n % 20],
           (ARRAY[NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, 'Message undeliverable', 'Re-engagement message',
                  'gave up after 3 attempts: HTTP 503 Service Unavailable',
                  'the worker stopped while sending'])[1 + ct.n % 20],
           CASE WHEN ct.n % 20 < 16
                THEN now() - interval '1 day' + (ct.n / 1000.0 || ' seconds')::interval END,
           CASE WHEN ct.n % 20 < 16 AND ct.n % 20 NOT IN (0, 8) THEN now() - interval '23 hours' END,
           CASE WHEN ct.n % 20 IN (2, 3, 5, 7, 10, 12, 14) THEN now() - interval '22 hours' END,
           CASE WHEN ct.n % 50 = 2 THEN now() - interval '21 hours' END,
           ct.n % 20 = 18
    FROM (SELECT id, phone, row_number() OVER (ORDER BY id) AS n FROM contacts WHERE tenant_id = 1) AS ct
    CROSS JOIN LATERAL (SELECT 1 AS k UNION ALL SELECT 2 WHERE ct.n % 10 = 0) AS c
    """,
    """
    INSERT INTO daily_usage (tenant_id, scope, day, used)
    SELECT t, s.scope, current_date - d, (t * 7 + d * 13) % 9000
    FROM generate_series(1, {tenants}) AS t, generate_series(0, {history} - 1) AS d,
         (VALUES ('tenant'), ('page:' || 0)) AS s(scope)
    """,
    """
    INSERT INTO daily_activity (tenant_id, day, campaign_id, page_id, channel, sent, delivered, read, failed,
                                replied)
    SELECT t, current_date - d, (t - 1) * 3 + 1, (t - 1) * 2 + 1, 'whatsapp', (t * 7 + d * 13) % 9000,
           (t * 5 + d * 11) % 8000, (t * 3 + d * 7) % 5000, (t + d) % 50, (t + d) % 9
    FROM generate_series(1, {tenants}) AS t, generate_series(0, 29) AS d
    """,
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--history-days",
        type=int,
        default=365,
        help="days of quota use per tenant (the tenant's and a page's)",
    )
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = parser.parse_args()
    with throwaway_database("ops"):
        return run(args)


def fill(app, args) -> None:
    from sqlalchemy import text

    from tenants.accounts import hash_password
    from tenants.crypto import seal
    from tenants.db import db

    started = time.perf_counter()
    with app.app_context():
        params = {"hash": hash_password(PASSWORD), "sealed": seal({"access_token": "bench-token-1234"})}
        for statement in FILL:
            sql = (
                statement.replace("{tenants}", str(args.tenants))
                .replace("{deliveries}", str(args.deliveries))
                .replace("{history}", str(args.history_days))
            )
            db.session.execute(text(sql), {k: v for k, v in params.items() if f":{k}" in sql})
        db.session.commit()
        db.session.execute(text("ANALYZE"))
        db.session.commit()
    seconds = time.perf_counter() - started
    print(f"filled {args.tenants:,} tenants and {args.deliveries:,} deliveries in {seconds:.1f} s")


def sign_in(app, email: str):
    client = app.test_client()
    response = client.post("/login", data={"email": email, "password": PASSWORD})
    if response.status_code != 302:
        raise SystemExit(f"could not sign in as {email}: {response.status_code}")
    return client


def timed(client, path: str, runs: int) -> dict:
    """Median and 95th percentile (ms) of ``runs`` GETs of ``path`` after two warm-ups; each must be 200."""
    samples = []
    for n in range(runs + 2):
        started = time.perf_counter()
        response = client.get(path)
        body = response.get_data()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"GET {path} answered {response.status_code}: {body[:300]!r}")
        if n >= 2:
            samples.append(elapsed)
    samples.sort()
    return {
        "path": path,
        "median_ms": round(statistics.median(samples), 1),
        "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 1),
        "bytes": len(body),
    }


def read_to_the_end(client, path: str) -> tuple[int, int, bool, int]:
    """GET ``path`` unbuffered and read every chunk: rows (lines less the header), bytes, streamed, status."""
    response = client.get(path, buffered=False)
    rows, size = 0, 0
    for chunk in response.response:
        rows += chunk.count(b"\n") if isinstance(chunk, bytes) else chunk.count("\n")
        size += len(chunk)
    response.close()
    return rows - 1, size, response.is_streamed, response.status_code


def export(client, path: str) -> dict:
    """Read a CSV export to its end twice: once timed, once tracing Python's allocations (tracemalloc
    slows allocation-heavy code several times over, so it does not run while the clock does)."""
    started = time.perf_counter()
    rows, size, streamed, status = read_to_the_end(client, path)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    read_to_the_end(client, path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "path": path,
        "status": status,
        "streamed": streamed,
        "rows": rows,
        "megabytes": round(size / 2**20, 1),
        "seconds": round(seconds, 2),
        "peak_mib": round(peak / 2**20, 2),
    }


def run(args) -> int:
    from flask_migrate import upgrade

    from webapp import create_app

    app = create_app({"WTF_CSRF_ENABLED": False})
    with app.app_context():
        upgrade()
    fill(app, args)

    admin = sign_in(app, "root@bench.example")
    owner = sign_in(app, "owner-1@bench.example")
    middle = args.tenants // 2
    pages = {
        "admin: tenants, by name": "/admin",
        "admin: by today's sends, most first": "/admin?sort=today&dir=desc",
        "admin: by 30-day sends, most first": "/admin?sort=30d&dir=desc",
        "admin: search": f"/admin?q=tenant-{middle}",
        "admin: suspended only": "/admin?status=suspended",
        f"admin: page {args.tenants // 50 // 2}": f"/admin?page={args.tenants // 50 // 2}",
        "admin: one tenant": f"/admin/tenants/{middle}",
        "report: all recipients": "/campaigns/1/report",
        "report: failed": "/campaigns/1/report?state=failed",
        "report: error 131026": "/campaigns/1/report?error=131026",
        "report: deep keyset page": f"/campaigns/1/report?after={args.deliveries // 2}",
        "report: failed, deep keyset page": f"/campaigns/1/report?state=failed&after={args.deliveries // 2}",
        "campaign page": "/campaigns/1",
        "timeline": "/campaigns/1/timeline",
        "dashboard": "/dashboard",
        "usage": "/usage",
    }
    results = {}
    for label, path in pages.items():
        client = admin if path.startswith("/admin") else owner
        results[label] = timed(client, path, args.runs)
    small = export(owner, "/campaigns/2/export.csv")
    big = export(owner, "/campaigns/1/export.csv")

    print(f"\n## Operator and report pages ({args.tenants:,} tenants, {args.deliveries:,} deliveries)\n")
    print("| page | path | median ms | p95 ms | KiB |")
    print("|---|---|---|---|---|")
    for label, figure in results.items():
        print(
            f"| {label} | `{figure['path']}` | {figure['median_ms']} | {figure['p95_ms']} | "
            f"{figure['bytes'] / 1024:.0f} |"
        )
    print("\n| export | rows | MiB | seconds | streamed | peak Python allocations MiB |")
    print("|---|---|---|---|---|---|")
    for figure in (small, big):
        print(
            f"| `{figure['path']}` | {figure['rows']:,} | {figure['megabytes']} | {figure['seconds']} | "
            f"{figure['streamed']} | {figure['peak_mib']} |"
        )

    failures = [
        f"{label}: median {figure['median_ms']} ms >= {LIMIT_MS:.0f} ms"
        for label, figure in results.items()
        if figure["median_ms"] >= LIMIT_MS
    ]
    if big["rows"] != args.deliveries or small["rows"] != args.deliveries // 10:
        failures.append(f"export rows {big['rows']:,} / {small['rows']:,}, expected {args.deliveries:,}")
    if big["seconds"] >= EXPORT_LIMIT_S:
        failures.append(f"the {args.deliveries:,}-row export took {big['seconds']} s")
    if not big["streamed"] or big["peak_mib"] > 1.5 * max(small["peak_mib"], 2.0):
        failures.append(
            f"export memory not flat: peak {big['peak_mib']} MiB for {big['rows']:,} rows vs "
            f"{small['peak_mib']} MiB for {small['rows']:,}"
        )
    if args.json:
        print(json.dumps({"pages": results, "exports": [small, big]}, indent=2))
    if failures:
        print("\nFAILED:\n- " + "\n- ".join(failures))
        return 1
    print(f"\nEvery page's median under {LIMIT_MS:.0f} ms; the export streamed with flat memory.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
