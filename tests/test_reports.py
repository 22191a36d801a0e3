"""A campaign's report as a person reads it: who got what, why some failed, the CSV, the timeline,
and each contact's message history."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select

from tenants.campaigns import Campaign, CampaignState, Delivery, DeliveryState
from tenants.contacts import Contact
from tenants.db import db
from tenants.events import InboundMessage
from tenants.pages import ProviderKind
from tenants.provider_codes import readable_reason
from tenants.reports import recipient_page, timeline
from tenants.scoping import tenant
from tests.conftest import Auth
from tests.factories import sandbox_whatsapp_page

HTMX = {"HX-Request": "true"}
SENT_AT = datetime(2030, 1, 2, 3, 0, 5, tzinfo=UTC)  # 00:00:05 in São Paulo (UTC-3)
DELIVERY_DEFAULTS = {
    "contact_id": None,
    "state": DeliveryState.SENT.value,
    "attempts": 1,
    "error_code": None,
    "error_text": None,
    "sent_at": None,
    "delivered_at": None,
    "read_at": None,
    "replied_at": None,
    "retryable": False,
}


@dataclass
class Workspace:
    tenant_id: int
    page_id: int


def _workspace(app, auth: Auth, name: str = "Acme", timezone: str = "UTC", **signup) -> Workspace:
    """A signed-up owner and a WhatsApp page of their workspace."""
    auth.signup(workspace=name, timezone=timezone, **signup)
    return Workspace(*sandbox_whatsapp_page(app, name))


def _campaign(app, workspace: Workspace, name: str = "Spring sale") -> int:
    """A completed WhatsApp campaign without deliveries yet."""
    with app.app_context(), tenant(db.session, workspace.tenant_id):
        campaign = Campaign(
            name=name,
            page_id=workspace.page_id,
            body="Hi",
            message={"channel": "whatsapp", "body": "Hi"},
            state=CampaignState.COMPLETED,
            started_at=SENT_AT,
        )
        db.session.add(campaign)
        db.session.commit()
        return campaign.id


def _contacts(app, workspace: Workspace, names: list[str]) -> list[int]:
    with app.app_context(), tenant(db.session, workspace.tenant_id):
        start = db.session.scalar(select(func.count(Contact.id))) or 0
        db.session.execute(
            insert(Contact),
            [
                {"tenant_id": workspace.tenant_id, "phone": f"+5511963{start + n:05d}", "first_name": name}
                for n, name in enumerate(names)
            ],
        )
        db.session.commit()
        ids = db.session.scalars(select(Contact.id).order_by(Contact.id)).all()
        return list(ids[start:])


def _deliver(app, workspace: Workspace, campaign_id: int, rows: list[dict]) -> list[int]:
    """Insert deliveries with Core (as a start does), in order; returns their ids."""
    with app.app_context(), tenant(db.session, workspace.tenant_id):
        before = db.session.scalar(select(func.max(Delivery.id))) or 0
        db.session.execute(
            insert(Delivery.__table__),
            [
                {
                    **DELIVERY_DEFAULTS,
                    "tenant_id": workspace.tenant_id,
                    "campaign_id": campaign_id,
                    "address": f"+55119640{n:05d}",
                    "due_at": SENT_AT,
                    **row,
                }
                for n, row in enumerate(rows)
            ],
        )
        db.session.commit()
        return list(db.session.scalars(select(Delivery.id).where(Delivery.id > before).order_by(Delivery.id)))


def _text(response) -> str:
    return response.get_data(as_text=True)


def _shown_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-delivery="(\d+)"', html)]


def _row(html: str, delivery_id: int) -> str:
    return re.search(rf'<tr data-delivery="{delivery_id}".*?</tr>', html, re.S).group(0)


# --------------------------------------------------------------------------- reasons


def test_readable_reasons_come_from_the_providers_tables_and_crier_own_words():
    whatsapp = readable_reason(ProviderKind.WHATSAPP, "131026", "(#131026) Message undeliverable")
    assert whatsapp == "Message undeliverable to this recipient — (#131026) Message undeliverable"
    assert readable_reason(ProviderKind.WHATSAPP, "opted_out", "the contact opted out") == (
        "The contact opted out, so Crier did not send it"
    )
    assert readable_reason(ProviderKind.MESSENGER, "100/2018001", None) == (
        "No matching user: the PSID is unknown to this page"
    )
    assert readable_reason(ProviderKind.SMTP, "550", "User unknown").startswith("Other permanent failure")
    assert readable_reason(ProviderKind.WHATSAPP, "503", "HTTP 503").startswith("Server error")
    assert readable_reason(ProviderKind.WHATSAPP, "999999", "odd") == "odd"  # no row: the provider's words
    assert readable_reason(ProviderKind.WHATSAPP, None, None) == ""


# --------------------------------------------------------------------------- the report


def test_the_report_lists_each_recipient_with_contact_reason_and_local_times(app, auth, client):
    workspace = _workspace(app, auth, timezone="America/Sao_Paulo")
    campaign_id = _campaign(app, workspace)
    ana, bruno = _contacts(app, workspace, ["Ana", "<b>Bruno</b>"])
    sent, undeliverable, opted_out, deleted = _deliver(
        app,
        workspace,
        campaign_id,
        [
            {
                "contact_id": ana,
                "state": "read",
                "sent_at": SENT_AT,
                "delivered_at": SENT_AT + timedelta(seconds=2),
                "read_at": SENT_AT + timedelta(minutes=5),
            },
            {
                "contact_id": bruno,
                "state": "failed",
                "error_code": "131026",
                "error_text": "(#131026) Message undeliverable",
            },
            {"contact_id": ana, "state": "failed", "error_code": "opted_out", "error_text": "opted out"},
            {"contact_id": 987654, "state": "sent", "sent_at": SENT_AT},  # its contact was deleted
        ],
    )
    response = client.get(f"/campaigns/{campaign_id}/report")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    html = _text(response)
    assert _shown_ids(html) == [sent, undeliverable, opted_out, deleted]

    read_row = _row(html, sent)
    assert f'href="/contacts/{ana}"' in read_row and ">Ana</a>" in read_row
    assert "2030-01-02 00:00:05" in read_row and "2030-01-02 00:05:05" in read_row  # São Paulo time
    failed_row = _row(html, undeliverable)
    assert "&lt;b&gt;Bruno&lt;/b&gt;" in failed_row and "<b>Bruno" not in failed_row
    assert "Message undeliverable to this recipient — (#131026) Message undeliverable" in failed_row
    assert "The contact opted out, so Crier did not send it" in _row(html, opted_out)
    deleted_row = _row(html, deleted)
    assert "/contacts/" not in deleted_row and '<td class="truncate" title="contact deleted">—</td>' in (
        deleted_row
    )
    assert "times in America/Sao_Paulo" in html


def test_the_campaign_page_links_to_its_report(app, auth, client):
    workspace = _workspace(app, auth)
    campaign_id = _campaign(app, workspace)
    html = _text(client.get(f"/campaigns/{campaign_id}"))
    link = re.search(r'<a href="([^"]+)" data-testid="report-link">Recipients report</a>', html)
    assert link and link.group(1) == f"/campaigns/{campaign_id}/report"


def test_filters_by_state_and_error_code_with_counts(app, auth, client):
    workspace = _workspace(app, auth)
    campaign_id = _campaign(app, workspace)
    ids = _deliver(
        app,
        workspace,
        campaign_id,
        [{"state": "sent", "sent_at": SENT_AT}] * 3
        + [{"state": "failed", "error_code": "131026"}] * 2
        + [{"state": "failed", "error_code": "131047"}]
        + [{"state": "unknown", "error_code": "lease_expired"}]
        + [{"state": "pending", "error_code": "131000"}],  # waiting for a retry
    )
    html = _text(client.get(f"/campaigns/{campaign_id}/report"))
    tabs = {
        name: int(count.replace(",", ""))
        for name, count in re.findall(r'data-testid="state-(\w+)"[^>]*>[^<]*<strong>([\d,]+)</strong>', html)
    }
    assert tabs == {"all": 8, "pending": 1, "sent": 3, "failed": 3, "unknown": 1}
    assert re.search(r'<option value="131026"\s*>131026 \(2\)</option>', html)

    failed = _text(client.get(f"/campaigns/{campaign_id}/report?state=failed"))
    assert _shown_ids(failed) == ids[3:6]
    assert 'data-testid="state-failed" aria-current="page"' in failed
    assert "lease_expired" not in failed.split('data-testid="error-filter"')[1].split("</select>")[0]

    coded = _text(client.get(f"/campaigns/{campaign_id}/report?error_code=131026"))
    assert _shown_ids(coded) == ids[3:5]
    both = _text(client.get(f"/campaigns/{campaign_id}/report?state=unknown&error_code=131026"))
    assert _shown_ids(both) == [] and "No recipients match." in both
    fragment = _text(client.get(f"/campaigns/{campaign_id}/report?state=sent", headers=HTMX))
    assert "<html" not in fragment and _shown_ids(fragment) == ids[:3]
    assert client.get(f"/campaigns/{campaign_id}/report?state=lost").status_code == 400
    assert client.get(f"/campaigns/{campaign_id}/report?after=abc").status_code == 400


def test_keyset_pages_show_every_recipient_once(app, auth, client):
    workspace = _workspace(app, auth)
    campaign_id = _campaign(app, workspace)
    other_id = _campaign(app, workspace, "Other")
    mixed = [{"state": "failed" if n % 3 == 0 else "sent"} for n in range(130)]
    ids = _deliver(app, workspace, campaign_id, mixed[:70])
    _deliver(app, workspace, other_id, [{"state": "sent"}] * 20)  # interleaved ids of another campaign
    ids += _deliver(app, workspace, campaign_id, mixed[70:])

    def walk(url: str) -> tuple[list[int], int]:
        seen, pages = [], 0
        while url:
            html = _text(client.get(url))
            seen += _shown_ids(html)
            pages += 1
            found = re.search(r'<a href="([^"]+)" rel="next"', html)
            url = found.group(1).replace("&amp;", "&") if found else None
        return seen, pages

    everyone, pages = walk(f"/campaigns/{campaign_id}/report")
    assert (everyone, pages) == (ids, 3)  # 50 + 50 + 30, none twice, none missing
    failed, pages = walk(f"/campaigns/{campaign_id}/report?state=failed")
    assert failed == [i for i, row in zip(ids, mixed, strict=True) if row["state"] == "failed"]
    assert pages == 1
    with app.app_context(), tenant(db.session, workspace.tenant_id):
        campaign = db.session.get(Campaign, campaign_id)
        first = recipient_page(campaign, size=50)
        second = recipient_page(campaign, after=first.next_after, size=50)
        assert first.next_after == ids[49] and second.rows[0].delivery_id == ids[50]


def test_a_resent_recipient_shows_its_earlier_attempts(app, auth, client):
    workspace = _workspace(app, auth)
    campaign_id = _campaign(app, workspace)
    retried, lost, permanent = _deliver(
        app,
        workspace,
        campaign_id,
        [
            {
                "state": "failed",
                "attempts": 3,
                "error_code": "131000",
                "error_text": "gave up after 3 attempts",
                "retryable": True,
            },
            {"state": "unknown", "error_code": "lease_expired"},
            {"state": "failed", "error_code": "131026", "error_text": "undeliverable"},
        ],
    )
    resent = auth.post(f"/campaigns/{campaign_id}/resend", headers=HTMX)
    assert resent.status_code == 200
    html = _text(client.get(f"/campaigns/{campaign_id}/report"))
    retried_row = _row(html, retried)
    assert "+3 earlier" in retried_row
    assert "failed after 3 attempts: Something went wrong on WhatsApp&#39;s side" in retried_row
    lost_row = _row(html, lost)
    assert (
        "+1 earlier" in lost_row and "unknown after 1 attempt: The worker stopped while sending" in lost_row
    )
    assert "earlier" not in _row(html, permanent)


def test_another_tenants_report_export_and_timeline_are_404(app, auth, client, other_client):
    workspace = _workspace(app, auth)
    campaign_id = _campaign(app, workspace)
    _deliver(app, workspace, campaign_id, [{"state": "sent", "sent_at": SENT_AT}])
    Auth(other_client).signup(email="b@bravo.example", workspace="Bravo")
    for suffix in ("report", "export.csv", "timeline", "report?state=failed"):
        assert client.get(f"/campaigns/{campaign_id}/{suffix}").status_code == 200, suffix
        assert other_client.get(f"/campaigns/{campaign_id}/{suffix}").status_code == 404, suffix


# --------------------------------------------------------------------------- the CSV


def test_the_csv_export_streams_every_recipient_formula_safe(app, auth, client):
    workspace = _workspace(app, auth, timezone="America/Sao_Paulo")
    campaign_id = _campaign(app, workspace)
    names = ['=HYPERLINK("http://evil.example")'] + [f"Person {n}" for n in range(1, 1200)]
    contact_ids = _contacts(app, workspace, names)
    rows = [
        {"contact_id": contact_id, "state": "sent", "sent_at": SENT_AT + timedelta(seconds=n)}
        for n, contact_id in enumerate(contact_ids)
    ]
    for n in range(0, 1200, 100):
        rows[n] = {**rows[n], "state": "failed", "sent_at": None, "error_code": "131026"}
    ids = _deliver(app, workspace, campaign_id, rows)

    response = client.get(f"/campaigns/{campaign_id}/export.csv")
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="campaign-{campaign_id}-recipients.csv"'
    )
    assert response.headers["Cache-Control"] == "no-store"
    table = list(csv.reader(io.StringIO(_text(response))))
    assert table[0] == [
        "delivery id",
        "contact id",
        "contact name",
        "address",
        "state",
        "attempts",
        "error code",
        "reason",
        "sent at",
        "delivered at",
        "read at",
        "replied at",
    ]
    assert len(table) == 1 + 1200
    assert [int(row[0]) for row in table[1:]] == ids
    assert table[1][2] == '\'=HYPERLINK("http://evil.example")'  # shown as text, never evaluated
    assert table[1][4:8] == ["failed", "1", "131026", "Message undeliverable to this recipient"]
    assert table[2][1:3] == [str(contact_ids[1]), "Person 1"]
    assert table[2][8] == "2030-01-02T00:00:06-03:00"

    failed = list(
        csv.reader(io.StringIO(_text(client.get(f"/campaigns/{campaign_id}/export.csv?state=failed"))))
    )
    assert len(failed) == 1 + 12 and {row[4] for row in failed[1:]} == {"failed"}
    coded = client.get(f"/campaigns/{campaign_id}/export.csv?state=sent&error_code=131026")
    assert len(list(csv.reader(io.StringIO(_text(coded))))) == 1


# --------------------------------------------------------------------------- the timeline


def _chart(html: str) -> dict:
    return json.loads(
        re.search(r'<script type="application/json" class="chart-data">(.*?)</script>', html, re.S)[1]
    )


def test_the_timeline_counts_sends_and_receipts_per_second(app, auth, client):
    workspace = _workspace(app, auth)
    campaign_id = _campaign(app, workspace)
    nothing = _text(client.get(f"/campaigns/{campaign_id}/timeline", headers=HTMX))
    assert "Nothing sent yet" in nothing and "<html" not in nothing
    rows = [
        {
            "state": "delivered" if n % 2 else "sent",
            "sent_at": SENT_AT + timedelta(seconds=n // 3),
            "delivered_at": SENT_AT + timedelta(seconds=n // 3 + 2) if n % 2 else None,
        }
        for n in range(300)
    ]
    rows += [{"state": "failed", "error_code": "131026"}] * 5  # never sent: not on the timeline
    _deliver(app, workspace, campaign_id, rows)

    html = _text(client.get(f"/campaigns/{campaign_id}/timeline", headers=HTMX))
    assert "<html" not in html and 'data-total-sent="300"' in html and 'data-total-delivered="150"' in html
    data = _chart(html)
    assert data["kind"] == "seconds"
    first = int(SENT_AT.timestamp())
    assert data["x"][:3] == [first - 1, first, first + 1]  # one second each, from a second before
    sent, delivered, read = (series["values"] for series in data["series"])
    assert sum(sent) == 300 and sum(delivered) == 150 and sum(read) == 0
    assert sent[:4] == [0, 3, 3, 3] and sent[-3:] == [0, 0, 0]
    assert len(data["x"]) == 1 + 100 + 2 + 1  # the last receipts come 2 s after the last send
    assert "per second" in html


def test_a_long_campaign_is_charted_in_coarser_buckets(app, auth):
    workspace = _workspace(app, auth)
    campaign_id = _campaign(app, workspace)
    _deliver(
        app,
        workspace,
        campaign_id,
        [{"state": "sent", "sent_at": SENT_AT + timedelta(seconds=37 * n)} for n in range(1000)],  # 10 h
    )
    with app.app_context(), tenant(db.session, workspace.tenant_id):
        line = timeline(campaign_id)
    assert line.step == 60 and len(line.x) <= 900 and sum(line.sent) == 1000
    assert all(b - a == 60 for a, b in zip(line.x, line.x[1:], strict=False))


def test_the_report_and_a_started_campaign_load_the_timeline(app, auth, client):
    workspace = _workspace(app, auth)
    campaign_id = _campaign(app, workspace)
    lazy = f'hx-get="/campaigns/{campaign_id}/timeline" hx-trigger="load"'
    assert lazy in _text(client.get(f"/campaigns/{campaign_id}/report"))
    assert lazy in _text(client.get(f"/campaigns/{campaign_id}"))


# --------------------------------------------------------------------------- contact history


def test_a_contacts_page_shows_their_messages_and_replies_only(app, auth, client):
    workspace = _workspace(app, auth)
    spring = _campaign(app, workspace, "Spring sale")
    summer = _campaign(app, workspace, "Summer sale")
    ana, bruno = _contacts(app, workspace, ["Ana", "Bruno"])
    _deliver(app, workspace, spring, [{"contact_id": ana, "sent_at": SENT_AT}, {"contact_id": bruno}])
    _deliver(
        app,
        workspace,
        summer,
        [
            {
                "contact_id": ana,
                "state": "failed",
                "sent_at": SENT_AT + timedelta(days=30),
                "error_code": "131026",
                "error_text": "undeliverable",
            }
        ],
    )
    with app.app_context(), tenant(db.session, workspace.tenant_id):
        db.session.add_all(
            [
                InboundMessage(
                    page_id=workspace.page_id,
                    contact_id=ana,
                    sender="5511963000000",
                    text="<i>Yes</i>, tell me more",
                    received_at=SENT_AT + timedelta(days=1),
                    campaign_id=spring,
                ),
                InboundMessage(
                    page_id=workspace.page_id,
                    contact_id=bruno,
                    sender="5511963000001",
                    text="Bruno here",
                    received_at=SENT_AT + timedelta(days=2),
                ),
            ]
        )
        db.session.commit()
    html = _text(client.get(f"/contacts/{ana}"))
    history = html.split('data-testid="message-history"')[1].split("</article>")[0]
    kinds = re.findall(r'<tr data-history="(\w+)"', history)
    assert kinds == ["delivery", "reply", "delivery"]  # newest first: summer, the reply, spring
    assert f'<a href="/campaigns/{summer}">Summer sale</a>' in history
    assert f'<a href="/campaigns/{spring}">Spring sale</a>' in history
    assert "Message undeliverable to this recipient" in history
    assert "&lt;i&gt;Yes&lt;/i&gt;, tell me more" in history and "<i>Yes" not in history
    assert "Bruno here" not in history
    bruno_history = _text(client.get(f"/contacts/{bruno}")).split('data-testid="message-history"')[1]
    assert "Bruno here" in bruno_history and "Summer sale" not in bruno_history


def test_a_contacts_history_is_read_off_its_index_and_leaves_out_queued_messages(app, auth):
    """The history must not scan every delivery of the tenant: it goes by the partial contact index,
    whose predicate the query states in the same words (queued deliveries are not in it)."""
    from sqlalchemy import event

    from tenants.reports import contact_history

    workspace = _workspace(app, auth)
    spring = _campaign(app, workspace)
    (ana,) = _contacts(app, workspace, ["Ana"])
    with app.app_context(), tenant(db.session, workspace.tenant_id):
        db.session.execute(  # a big campaign, so PostgreSQL weighs its indexes
            db.text(
                "INSERT INTO deliveries (tenant_id, campaign_id, contact_id, address, state, attempts,"
                " due_at, retryable) SELECT :tenant, :campaign, 1000000 + n, '+1555' || n,"
                " CASE WHEN n % 2 = 0 THEN 'sent' ELSE 'pending' END, 0, now(), false"
                " FROM generate_series(1, 20000) n"
            ),
            {"tenant": workspace.tenant_id, "campaign": spring},
        )
        db.session.commit()
    _deliver(
        app,
        workspace,
        spring,
        [{"contact_id": ana, "sent_at": SENT_AT}, {"contact_id": ana, "state": "pending"}],
    )
    with app.app_context(), tenant(db.session, workspace.tenant_id):
        db.session.execute(db.text("ANALYZE deliveries"))
        statements = []

        def seen(conn, cursor, statement, parameters, context, executemany):
            if "FROM deliveries" in statement and "contact_id" in statement:
                statements.append((statement, parameters))

        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            history = contact_history(ana)
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
        assert [entry.delivery.state for entry in history if entry.delivery] == [DeliveryState.SENT]
        statement, parameters = statements[0]
        plan = db.session.connection().exec_driver_sql("EXPLAIN " + statement, parameters)
        plan_text = "\n".join(row[0] for row in plan)
    assert "ix_deliveries_contact" in plan_text, plan_text
