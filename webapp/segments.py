"""Segments: contacts matching conditions, with a live count while they are written."""

from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select

from tenants.contact_book import custom_field_names
from tenants.contacts import ContactList, Segment
from tenants.db import db
from tenants.segments import (
    FIELD_OPS,
    MATCHES,
    OPERATORS,
    SegmentError,
    count_matching,
    save_segment,
    validate_conditions,
)
from webapp.rendering import fragment_only, render_page
from webapp.tenancy import member_required

bp = Blueprint("segments", __name__)

CONDITION_ROWS = 6  # rows the builder offers; blank ones are ignored


def _conditions_from_form() -> tuple[list[dict], str]:
    form = request.form
    conditions = []
    for n in range(CONDITION_ROWS):
        field = (form.get(f"field_{n}") or "").strip()
        if not field:
            continue
        if field == "custom":
            field = "custom." + (form.get(f"custom_{n}") or "").strip()
        conditions.append(
            {"field": field, "op": form.get(f"op_{n}") or "equals", "value": form.get(f"value_{n}", "")}
        )
    return conditions, form.get("match") or "all"


def _builder(segment: Segment, status: int = 200, error: str | None = None, problems=()):
    return render_template(
        "segments/form.html",
        segment=segment,
        rows=CONDITION_ROWS,
        fields=sorted(FIELD_OPS),
        operators=OPERATORS,
        matches=MATCHES,
        lists=db.session.scalars(select(ContactList).order_by(ContactList.name)).all(),
        custom_fields=custom_field_names(g.workspace.tenant.id),
        error=error,
        problems=problems,
    ), status


def _save(segment: Segment):
    conditions, match = _conditions_from_form()
    name = request.form.get("name") or ""
    try:
        save_segment(segment, name, conditions, match)
    except SegmentError as exc:
        db.session.rollback()
        segment.name, segment.conditions, segment.match = name.strip()[:120], conditions, match  # as typed
        return _builder(segment, 400, problems=exc.problems)
    db.session.commit()
    flash(f"Segment {segment.name} saved.", "success")
    return redirect(url_for("contacts.index", segment=segment.id))


@bp.get("/segments")
@member_required
def index():
    segments = db.session.scalars(select(Segment).order_by(Segment.name)).all()
    return render_template("segments/index.html", segments=segments, operators=OPERATORS)


@bp.route("/segments/new", methods=["GET", "POST"])
@member_required
def new():
    segment = Segment(name="", conditions=[], match="all")
    if request.method == "POST":
        return _save(segment)
    return _builder(segment)


@bp.route("/segments/<int:segment_id>", methods=["GET", "POST"])
@member_required
def edit(segment_id: int):
    segment = db.get_or_404(Segment, segment_id)
    if request.method == "POST":
        return _save(segment)
    return _builder(segment)


@bp.post("/segments/<int:segment_id>/delete")
@member_required
def delete(segment_id: int):
    segment = db.get_or_404(Segment, segment_id)
    name = segment.name
    db.session.delete(segment)
    db.session.commit()
    flash(f"Segment {name} deleted; its contacts stay.", "success")
    return redirect(url_for("segments.index"))


@bp.post("/segments/count")
@member_required
def count():
    """The live count under the builder, recomputed as conditions change."""
    fragment_only("segment builder")
    conditions, match = _conditions_from_form()
    problems = validate_conditions(conditions, match)
    total = None if problems else count_matching(conditions, match)
    return render_page("segments/form.html", "live_count", problems=problems, total=total)
