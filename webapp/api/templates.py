"""Message templates over the API: the editor's validation (``tenants.templates``) and its preview.

A template is saved only when it compiles and suits its channel, exactly as in the editor; what is
wrong comes back as a 422 problem with one entry per part (``body``, ``media``, ``parameter 2``...).
The preview renders a saved template for a contact, or for variables given inline, and names the
variables the message would lack.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from spectree import Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tenants.api_tokens import Scope
from tenants.contacts import Contact
from tenants.db import db
from tenants.pages import ProviderKind
from tenants.templates import Template, TemplateError, apply_template_form
from tenants.templating import MEDIA_TYPES, TemplateProblem, render, variables_used
from webapp.api import bp, spec
from webapp.api.auth import requires
from webapp.api.common import (
    ERRORS,
    WRITE_ERRORS,
    IdPageQuery,
    PageInfo,
    RowId,
    StoredText,
    body,
    get_or_404,
    keyset_page,
)
from webapp.api.problems import ApiProblem, FieldError
from webapp.message_templates import SAMPLE_VARIABLES

MediaType = enum.StrEnum("MediaType", {name: name for name in MEDIA_TYPES})
"""What a template's media is sent as (``tenants.templating.MEDIA_TYPES``)."""


def _parameter(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError("a parameter is one line")
    return text


class TemplateFields(BaseModel):
    """The editor's fields (everything but the channel, which is fixed when a template is made)."""

    model_config = ConfigDict(extra="forbid")

    subject: Annotated[StoredText, Field(max_length=300)] | None = Field(
        default=None, description="Email only: the subject line, with {{variables}}"
    )
    body: StoredText | None = Field(default="", description="The text, with {{variables}} (Jinja syntax)")
    html_body: StoredText | None = Field(default=None, description="Email only: the HTML part")
    media_url: StoredText | None = Field(
        default=None, description="An https:// image, document, video or audio the provider fetches"
    )
    media_type: MediaType | None = Field(
        default=None, description="How the media is sent; null: told by the URL's file extension"
    )
    whatsapp_template: Annotated[StoredText, Field(max_length=200)] | None = Field(
        default=None, description="WhatsApp only: the name of an approved template to send instead"
    )
    whatsapp_language: Annotated[StoredText, Field(max_length=20)] | None = Field(
        default=None, description="The approved template's language code, like en_US"
    )
    whatsapp_parameters: list[Annotated[StoredText, AfterValidator(_parameter)]] | None = Field(
        default_factory=list,
        max_length=100,
        description="The approved template's parameters in order, each an expression like {{firstName}}",
    )


class TemplateIn(TemplateFields):
    """A new template."""

    name: Annotated[StoredText, Field(min_length=1, max_length=120)]
    channel: ProviderKind = Field(description="The kind of page it is written for")


class TemplatePatch(TemplateFields):
    """The fields to change; those left out stay as they are (null clears an optional one)."""

    name: Annotated[StoredText, Field(min_length=1, max_length=120)] | None = None


class TemplateOut(BaseModel):
    """A message template."""

    id: int
    name: str
    channel: ProviderKind
    subject: str | None
    body: str
    html_body: str | None
    media_url: str | None
    media_type: str | None = Field(description="As chosen; null: told by the URL's file extension")
    whatsapp_template: str | None
    whatsapp_language: str | None
    whatsapp_parameters: list[str]
    variables: list[str] = Field(description="Every variable the template reads")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, template: Template) -> TemplateOut:
        return cls(
            id=template.id,
            name=template.name,
            channel=template.channel,
            subject=template.subject,
            body=template.body or "",
            html_body=template.html_body,
            media_url=template.media_url,
            media_type=template.media_type,
            whatsapp_template=template.whatsapp_template,
            whatsapp_language=template.whatsapp_language,
            whatsapp_parameters=list(template.whatsapp_parameters or []),
            variables=sorted(variables_used(template)),
            created_at=template.created_at,
            updated_at=template.updated_at,
        )


class TemplateList(PageInfo):
    data: list[TemplateOut]


class TemplateQuery(IdPageQuery):
    channel: ProviderKind | None = Field(default=None, description="Only templates for this channel")


class PreviewIn(BaseModel):
    """Whom to render for: a contact, or variables given inline (neither: a sample person)."""

    model_config = ConfigDict(extra="forbid")

    contact_id: RowId | None = None
    variables: dict[StoredText, StoredText | int | float | bool | None] | None = Field(
        default=None,
        max_length=500,
        description='The variables by the names the template uses, like {"firstName": "Ana", "city": "Rio"}',
    )

    @model_validator(mode="after")
    def _one_source(self) -> PreviewIn:
        if self.contact_id is not None and self.variables is not None:
            raise ValueError("give contact_id or variables, not both")
        return self


class ProblemOut(BaseModel):
    """Something wrong with the template or this rendering of it."""

    part: str
    message: str
    line: int | None
    column: int | None
    kind: str

    @classmethod
    def of(cls, problem: TemplateProblem) -> ProblemOut:
        return cls(
            part=problem.part,
            message=problem.message,
            line=problem.line,
            column=problem.column,
            kind=problem.kind,
        )


class PreviewOut(BaseModel):
    """The message as it would be sent, and whether it can be."""

    ok: bool = Field(description="False: missing variables, a problem, or too long to send")
    text: str
    subject: str | None
    html: str | None
    whatsapp_parameters: list[str]
    missing: list[str] = Field(description="Variables the message uses, without a default, that are not set")
    too_long: str | None = Field(description="The channel's length limit, exceeded")
    problems: list[ProblemOut]


