"""Template rendering: variables, defaults, missing values, channel limits, errors and the sandbox."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from tenants.contacts import Contact, ContactList, ContactListMember
from tenants.db import db
from tenants.models import Tenant
from tenants.pages import ProviderKind
from tenants.scoping import all_tenants, tenant
from tenants.templates import Template
from tenants.templating import (
    CHANNEL_LIMITS,
    MAX_OUTPUT_CHARS,
    check_template,
    compile_template,
    contact_variables,
    missing_for_audience,
    render,
    variables_used,
    variables_with_default,
)


def message(body: str = "", channel: ProviderKind = ProviderKind.WHATSAPP, **parts) -> Template:
    return Template(name="t", channel=channel, body=body, **parts)


def ana(**changes) -> Contact:
    fields = {
        "first_name": "Ana",
        "last_name": "Silva",
        "phone": "+5511961234567",
        "email": "ana@acme.example",
        "company": "Acme",
        "custom_fields": {"city": "Berlin", "Signup Day": "2024-05-01", "email": "other@x.example"},
    }
    return Contact(**{**fields, **changes})


def test_contact_variables_names():
    variables = contact_variables(ana(company="  ", custom_fields={**ana().custom_fields, "vip": ""}))
    assert variables["firstName"] == variables["first_name"] == "Ana"
    assert variables["lastName"] == variables["last_name"] == "Silva"
    assert variables["name"] == "Ana Silva" and variables["phone"] == "+5511961234567"
    assert variables["email"] == "ana@acme.example"  # a custom field never shadows a built-in
    assert variables["city"] == "Berlin" and variables["signup_day"] == "2024-05-01"
    assert variables["custom"]["Signup Day"] == "2024-05-01"
    assert "company" not in variables and "vip" not in variables  # empty: missing, so defaults apply
    assert contact_variables(Contact(last_name="Souza"))["name"] == "Souza"


def test_variables_and_defaults():
    rendered = render(
        message(
            "Hi {{firstName}} from {{ city }}, {{ nickname|default('friend') }} at {{company|d('home')}}"
        ),
        contact_variables(ana(company=None)),
    )
    assert rendered.text == "Hi Ana from Berlin, friend at home"
    assert rendered.ok and rendered.missing == frozenset()
    assert render(message("Hi {{ firstName }}"), {"firstName": "{{ 7 * 7 }}"}).text == "Hi {{ 7 * 7 }}"


def test_missing_variables_are_reported_not_blanked():
    template = message(
        "Hi {{ firstName }} {{ lastName }}, your code is {{ code }}{% if vip %} (VIP){% endif %}"
    )
    rendered = render(template, contact_variables(ana(last_name=None)))
    assert rendered.missing == {"lastName", "code"}  # `vip` is only tested, so it is not missing
    assert not rendered.ok
    assert render(message("{{ nick.upper() }} {{ score + 1 }}"), {}).missing == {"nick", "score"}
    assert render(
        message("{{ custom['Signup Day'] }} {{ custom.plan }}"), contact_variables(ana())
    ).missing == {"plan"}


def test_text_is_not_escaped_but_html_is_and_subjects_stay_on_one_line():
    template = message(
        "Hi {{ firstName }} & co",
        channel=ProviderKind.SMTP,
        subject="Hello\n{{ firstName }}\r\nBcc: everyone@example.com",
        html_body="<p>Hi {{ firstName }}</p>{{ '<br>'|safe }}",
    )
    rendered = render(template, contact_variables(ana(first_name="<b>Ana</b>")))
    assert rendered.text == "Hi <b>Ana</b> & co"
    assert rendered.html == "<p>Hi &lt;b&gt;Ana&lt;/b&gt;</p><br>"
    assert rendered.subject == "Hello <b>Ana</b> Bcc: everyone@example.com"


def test_whatsapp_approved_template_parameters():
    template = message(
        whatsapp_template="order_shipped",
        whatsapp_language="pt_BR",
        whatsapp_parameters=["{{ firstName }}", "{{ custom.order|default('your order') }}", "{{ note }}"],
    )
    rendered = render(template, {**contact_variables(ana()), "note": "line one\nline two"})
    assert rendered.whatsapp_parameters == ("Ana", "your order", "line one\nline two")
    assert [(p.part, "line breaks" in p.message) for p in rendered.problems] == [("parameter 3", True)]


@pytest.mark.parametrize(
    ("channel", "limit"), [(ProviderKind.MESSENGER, 2_000), (ProviderKind.WHATSAPP, 4_096)]
)
def test_channel_limits_apply_to_the_rendered_text(channel, limit):
    assert CHANNEL_LIMITS[channel].text == limit
    template = message("Note: {{ note }}", channel=channel)
    fits = render(template, {"note": "x" * (limit - 6)})
    assert fits.ok and len(fits.text) == limit
    over = render(template, {"note": "x" * (limit - 5)})
    assert over.too_long.startswith(f"The message is {limit + 1:,} characters long")
    assert over.too_long.endswith(f"allows {limit:,}.") and not over.ok


def test_email_subject_limit_and_no_limit_for_webhooks():
    assert CHANNEL_LIMITS[ProviderKind.SMTP].text is None
    long_subject = render(message("x", channel=ProviderKind.SMTP, subject="{{ s }}"), {"s": "s" * 999})
    assert "subject is 999 characters" in long_subject.too_long
    assert render(message("{{ s }}", channel=ProviderKind.WEBHOOK), {"s": "s" * 50_000}).ok


def test_syntax_errors_have_part_line_and_column():
    problems = check_template(
        message("Hello\n  {{ firstName }\n", channel=ProviderKind.SMTP, subject="Hi {% if x %}there")
    )
    by_part = {p.part: p for p in problems}
    assert (by_part["body"].line, by_part["body"].column) == (2, 16)
    assert "unexpected '}'" in by_part["body"].message
    assert by_part["subject"].line == 1 and "endif" in by_part["subject"].message
    assert str(by_part["body"]).startswith("body, line 2, column 16: ")


def test_unknown_filters_and_tests_are_named_with_their_place():
    (problem,) = check_template(message("Hi\n{{ firstName | shout }}"))
    assert (problem.kind, problem.line, problem.column) == ("unknown_filter", 2, 16)
    assert problem.message == "unknown filter 'shout'"
    (problem,) = check_template(message("{% if x is odd %}{% endif %}{% if x is weird %}{% endif %}"))
    assert (problem.kind, problem.column) == ("unknown_test", 40)


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ lipsum.__globals__ }}",
    '{{ "{0.__class__}".format(firstName) }}',
    "{{ '{0.upper}'.format(firstName) }}",
    "{{ firstName[('__cla' ~ 'ss__')] }}",
    "{{ firstName.upper[('__se' ~ 'lf__')] }}",
    "{{ custom.get[('__glo' ~ 'bals__')] }}",
    "{{ firstName|attr('__class__') }}",
    "{% include 'secrets.html' %}",
    "{% import 'x.html' as x %}",
    "{% extends 'base.html' %}",
    "{% from 'x.html' import y %}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{{ custom.clear() }}{{ custom.update(x=1) }}",
    "{{ firstName.ljust(10**9) }}",
    "{{ '%s' % firstName }}",
]


@pytest.mark.parametrize("source", SANDBOX_ESCAPES)
def test_sandbox_escapes_are_refused_as_problems(source):
    contact = ana()
    rendered = render(message(source), contact_variables(contact))
    assert rendered.problems and not rendered.ok
    assert "class" not in rendered.text and "function" not in rendered.text and "{" not in rendered.text
    assert contact.custom_fields["city"] == "Berlin"


def test_config_and_request_are_just_missing_variables():
    rendered = render(message("{{ config }}{{ request }}{{ g }}"), {})
    assert rendered.text == "" and rendered.missing == {"config", "request", "g"} and not rendered.problems


DENIAL_OF_SERVICE = [
    ("{{ range(10**9)|list|length }}", "Range too big"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "1,000 iterations"),
    ("{{ 'a' * 10**9 }}", "longer than"),
    ("{{ [1] * 10**9 }}", "longer than"),
    ("{{ 10 ** (10 ** 10) }}", "too large"),
    ("{{ 2 ** 1000000 }}", "too large"),
    ("{% set a = 'x' * 90000 %}{% set a = a ~ a %}{{ a }}", "longer than"),
    ("{% set a = 'x' * 90000 %}{{ a + a }}", "longer than"),
    ("{{ firstName|center(10**9) }}", "center"),
    ("{{ 'x'|replace('', 'y' * 90000) }}", "longer than"),
    ("{{ (['y' * 90000] * 1000)|join }}", "longer than"),
    ("{{ '%999999999d' % 1 }}", "formatting"),
    ("{{ '{:>999999999}'.format(1) }}", "str.format"),
    ("{% for i in range(999) %}{{ 'x' * 99999 }}{% endfor %}", "characters"),
]


@pytest.mark.parametrize(("source", "complaint"), DENIAL_OF_SERVICE)
def test_expensive_templates_stop_quickly_with_a_problem(source, complaint):
    started = time.perf_counter()
    rendered = render(message(source, channel=ProviderKind.WEBHOOK), contact_variables(ana()))
    assert time.perf_counter() - started < 2
    assert any(complaint in p.message for p in rendered.problems), rendered.problems
    assert len(rendered.text) <= MAX_OUTPUT_CHARS


def test_runtime_errors_are_problems_with_a_line():
    rendered = render(message("a\nb {{ 1 / 0 }}\n{{ firstName.nope }}"), contact_variables(ana()))
    (problem,) = rendered.problems
    assert (problem.kind, problem.line, problem.message) == ("runtime", 2, "division by zero")


@pytest.mark.parametrize(
    "source", ["{{", "{%", "{{ }}", "{% for %}", "}}{{", "{{ a.b.c.d( }}", "{# x", "{{ 'é' ~ ", "{% raw %}x"]
)
def test_garbage_never_raises(source):
    rendered = render(message(source), {})
    assert rendered.problems and all(p.line for p in rendered.problems)


def test_loops_and_filters_that_messages_use():
    variables = {**contact_variables(ana()), "items": ["tea", "cake"]}
    source = (
        "{% for item in items %}{{ loop.index }}. {{ item|title }}{% if not loop.last %}, {% endif %}"
        "{% endfor %} | {{ items|join(' & ') }} | {{ name.split()[0]|upper }}"
        " | {{ company|lower|truncate(3, true, '', 0) }}"
    )
    assert render(message(source), variables).text == "1. Tea, 2. Cake | tea & cake | ANA | acm"


def test_variables_used_and_their_defaults():
    template = message(
        "{{ firstName|default('you') }} {{ city }} {{ custom['Signup Day'] }} {{ code|d('-') }} {{ code }}"
        "{% for x in items %}{{ x }}{% endfor %}{% set local = 1 %}{{ local }}{{ range(2)|list }}",
        channel=ProviderKind.SMTP,
        subject="{{ company }}",
    )
    assert variables_used(template) == {"firstName", "city", "Signup Day", "code", "items", "company"}
    assert variables_with_default(template) == {"firstName"}


def test_missing_for_audience_counts_each_variable():
    template = message("Hi {{ firstName }} from {{ city }} ({{ company|default('-') }})")
    people = [ana(), ana(first_name=None), ana(custom_fields={}), Contact(company="X")]
    assert missing_for_audience(template, people) == {"city": 2, "firstName": 2}
    assert missing_for_audience(template, people, limit=2) == {"firstName": 1}
    assert missing_for_audience(message("{{"), people) == {}


def test_missing_for_a_lists_contacts(app):
    with app.app_context(), all_tenants(db.session):
        acme = Tenant(name="Acme", slug="acme")
        db.session.add(acme)
        db.session.flush()
        with tenant(db.session, acme.id):
            vip = ContactList(name="VIP")
            people = [ana(phone=f"+55119612000{n}", email=f"p{n}@acme.example") for n in range(3)]
            people[1].custom_fields = {}
            db.session.add_all([vip, *people])
            db.session.flush()
            db.session.add_all(ContactListMember(list_id=vip.id, contact_id=p.id) for p in people[:2])
            db.session.commit()
            members = db.session.scalars(
                select(Contact).join(ContactListMember, ContactListMember.contact_id == Contact.id)
            )
            template = message("{{ firstName }} in {{ city }}")
            assert missing_for_audience(template, members) == {"city": 1}


def test_structure_problems():
    assert [p.message for p in check_template(message("", channel=ProviderKind.SMTP))] == [
        "An email needs a subject.",
        "An email needs a text or HTML body.",
    ]
    assert check_template(message("", channel=ProviderKind.MESSENGER))[0].part == "body"
    assert check_template(message(whatsapp_template="hello", whatsapp_language="en")) == []


@pytest.mark.parametrize(
    ("url", "chosen", "sent_as"),
    [
        ("https://cdn.example.com/menu.JPG?v=2", None, "image"),
        ("https://cdn.example.com/menu.pdf", None, "document"),
        ("https://cdn.example.com/clip.mp4", None, "video"),
        ("https://cdn.example.com/note.ogg", None, "audio"),
        ("https://cdn.example.com/menu.jpg", "document", "document"),
        ("https://cdn.example.com/menu", None, None),
    ],
)
def test_a_medias_type_is_the_one_chosen_else_the_urls_extension(url, chosen, sent_as):
    template = message("", media_url=url, media_type=chosen)

    assert template.media_kind == sent_as
    problems = [p.message for p in check_template(template)]
    assert problems == (
        [] if sent_as else ["Choose the media type: it cannot be told from the URL's file extension."]
    )


def test_a_media_only_message_needs_no_text_but_a_caption_has_whatsapps_limit():
    photo = "https://cdn.example.com/menu.jpg"
    assert check_template(message("", media_url=photo)) == []
    assert check_template(message("", channel=ProviderKind.SMTP, subject="Menu", media_url=photo)) == []
    assert render(message("x" * 1_024, media_url=photo), {}).ok
    too_long = render(message("x" * 1_025, media_url=photo), {}).too_long
    assert (
        too_long == "The message is 1,025 characters long; WhatsApp allows 1,024 as the caption of a media."
    )
    assert render(message("x" * 1_025, channel=ProviderKind.WEBHOOK, media_url=photo), {}).ok


def test_compiling_is_cached_and_rendering_is_fast():
    body = (
        "Hi {{ firstName|default('there') }}! Your order for {{ company|default('your team') }} ships from "
        "{{ city }} on {{ signup_day }}. Questions? Reply here or write to help@shop.example. "
        "Thanks, {{ name }}."
    )
    compiled = compile_template(message(body))
    assert compile_template(message(body)) is compiled  # from the cache
    variables = [contact_variables(ana(first_name=f"P{n}")) for n in range(5_000)]
    started = time.perf_counter()
    for v in variables:
        compiled.render(v)
    per_second = len(variables) / (time.perf_counter() - started)
    assert per_second > 10_000, f"{per_second:,.0f} renders/s"  # about 80,000 on one idle core


UNPRINTABLE = [  # (source, the problem, found before rendering)
    ("{{ custom.items }}", "'custom.items' is a method, not a value to print", True),
    ("{{ firstName.upper }}", "'firstName.upper' is a method, not a value to print", True),
    ("{{ range }}", "'range' is a method or function, not a value to print", True),
    ("{{ custom }}", "'custom' holds several values; print one of them, such as custom[\"key\"]", True),
    ("{% set f = custom.get %}{{ f }}", "'custom.get' is a method", True),
    ("{% for x in [1] %}{{ loop.cycle }}{% endfor %}", "'loop.cycle' is a method or function", False),
    ("{{ custom.tags }}", "'custom.tags' is a list; print one item (custom.tags[0]) or join them", False),
    ("{{ custom['Signup Day'].split() }}", "A value is a list", False),
]


@pytest.mark.parametrize(("source", "complaint", "static"), UNPRINTABLE)
def test_only_plain_values_are_printed_never_an_objects_description(source, complaint, static):
    """``{{ custom.items }}`` printed ``<built-in method items of dict object at 0x…>``."""
    contact = ana(custom_fields={**ana().custom_fields, "tags": ["vip", "early"]})
    rendered = render(message(f"Hi {source}"), contact_variables(contact))
    assert any(complaint in p.message for p in rendered.problems), rendered.problems
    assert " at 0x" not in rendered.text and "<" not in rendered.text and not rendered.ok
    saved = check_template(message(source))
    assert any(complaint in p.message and p.line == 1 for p in saved) is static, saved


def test_plain_values_and_called_methods_still_print():
    contact = ana(custom_fields={"items": "3 boxes", "tags": ["vip", "early"], "score": 4.5, "vip": True})
    source = (
        "{{ custom['items'] }}; {{ custom.tags|join(', ') }}; {{ custom.tags[0] }}; {{ custom.score }};"
        " {{ custom.vip }}; {{ firstName.upper() }}; {{ custom.keys()|list|length }};"
        " {% for key, value in custom.items() %}{{ key }}{% endfor %}; {% for x in custom.tags %}"
        "{{ loop.index }}{% endfor %}"
    )
    rendered = render(message(source), contact_variables(contact))
    assert rendered.problems == () and check_template(message(source)) == []
    assert rendered.text == "3 boxes; vip, early; vip; 4.5; True; ANA; 4; itemstagsscorevip; 12"
