"""How long ``tenants.campaigns.start`` takes for 100,000 recipients on PostgreSQL (target: ≤ 3 s).

    .venv/bin/python bench/campaign_start.py [--recipients 100000] [--runs 3] [--expect-seconds 3]
    .venv/bin/python bench/campaign_start.py --statements --explain   # where the time goes

Creates a throw-away PostgreSQL database (crier_bench_start_<hex>), migrates it, and fills one
tenant set-based with a WhatsApp page and a list of N contacts who can all receive
"Hi {{first_name}} from {{city}}" (or ``--body``), plus 1% opted out and 1% without a city
(excluded, so the exclusion paths run too), and 1,000 contacts in another tenant. Then it starts
a fresh campaign to the list ``--runs`` times and prints each start's wall time and the median;
it fails (exit 1) when a start did not create exactly N deliveries or the median is above
``--expect-seconds``. The database is dropped at the end.

Environment: CRIER_BENCH_POSTGRES (admin URL, default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg
from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throwaway import throwaway_database  # noqa: E402

BODY = "Hi {{first_name}} from {{city}}"

# n in 1..N receive; N+1..N+N/100 opted out; N+N/100+1..N+N/50 have no city. Tenant 1, list 1.
FILL_CONTACTS = """
INSERT INTO contacts (tenant_id, phone, email, first_name, last_name, custom_fields, opted_out,
                      created_at, updated_at)
SELECT 1, '+447' || lpad(n::text, 8, '0') || '1', 'bench-' || n || '@example.com',
       (ARRAY['Ana', 'Bruno', 'Chidi', 'Dana', 'Emeka'])[1 + n % 5], 'Bench' || n,
       CASE WHEN n > {receive} + {receive} / 100 THEN '{{}}'::jsonb
            ELSE jsonb_build_object('city', (ARRAY['Lisbon', 'Lagos', 'Recife', 'Osaka'])[1 + n % 4],
                                    'Home Town', 'Town ' || n % 100) END,
       n > {receive} AND n <= {receive} + {receive} / 100, now(), now()
FROM generate_series(1, {receive} + {receive} / 50) AS n
"""
FILL_LIST = """
INSERT INTO contact_list_members (tenant_id, list_id, contact_id, added_at)
SELECT 1, {list_id}, id, now() FROM contacts WHERE tenant_id = 1
"""
FILL_OTHER_TENANT = """
INSERT INTO contacts (tenant_id, phone, first_name, custom_fields, opted_out, created_at, updated_at)
SELECT 2, '+4915' || lpad(n::text, 8, '0'), 'Other', '{}'::jsonb, false, now(), now()
FROM generate_series(1, 1000) AS n
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--expect-seconds", type=float, default=3.0)
    parser.add_argument(
        "--body",
        default=BODY,
        help="the message; {{home_town}} (custom field 'Home Town', read through its alias) makes every"
        " recipient one whose variables are checked by rendering",
    )
    parser.add_argument("--statements", action="store_true", help="time each statement of one more start")
    parser.add_argument(
        "--explain", action="store_true", help="EXPLAIN ANALYZE each statement of one more start"
    )
    args = parser.parse_args()
    with throwaway_database("start") as url:
        return run(args, url)


def explain_statements(engine) -> None:
    """Print EXPLAIN ANALYZE of every statement the engine runs from now on (then run it for real)."""

    @event.listens_for(engine, "before_cursor_execute")
    def explain(conn, cursor, statement, parameters, context, executemany):
        if executemany or not statement.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            return
        print("\n---", " ".join(statement.split())[:400])
        # a plain cursor of the same connection: the statement's own may be a server-side one
        with conn.connection.driver_connection.cursor() as plain:
            plain.execute("SAVEPOINT bench_explain")
            plain.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            print("\n".join(row[0] for row in plain.fetchall()))
            plain.execute("ROLLBACK TO SAVEPOINT bench_explain")