# --------------------------------------------------------------------------- the editor's fields


def _form_of(template: Template) -> dict[str, str]:
    """A saved template's values as the editor's fields."""
    return {
        "name": template.name or "",
        "subject": template.subject or "",
        "body": template.body or "",
        "html_body": template.html_body or "",
        "media_url": template.media_url or "",
        "media_type": template.media_type or "",
        "whatsapp_template": template.whatsapp_template or "",
        "whatsapp_language": template.whatsapp_language or "",
        "whatsapp_parameters": "\n".join(template.whatsapp_parameters or []),
    }


def _as_form(values: dict[str, Any]) -> dict[str, str]:
    """Request values as the editor sends them: text fields, parameters one per line."""
    form = {}
    for name, value in values.items():
        if name == "channel":
            continue
        if name == "whatsapp_parameters":
            form[name] = "\n".join(value or [])
        else:
            form[name] = str(value) if value is not None else ""
    return form


def _save(template: Template, fields: dict[str, str], creating: bool) -> Template:
    """Apply and commit through the editor's rules; a 422 naming each problem (or the taken name)."""
    try:
        apply_template_form(template, fields)
    except TemplateError as exc:
        db.session.rollback()
        raise ApiProblem(
            "invalid-request",
            str(exc) if not exc.problems else f"The template has problems: {exc.problems[0]}",
            errors=[FieldError(field=problem.part, message=str(problem)) for problem in exc.problems]
            or [FieldError(field="name", message=str(exc))],  # a name missing or taken
        ) from None
    if creating:
        db.session.add(template)
    try:
        db.session.commit()
    except IntegrityError:  # another request took the name meanwhile: as the editor's check says it
        db.session.rollback()
        taken = f"There is already a template called {fields['name'].strip()}."
        raise ApiProblem("invalid-request", taken, errors=[FieldError(field="name", message=taken)]) from None
    return template


# --------------------------------------------------------------------------- routes


@bp.get("/templates")
@requires(Scope.READ)
@spec.validate(query=TemplateQuery, resp=Response(HTTP_200=TemplateList, **ERRORS), tags=["templates"])
def list_templates(query: TemplateQuery):
    """The workspace's templates, in id order (keyset pages)."""
    statement = select(Template)
    if query.channel is not None:
        statement = statement.where(Template.channel == query.channel)
    templates, info = keyset_page(statement, Template, query)
    return TemplateList(data=[TemplateOut.of(t) for t in templates], next_after=info.next_after)


@bp.post("/templates")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(json=TemplateIn, resp=Response(HTTP_201=TemplateOut, **WRITE_ERRORS), tags=["templates"])
def create_template(json: TemplateIn):
    """A new template, saved only if it compiles and suits its channel (as in the editor)."""
    json = body(json)
    template = Template(channel=json.channel, body="", whatsapp_parameters=[])
    _save(template, _as_form(json.model_dump()), creating=True)
    return TemplateOut.of(template), 201, {"Location": f"{bp.url_prefix}/templates/{template.id}"}


@bp.get("/templates/<int:template_id>")
@requires(Scope.READ)
@spec.validate(resp=Response(HTTP_200=TemplateOut, **ERRORS), tags=["templates"])
def get_template(template_id: int):
    """One template."""
    return TemplateOut.of(get_or_404(Template, template_id))


@bp.patch("/templates/<int:template_id>")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(json=TemplatePatch, resp=Response(HTTP_200=TemplateOut, **WRITE_ERRORS), tags=["templates"])
def update_template(template_id: int, json: TemplatePatch):
    """Change some fields; the whole template is checked again. Campaigns already started keep the
    message they started with."""
    json, template = body(json), get_or_404(Template, template_id)
    fields = _form_of(template) | _as_form(json.model_dump(exclude_unset=True))
    return TemplateOut.of(_save(template, fields, creating=False))


@bp.delete("/templates/<int:template_id>")
@requires(Scope.CAMPAIGNS_WRITE)
@spec.validate(resp=Response(HTTP_204=None, **ERRORS), tags=["templates"])
def delete_template(template_id: int):
    """Delete the template (as the editor does; campaigns that started keep their message)."""
    db.session.delete(get_or_404(Template, template_id))
    db.session.commit()
    return "", 204


@bp.post("/templates/<int:template_id>/preview")
@requires(Scope.READ)
@spec.validate(json=PreviewIn, resp=Response(HTTP_200=PreviewOut, **WRITE_ERRORS), tags=["templates"])
def preview_template(template_id: int, json: PreviewIn):
    """The template rendered for a contact (or inline variables), with the variables it would lack."""
    json, template = body(json), get_or_404(Template, template_id)
    if json.contact_id is not None:
        rendered = render(template, get_or_404(Contact, json.contact_id))
    else:
        rendered = render(template, json.variables if json.variables is not None else SAMPLE_VARIABLES)
    return PreviewOut(
        ok=rendered.ok,
        text=rendered.text,
        subject=rendered.subject,
        html=rendered.html,
        whatsapp_parameters=list(rendered.whatsapp_parameters),
        missing=sorted(rendered.missing),
        too_long=rendered.too_long,
        problems=[ProblemOut.of(problem) for problem in rendered.problems],
    )
