"""Segments: conditions on fields, custom fields and lists, counted live, on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask_migrate import upgrade

from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db
from tenants.models import Tenant
from tenants.scoping import TenantNotSet, all_tenants, tenant
from tenants.segments import (
    SegmentError,
    audience_query,
    count_matching,
    field_ops,
    segment_filter,
    validate_conditions,
)
from tests.conftest import built_app

PEOPLE = [
    {
        "first_name": "Ana",
        "last_name": "Silva",
        "email": "ana@acme.example",
        "phone": "+5511900000001",
        "company": "Acme Ltd",
        "custom_fields": {"city": "Berlin", "signup_day": "2024-03-10", "plan": "Gold", "Home Town": "Porto"},
        "created_at": datetime(2024, 1, 15, 12, tzinfo=UTC),
    },
    {
        "first_name": "Bruno",
        "last_name": "Souza",
        "email": "bruno@acme.example",
        "phone": "+5511900000002",
        "company": None,
        "custom_fields": {"city": "berlin", "signup_day": "2024-06-01T09:30:00", "score": 42},
        "created_at": datetime(2024, 6, 20, 1, 30, tzinfo=UTC),  # 19 June in São Paulo
    },
    {
        "first_name": "Carla",
        "last_name": None,
        "email": None,
        "phone": "+5511900000003",
        "company": "  ",
        "custom_fields": {"city": "Lisbon", "signup_day": "soon"},
        "opted_out": True,
        "created_at": datetime(2024, 6, 20, 12, tzinfo=UTC),
    },
    {
        "first_name": "Dan",
        "last_name": "Okafor",
        "email": "dan@shop.example",
        "phone": None,
        "company": "50%_off Inc",
        "custom_fields": {},
        "created_at": datetime(2025, 2, 1, tzinfo=UTC),
    },
    {
        "first_name": "Eve",
        "last_name": "Berliner",
        "email": "eve@shop.example",
        "phone": "+5511900000005",
        "company": "Berlin Partners",
        "custom_fields": {"city": "", "signup_day": "2023-12-31"},
        "created_at": datetime(2025, 2, 2, tzinfo=UTC),
    },
]

# (conditions, match, first names expected); "VIP" and "Other" stand for list ids.
CASES = [
    ([], "all", {"Ana", "Bruno", "Carla", "Dan", "Eve"}),
    ([{"field": "first_name", "op": "equals", "value": "ANA"}], "all", {"Ana"}),
    ([{"field": "custom.city", "op": "equals", "value": "Berlin"}], "all", {"Ana", "Bruno"}),
    ([{"field": "custom.city", "op": "not_equals", "value": "berlin"}], "all", {"Carla", "Dan", "Eve"}),
    ([{"field": "custom.city", "op": "contains", "value": "ERL"}], "all", {"Ana", "Bruno"}),
    ([{"field": "custom.city", "op": "is_empty"}], "all", {"Dan", "Eve"}),
    ([{"field": "custom.city", "op": "not_empty"}], "all", {"Ana", "Bruno", "Carla"}),
    ([{"field": "company", "op": "is_empty"}], "all", {"Bruno", "Carla"}),
    ([{"field": "company", "op": "contains", "value": "%_"}], "all", {"Dan"}),
    (
        [{"field": "company", "op": "not_contains", "value": "berlin"}],
        "all",
        {"Ana", "Bruno", "Carla", "Dan"},
    ),
    ([{"field": "email", "op": "contains", "value": "@shop."}], "all", {"Dan", "Eve"}),
    ([{"field": "phone", "op": "equals", "value": "+55 11 90000-0002"}], "all", {"Bruno"}),
    ([{"field": "last_name", "op": "is_empty"}], "all", {"Carla"}),
    ([{"field": "custom.signup_day", "op": "before", "value": "2024-06-01"}], "all", {"Ana", "Eve"}),
    ([{"field": "custom.signup_day", "op": "after", "value": "2024-03-10"}], "all", {"Bruno"}),
    ([{"field": "custom.Home Town", "op": "equals", "value": "porto"}], "all", {"Ana"}),
    ([{"field": "custom.score", "op": "equals", "value": 42}], "all", {"Bruno"}),
    ([{"field": "created_at", "op": "before", "value": "2024-06-20"}], "all", {"Ana", "Bruno"}),
    ([{"field": "created_at", "op": "after", "value": "2024-06-20"}], "all", {"Dan", "Eve"}),
    ([{"field": "created_at", "op": "equals", "value": "2024-06-20"}], "all", {"Carla"}),
    ([{"field": "opted_out", "op": "equals", "value": "true"}], "all", {"Carla"}),
    ([{"field": "opted_out", "op": "equals", "value": False}], "all", {"Ana", "Bruno", "Dan", "Eve"}),
    ([{"field": "list", "op": "in_list", "value": "VIP"}], "all", {"Ana", "Carla"}),
    ([{"field": "list", "op": "not_in_list", "value": "VIP"}], "all", {"Bruno", "Dan", "Eve"}),
    ([{"field": "list", "op": "in_list", "value": "Other"}], "all", set()),  # another tenant's list
    (
        [
            {"field": "custom.city", "op": "equals", "value": "berlin"},
            {"field": "list", "op": "in_list", "value": "VIP"},
        ],
        "all",
        {"Ana"},
    ),
    (
        [
            {"field": "custom.city", "op": "equals", "value": "lisbon"},
            {"field": "company", "op": "contains", "value": "berlin"},
        ],
        "any",
        {"Carla", "Eve"},
    ),
]


def _populate() -> dict[str, int]:
    """Acme's five people and a VIP list, plus Other Co with a look-alike; returns ids by name."""
    with all_tenants(db.session):
        acme = Tenant(name="Acme", slug="acme", timezone="America/Sao_Paulo")
        other = Tenant(name="Other Co", slug="other-co")
        db.session.add_all([acme, other])
        db.session.flush()
    with tenant(db.session, other.id):
        twin = Contact(first_name="Ana", custom_fields={"city": "Berlin"})
        other_list = ContactList(name="VIP")
        db.session.add_all([twin, other_list])
        db.session.flush()
        db.session.add(ContactListMember(list_id=other_list.id, contact_id=twin.id))
        db.session.flush()
        ids = {"Other": other_list.id}
    with tenant(db.session, acme.id):
        people = {p["first_name"]: Contact(**p) for p in PEOPLE}
        vip = ContactList(name="VIP")
        db.session.add_all([*people.values(), vip])
        db.session.flush()
        for name in ("Ana", "Carla"):
            db.session.add(ContactListMember(list_id=vip.id, contact_id=people[name].id))
        ids.update(acme=acme.id, VIP=vip.id)
        db.session.commit()
    return ids


