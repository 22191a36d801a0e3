"""Contact import benchmark: rows per second and memory of ``import_contacts`` on PostgreSQL.

Generates N contacts with ``../shared/data/make_contacts.py``, creates a fresh PostgreSQL database
(dropped afterwards), builds the schema with ``flask_migrate.upgrade()``, then runs the import the
way the worker does — ``import_contacts`` in-process, in an app context, into a target list — four
times:

1. a first import: every row creates a contact (and joins the target list);
2. the same file again with update_existing=True: every row updates its contact (same values);
3. the same file again with update_existing=False: every row is left alone (skipped);
4. a file with the same phones and emails but other names, plans and cities (seed 43),
   update_existing=True: every row changes its contact.

For each it prints wall time, rows/s, the CPU seconds of this process and of PostgreSQL, and the
growth of resident memory over VmRSS just before the run: peak (VmHWM, reset before each run
through /proc/self/clear_refs) and at the end (VmRSS).

    .venv/bin/python bench/import_contacts.py                      # 100,000 rows
    .venv/bin/python bench/import_contacts.py --rows 20000 --expect-seconds 15 --expect-mb 50
    .venv/bin/python bench/import_contacts.py --sqlite --rows 20000   # the embedded default's path

Environment: CRIER_BENCH_POSTGRES (admin URL, default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MAKE_CONTACTS = ROOT.parent / "shared" / "data" / "make_contacts.py"
ADMIN_URL = os.environ.get("CRIER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
RUNS = (
    ("first import (all created)", 42, True),
    ("same file, update_existing=True (all updated)", 42, True),
    ("same file, update_existing=False (all skipped)", 42, False),
    ("changed names, update_existing=True (all changed)", 43, True),
)


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def postgres_cpu_seconds() -> float:
    """CPU time of every local postgres process (the backends, autovacuum, the WAL writer...)."""
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def generate(rows: int, seed: int, directory: Path) -> Path:
    path = directory / f"contacts-{rows}-{seed}.csv"
    with path.open("wb") as handle:
        subprocess.run([sys.executable, str(MAKE_CONTACTS), str(rows), str(seed)], stdout=handle, check=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--expect-seconds", type=float, help="fail if the first import takes longer")
    parser.add_argument("--expect-mb", type=float, help="fail if a run's peak RSS growth is larger")
    parser.add_argument("--sqlite", action="store_true", help="a fresh SQLite file instead of PostgreSQL")
    args = parser.parse_args()

    database = f"crier_bench_{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="crier-import-bench-"))
    url = f"sqlite:///{workdir / 'crier.db'}" if args.sqlite else ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    os.environ.update(
        DATABASE_URL=url,
        SECRET_KEY=secrets.token_hex(32),
        CRIER_INSTANCE_PATH=str(workdir / "instance"),
        CRIER_ENV="test",
    )
    if not args.sqlite:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
    try:
        return run(args, workdir)
    finally:
        if not args.sqlite:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for path in [*workdir.glob("*.csv"), *workdir.glob("crier.db*")]:
            path.unlink()


def run(args, workdir: Path) -> int:
    from flask_migrate import upgrade

    from tenants.contact_book import create_list
    from tenants.contact_import import configure_import, import_contacts, new_import
    from tenants.db import db
    from tenants.models import Tenant
    from tenants.scoping import all_tenants, tenant
    from webapp import create_app

    started = time.perf_counter()
    files = {seed: generate(args.rows, seed, workdir) for seed in (42, 43)}
    size_mb = files[42].stat().st_size / 1e6
    print(
        f"{args.rows:,} rows per file ({size_mb:.1f} MB), generated in {time.perf_counter() - started:.1f} s"
    )

    failures = []
    app = create_app()
    with app.app_context():
        upgrade()
        with all_tenants(db.session):
            owner = Tenant(name="Bench", slug="bench")
            db.session.add(owner)
            db.session.commit()
            tenant_id = owner.id
        with tenant(db.session, tenant_id):
            target = create_list("Bench")
            db.session.commit()
            list_id = target.id
            columns = (
                ("wall s", 7),
                ("rows/s", 7),
                ("cpu s", 6),
                ("pg cpu s", 8),
                ("peak MB", 8),
                ("end MB", 7),
            )
            print(f"{'run':52}", *(f"{name:>{width}}" for name, width in columns))
            for number, (label, seed, update_existing) in enumerate(RUNS, start=1):
                record = new_import(files[seed], filename=files[seed].name)
                configure_import(
                    record, mapping=dict(record.mapping), list_id=list_id, update_existing=update_existing
                )
                db.session.commit()
                db.session.expire_all()
                gc.collect()
                before = status_kb("VmRSS")
                reset_peak()
                cpu, pg_cpu, clock = cpu_seconds(), postgres_cpu_seconds(), time.perf_counter()
                result = import_contacts(record)
                wall = time.perf_counter() - clock
                cpu, pg_cpu = cpu_seconds() - cpu, postgres_cpu_seconds() - pg_cpu
                peak_mb, end_mb = (status_kb("VmHWM") - before) / 1024, (status_kb("VmRSS") - before) / 1024
                print(
                    f"{number}. {label:49} {wall:7.2f} {result.processed / wall:7.0f} {cpu:6.1f} "
                    f"{'-' if args.sqlite else f'{pg_cpu:.1f}':>8} {peak_mb:8.1f} {end_mb:7.1f}"
                )
                print(
                    f"   created {result.created:,}, updated {result.updated:,}, merged {result.merged:,}, "
                    f"skipped {result.skipped:,}, rejected {result.rejected:,}"
                )
                if args.expect_mb is not None and peak_mb > args.expect_mb:
                    failures.append(f"run {number}: peak RSS growth {peak_mb:.1f} MB > {args.expect_mb} MB")
                if number == 1 and args.expect_seconds is not None and wall > args.expect_seconds:
                    failures.append(f"the first import took {wall:.1f} s > {args.expect_seconds} s")
            members = db.session.execute(
                db.text("SELECT count(*) FROM contact_list_members WHERE list_id = :id"), {"id": list_id}
            ).scalar()
            print(f"contacts on the target list: {members:,}")
        db.session.remove()
        db.engine.dispose()
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