class StatementTimes(list):
    """The wall time (s) of every statement the engine runs while listening, each also printed."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[float] = []

    def before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.started.append(time.perf_counter())

    def after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.append(time.perf_counter() - self.started.pop())
        print(f"  {1000 * self[-1]:8.1f} ms  {' '.join(statement.split())[:100]}")


def time_statements(engine) -> StatementTimes:
    spent = StatementTimes()
    event.listen(engine, "before_cursor_execute", spent.before)
    event.listen(engine, "after_cursor_execute", spent.after)
    return spent


def run(args, url: str) -> int:
    from flask_migrate import upgrade
    from sqlalchemy import func, select

    from tenants.campaigns import Campaign, CampaignState, Delivery, apply_campaign_form, start
    from tenants.contacts import ContactList
    from tenants.db import db
    from tenants.models import Tenant
    from tenants.pages import Page, ProviderKind, apply_form
    from tenants.scoping import all_tenants, tenant
    from webapp import create_app

    app = create_app()
    with app.app_context():
        upgrade()
        with all_tenants(db.session):
            bench = Tenant(name="Bench", slug="bench", max_recipients_per_campaign=args.recipients)
            other = Tenant(name="Other", slug="other")
            db.session.add_all([bench, other])
            db.session.commit()
            assert (bench.id, other.id) == (1, 2)
        with tenant(db.session, bench.id):
            page = apply_form(
                Page(kind=ProviderKind.WHATSAPP),
                name="Bench WhatsApp",
                base_url="http://127.0.0.1:9/",
                send_rate=80,
                daily_cap=None,
                credentials={"access_token": "bench-token", "app_secret": "bench", "verify_token": "bench"},
                settings={"phone_number_id": "1001"},
            )
            contact_list = ContactList(name="Bench")
            db.session.add_all([page, contact_list])
            db.session.commit()
            page_id, list_id = page.id, contact_list.id
        filled = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FILL_CONTACTS.format(receive=int(args.recipients)).encode())
            conn.execute(FILL_LIST.format(list_id=list_id).encode())
            conn.execute(FILL_OTHER_TENANT.encode())
            conn.execute("VACUUM ANALYZE")
        extra = args.recipients // 50
        print(
            f"{args.recipients + extra:,} contacts on the list ({args.recipients // 100:,} opted out, "
            f"{extra - args.recipients // 100:,} without a city) in {time.perf_counter() - filled:.1f} s"
        )

        def start_one(number: int) -> tuple[float, Campaign]:
            campaign = Campaign()
            fields = {
                "name": f"Bench {number}",
                "page_id": page_id,
                "list_ids": [list_id],
                "body": args.body,
                "schedule": "manual",
            }
            apply_campaign_form(campaign, fields, db.session.get(Tenant, bench.id))
            db.session.add(campaign)
            db.session.commit()
            clock = time.perf_counter()
            start(campaign)
            return time.perf_counter() - clock, campaign

        timings, failures = [], []
        with tenant(db.session, bench.id):
            for number in range(1, args.runs + 1):
                wall, campaign = start_one(number)
                timings.append(wall)
                created = db.session.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.campaign_id == campaign.id)
                )
                print(f"start {number}: {wall:.2f} s, {created:,} deliveries, excluded {campaign.exclusions}")
                if campaign.state is not CampaignState.RUNNING or created != args.recipients:
                    failures.append(f"start {number}: {campaign.state.value}, {created:,} deliveries")
            if args.statements:
                print("a further start, not counted, statement by statement:")
                spent = time_statements(db.engine)
                wall, _ = start_one(args.runs + 1)
                print(f"  {1000 * (wall - sum(spent)):8.1f} ms  outside the statements (commit, Python)")
                event.remove(db.engine, "before_cursor_execute", spent.before)
                event.remove(db.engine, "after_cursor_execute", spent.after)
            if args.explain:
                print("a further start, not counted, with EXPLAIN ANALYZE of each statement (run twice):")
                explain_statements(db.engine)
                start_one(args.runs + 2)
        db.session.remove()
        db.engine.dispose()
    median = statistics.median(timings)
    print(
        f"median start time for {args.recipients:,} recipients: {median:.2f} s"
        f" (target ≤ {args.expect_seconds} s)"
    )
    if median > args.expect_seconds:
        failures.append(f"median {median:.2f} s > {args.expect_seconds} s")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