def _with_lists(conditions: list[dict], ids: dict[str, int]) -> list[dict]:
    return [
        {**c, "value": ids[c["value"]]} if c["op"] in ("in_list", "not_in_list") else c for c in conditions
    ]


def _names(conditions, match, ids) -> set[str]:
    query = audience_query(_with_lists(conditions, ids), match, Contact.first_name)
    return set(db.session.scalars(query))


@pytest.fixture
def acme(app):
    with app.app_context():
        ids = _populate()
    with app.app_context(), tenant(db.session, ids["acme"]):
        yield ids


@pytest.mark.parametrize(("conditions", "match", "expected"), CASES)
def test_conditions_choose_contacts_on_postgresql(acme, conditions, match, expected):
    assert _names(conditions, match, acme) == expected
    assert count_matching(_with_lists(conditions, acme), match) == len(expected)


def test_the_same_conditions_work_on_sqlite(tmp_path):
    with built_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'crier.db'}") as app, app.app_context():
        upgrade()
        ids = _populate()
        with tenant(db.session, ids["acme"]):
            results = {repr(c): _names(c, match, ids) for c, match, _ in CASES}
    assert results == {repr(c): expected for c, _, expected in CASES}


def test_created_at_days_are_the_tenants_days(acme):
    on_the_19th = [{"field": "created_at", "op": "equals", "value": "2024-06-19"}]
    assert count_matching(on_the_19th, "all") == 1  # Bruno, 01:30 UTC on the 20th, in São Paulo
    assert count_matching(on_the_19th, "all", timezone="UTC") == 0
    on_the_20th = [{"field": "created_at", "op": "equals", "value": "2024-06-20"}]
    assert count_matching(on_the_20th, "all", timezone="UTC") == 2


def test_counting_needs_a_tenant(acme):
    with tenant(db.session, None), pytest.raises(TenantNotSet):
        count_matching([], "all")


@pytest.mark.parametrize(
    ("conditions", "match", "message"),
    [
        ([{"field": "shoe_size", "op": "equals", "value": "42"}], "all", "no field called 'shoe_size'"),
        ([{"field": "email", "op": "sounds_like", "value": "x"}], "all", "no operator called 'sounds_like'"),
        ([{"field": "email", "op": "before", "value": "2024-01-01"}], "all", "'email' cannot be compared"),
        ([{"field": "custom.day", "op": "after", "value": "31/12/2024"}], "all", "not a date"),
        ([{"field": "created_at", "op": "before", "value": "2024-02-30"}], "all", "not a date"),
        ([{"field": "first_name", "op": "equals", "value": "  "}], "all", "needs a value"),
        ([{"field": "custom.", "op": "equals", "value": "x"}], "all", "name the custom field"),
        ([{"field": "opted_out", "op": "equals", "value": "maybe"}], "all", "true or false"),
        ([{"field": "list", "op": "in_list", "value": "vip"}], "all", "choose a list"),
        (["email equals x"], "all", "is not a condition"),
        ([], "some", "all conditions or any"),
        ("email = x", "all", "not a list"),
    ],
)
def test_invalid_conditions_get_messages_not_errors(conditions, match, message):
    problems = validate_conditions(conditions, match)
    assert any(message in p for p in problems), problems
    with pytest.raises(SegmentError) as raised:
        segment_filter(conditions, match)
    assert raised.value.problems == problems


def test_messages_say_which_condition():
    problems = validate_conditions(
        [{"field": "email", "op": "contains", "value": "@"}, {"field": "nope", "op": "equals", "value": "x"}]
    )
    assert problems == ["Condition 2: there is no field called 'nope'."]


def test_operators_offered_per_field():
    assert "before" in field_ops("custom.signup_day") and "before" not in field_ops("email")
    assert field_ops("list") == ("in_list", "not_in_list") and field_ops("custom.") == ()
