"""Template rendering speed: renders per second of a typical message, on one core.

.venv/bin/python bench/render_templates.py [--contacts 100000] [--expect-rps 50000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tenants.templating import compile_template, contact_variables

BODY = (
    "Hi {{ firstName|default('there') }}! Your order for {{ company|default('your team') }} ships "
    "from {{ city }} on {{ signup_day }}. Questions? Reply here or write to help@shop.example. "
    "Thanks for choosing us, {{ name }}."
)


def _contacts(count: int) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            first_name=f"Person{n}",
            last_name="Silva",
            phone=f"+5511961{n:06d}",
            email=f"person{n}@example.com",
            company=None if n % 3 else "Acme",
            custom_fields={"city": "Berlin", "signup_day": "2024-05-01"},
        )
        for n in range(count)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--expect-rps", type=float, default=0)
    args = parser.parse_args()
    template = SimpleNamespace(
        channel="whatsapp", subject=None, body=BODY, html_body=None, whatsapp_parameters=[]
    )
    compiled = compile_template(template)
    assert compiled.ok, compiled.problems
    contacts = _contacts(args.contacts)
    variables = [contact_variables(c) for c in contacts]

    started = time.perf_counter()
    for v in variables:
        compiled.render(v)
    render_s = time.perf_counter() - started

    started = time.perf_counter()
    for c in contacts:
        compiled.render(contact_variables(c))
    total_s = time.perf_counter() - started

    email = compile_template(
        SimpleNamespace(
            channel="smtp",
            subject="Your order, {{ firstName }}",
            body=BODY,
            html_body="<p>" + BODY + "</p>",
            whatsapp_parameters=[],
        )
    )
    started = time.perf_counter()
    for v in variables:
        email.render(v)
    email_s = time.perf_counter() - started

    sample = compiled.render(variables[0])
    print(f"body: {len(BODY)} characters of template, {len(sample.text)} rendered")
    print(f"render only:                {args.contacts / render_s:>10,.0f} renders/s")
    print(f"contact_variables + render: {args.contacts / total_s:>10,.0f} renders/s")
    print(f"email (subject, text, html): {args.contacts / email_s:>9,.0f} renders/s")
    if args.expect_rps and args.contacts / render_s < args.expect_rps:
        print(f"FAIL: below {args.expect_rps:,.0f} renders/s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
