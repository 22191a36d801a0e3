"""Rendering message templates per contact, in a sandbox.

Templates use Jinja syntax on a deliberately small language: ``{{ variables }}``, the
``default`` filter and a few other filters, ``{% if %}``, ``{% for %}``, ``{% set %}``,
``{% with %}`` and ``{% filter %}``. What a template may reach is only the variables it is
given (see :func:`contact_variables`); attributes are limited to a few string, list and
dict methods; no other template can be included, imported or extended; every
operation that could make a huge value or loop for long is bounded; and only plain values
(text, numbers, true/false, dates) are printed: a method, a function, a dict or a list is
refused with a problem naming it (found when saving where the source shows it, else when
rendering), never printed as Python's description of an object. Text parts are not
HTML and are rendered without escaping; ``html_body`` is autoescaped.

A variable a contact lacks and that has no ``default`` is reported in
:attr:`RenderedMessage.missing` instead of being printed as a blank. Nothing here raises
for a bad template: syntax errors, forbidden constructs and runtime failures all come
back as :class:`TemplateProblem`\\ s with the part, line and (where known) column.

Compile once (:func:`compile_template`, cached by source) and render many times: a
campaign start renders every recipient.

A template's media (``media_url`` and ``media_type``, not rendered) is checked with its
structure, so at save and at campaign start: :func:`media_problem` says what a channel
cannot carry, and :func:`media_type_of` which type is sent.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import date, time
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

from jinja2 import filters as jinja_filters
from jinja2 import meta, nodes, pass_context, pass_eval_context
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.lexer import Token, TokenStream
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext, Undefined, markup_join, missing, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from tenants.pages import ProviderKind

MAX_SOURCE_CHARS = 50_000  # one part's template text
MAX_OUTPUT_CHARS = 100_000  # one part's rendered text
MAX_VALUE_CHARS = 100_000  # any string or list a template builds
MAX_WORK_CHARS = 5_000_000  # characters built by joins, concatenations and repeats, per render
MAX_LOOP_STEPS = 1_000  # loop iterations, per render
MAX_INT_BITS = 4_096


@dataclass(frozen=True)
class ChannelLimits:
    """How long a rendered message may be on a channel (None: no limit Crier enforces)."""

    text: int | None
    subject: int | None = None


CHANNEL_LIMITS: dict[ProviderKind, ChannelLimits] = {
    ProviderKind.MESSENGER: ChannelLimits(text=2_000),
    ProviderKind.WHATSAPP: ChannelLimits(text=4_096),
    ProviderKind.EVOLUTION: ChannelLimits(text=4_096),
    ProviderKind.SMTP: ChannelLimits(text=None, subject=998),
    ProviderKind.WEBHOOK: ChannelLimits(text=None),
}
CHANNEL_NAMES = {
    ProviderKind.MESSENGER: "Messenger",
    ProviderKind.WHATSAPP: "WhatsApp",
    ProviderKind.EVOLUTION: "WhatsApp (Evolution)",
    ProviderKind.SMTP: "Email",
    ProviderKind.WEBHOOK: "Webhook",
}

#: What a template's media can be; each adapter sends it in its provider's own form (WIRE.md).
MEDIA_TYPES: dict[str, str] = {"image": "Image", "document": "Document", "video": "Video", "audio": "Audio"}
MEDIA_CAPTION_LIMIT = 1_024  # WhatsApp's caption of an image, a video or a document
MEDIA_URL_MAX_CHARS = 1_000  # Template.media_url's column
_CAPTION_CHANNELS = (ProviderKind.WHATSAPP, ProviderKind.EVOLUTION)  # the text is the media's caption
_MEDIA_EXTENSIONS: dict[str, str] = {
    **dict.fromkeys(("jpg", "jpeg", "png", "webp", "gif"), "image"),
    **dict.fromkeys(("mp4", "3gp", "mov", "m4v"), "video"),
    **dict.fromkeys(("mp3", "ogg", "opus", "oga", "m4a", "aac", "amr", "wav"), "audio"),
    **dict.fromkeys(
        ("pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "txt", "csv", "zip"), "document"
    ),
}
_MEDIA_URL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>\"]")


def media_file_name(url: str) -> str:
    """The last part of ``url``'s path, decoded ("report.pdf"): the file name a document is shown with."""
    return posixpath.basename(unquote(urlsplit(url).path)) or "file"


def guess_media_type(url: str | None) -> str | None:
    """The media type ``url``'s file extension tells (``.jpg`` image, ``.pdf`` document...), or None."""
    if not url:
        return None
    extension = posixpath.splitext(urlsplit(url).path)[1].lstrip(".").lower()
    return _MEDIA_EXTENSIONS.get(extension)


def media_type_of(url: str | None, chosen: str | None) -> str | None:
    """The media type sent with ``url``: the one chosen, else the one its extension tells (None: no URL)."""
    if not url:
        return None
    return chosen if chosen in MEDIA_TYPES else guess_media_type(url)


def media_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a template's media, or None.

    The provider fetches it from the internet for every recipient (Crier never does), so it must
    be a plain https URL: no credentials, nothing a provider would have to guess at. The sandbox
    never fetches media either, so development and tests use https URLs too.
    """
    if len(url) > MEDIA_URL_MAX_CHARS:
        return f"The media URL is longer than {MEDIA_URL_MAX_CHARS:,} characters."
    if _MEDIA_URL_FORBIDDEN.search(url):
        return "The media URL cannot contain spaces, quotes or angle brackets."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        return "The media URL is not a valid URL."
    if parts.scheme != "https" or not parts.hostname:
        return "The media URL must be a full https:// address, like https://cdn.example.com/photo.jpg."
    if parts.username is not None or parts.password is not None:
        return "The media URL cannot carry a user name or password: every provider would see them."
    return None


def media_problem(
    channel: ProviderKind | None, media_url: str | None, chosen: str | None, *, has_text: bool, approved: bool
) -> str | None:
    """Why the channel cannot send this media as the template stands (None when it can, or there is none).

    WhatsApp (Cloud and Evolution) sends the text as the caption, except with audio, which has
    none; an approved WhatsApp template carries an image, a video or a document as its header.
    Messenger's attachment carries no text at all. Email and webhook pages send the link.
    """
    if not media_url:
        return None
    url_problem = media_url_problem(media_url)
    if url_problem is not None:
        return url_problem
    if chosen and chosen not in MEDIA_TYPES:
        return f"Choose the media type among {', '.join(MEDIA_TYPES)}."
    media_type = media_type_of(media_url, chosen)
    if media_type is None:
        return "Choose the media type: it cannot be told from the URL's file extension."
    if channel is ProviderKind.MESSENGER and has_text:
        return (
            "Messenger cannot send text with an attachment in one message: leave the message empty to "
            "send the media alone, or remove the media URL."
        )
    if channel in _CAPTION_CHANNELS and media_type == "audio":
        if approved:
            return "An approved WhatsApp template's header can be an image, a video or a document, not audio."
        if has_text:
            return (
                f"{CHANNEL_NAMES[channel]} sends audio without a caption: leave the message empty to send "
                "the audio alone, or choose another media type."
            )
    return None


#: Contact columns and their variable names (the first is the name the editor suggests).
CONTACT_FIELDS: dict[str, tuple[str, ...]] = {
    "first_name": ("firstName", "first_name"),
    "last_name": ("lastName", "last_name"),
    "phone": ("phone",),
    "email": ("email",),
    "company": ("company",),
}
BUILTIN_VARIABLES = frozenset(
    {name for names in CONTACT_FIELDS.values() for name in names} | {"name", "custom"}
)
_CONTACT_FIELD_ITEMS = tuple(CONTACT_FIELDS.items())


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_JINJA_RESERVED = _words(
    "and or not in is if else elif endif for endfor set endset with endwith filter endfilter "
    "true false none True False None range loop self super caller varargs kwargs"
)
_NEWLINES = re.compile(r"\r\n|\r|\n")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TemplateProblem:
    """Something wrong with a template, to show next to the editor."""

    part: str  # "subject", "body", "html_body", "parameter 1", ...
    message: str
    line: int | None = None  # 1-based, within the part
    column: int | None = None  # 1-based
    kind: str = "syntax"  # syntax | forbidden | unknown_filter | unknown_test | runtime | size | structure

    def __str__(self) -> str:
        where = self.part
        if self.line is not None:
            where += f", line {self.line}"
            if self.column is not None:
                where += f", column {self.column}"
        return f"{where}: {self.message}"


@dataclass(slots=True)
class RenderedMessage:
    """One template rendered for one contact (read it; it is not meant to be changed)."""

    text: str
    subject: str | None = None
    html: str | None = None
    whatsapp_parameters: tuple[str, ...] = ()
    missing: frozenset[str] = frozenset()  # variables used without a default that the contact lacks
    too_long: str | None = None  # the channel's limit, exceeded (a sentence for the user)
    problems: tuple[TemplateProblem, ...] = ()  # errors: the message cannot be sent as it is

    @property
    def ok(self) -> bool:
        return not (self.problems or self.missing or self.too_long)


class TemplateLike(Protocol):
    """What rendering reads from a :class:`tenants.templates.Template` (saved or not)."""

    channel: Any
    subject: str | None
    body: str | None
    html_body: str | None
    whatsapp_parameters: list[str] | None


# --------------------------------------------------------------------------- variables


_CUSTOM_NAMES: dict[str, tuple[str | None, bool]] = {}


def _custom_name(key: str) -> tuple[str | None, bool]:
    """The variable name of a custom field, and whether it is the key itself (not an alias)."""
    found = _CUSTOM_NAMES.get(key)
    if found is not None:
        return found
    if key.isidentifier() and not key.startswith("_"):
        name, exact = key, True
    else:
        name, exact = re.sub(r"\W+", "_", key.strip().lower()).strip("_"), False
    if not name.isidentifier() or name in BUILTIN_VARIABLES or name in _JINJA_RESERVED:
        name, exact = None, False
    if len(_CUSTOM_NAMES) > 10_000:
        _CUSTOM_NAMES.clear()
    _CUSTOM_NAMES[key] = (name, exact)
    return name, exact


def contact_variables(contact: Any) -> dict[str, Any]:
    """The variables a template sees for ``contact`` (a Contact, or any row with its attributes).

    Built in: ``firstName``/``first_name``, ``lastName``/``last_name``, ``name`` (first and
    last), ``phone``, ``email``, ``company``. Each custom field by its key when the key is a
    name a template can write (``city``), otherwise by an alias (``"Signup Day"`` →
    ``signup_day``); every custom field also as ``custom["Any Key"]``. Custom fields never
    shadow the built-in names. Empty values are left out, so ``default`` applies to them.
    """
    variables: dict[str, Any] = {}
    for column, names in _CONTACT_FIELD_ITEMS:
        value = getattr(contact, column, None)
        if value is not None:
            if isinstance(value, str):
                value = value.strip()
                if not value:
                    continue
            for name in names:
                variables[name] = value
    first, last = variables.get("firstName"), variables.get("lastName")
    if first is not None or last is not None:
        variables["name"] = f"{first} {last}" if first is not None and last is not None else (first or last)
    fields = getattr(contact, "custom_fields", None) or {}
    custom = {
        str(key): value
        for key, value in fields.items()
        if value is not None and (value.__class__ is not str or value.strip())
    }
    variables["custom"] = custom
    aliases = None
    for key, value in custom.items():
        name, exact = _CUSTOM_NAMES.get(key) or _custom_name(key)
        if name is None:
            continue
        if exact:
            variables[name] = value
        else:
            if aliases is None:
                aliases = {}
            aliases.setdefault(name, value)
    if aliases:
        for name, value in aliases.items():
            variables.setdefault(name, value)
    return variables


# --------------------------------------------------------------------------- the sandbox

_STATE: ContextVar[_RenderState | None] = ContextVar("crier_template_render", default=None)


class _RenderState:
    __slots__ = ("missing", "steps", "work")

    def __init__(self) -> None:
        self.missing: set[str] = set()
        self.steps = 0
        self.work = 0


class _MissingValue(UndefinedError):
    """A missing variable was used in an operation (already recorded as missing)."""


def _spend(chars: int) -> None:
    if chars > MAX_VALUE_CHARS:
        raise SecurityError(f"the template builds a value longer than {MAX_VALUE_CHARS:,} characters")
    state = _STATE.get()
    if state is not None:
        state.work += chars
        if state.work > MAX_WORK_CHARS:
            raise SecurityError("the template does too much work")


class _ReportingUndefined(Undefined):
    """A variable the contact lacks: noted as missing when printed, falsy in ``if``, chainable.

    Undefined values of any other kind (an unsafe attribute, an attribute a value does not
    have) raise when used, so they surface as problems.
    """

    __slots__ = ()

    def _is_variable(self) -> bool:
        return self._undefined_exception is UndefinedError and (
            self._undefined_obj is missing or type(self._undefined_obj) is dict
        )

    def _note(self) -> None:
        if not self._is_variable():
            raise self._undefined_exception(self._undefined_message)
        state = _STATE.get()
        if state is not None:
            state.missing.add(str(self._undefined_name))

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> Any:
        if self._is_variable():
            self._note()
            raise _MissingValue(self._undefined_message)
        raise self._undefined_exception(self._undefined_message)

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__" and name[-2:] == "__":
            raise AttributeError(name)
        if self._is_variable():
            return self
        return self._fail_with_undefined_error()

    def __getitem__(self, key: Any) -> Any:
        return self if self._is_variable() else self._fail_with_undefined_error()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self if self._is_variable() else self._fail_with_undefined_error()

    __add__ = __radd__ = __sub__ = __rsub__ = _fail_with_undefined_error
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _fail_with_undefined_error
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _fail_with_undefined_error
    __pos__ = __neg__ = __pow__ = __rpow__ = _fail_with_undefined_error
    __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error
    __int__ = __float__ = __complex__ = _fail_with_undefined_error

    def __str__(self) -> str:
        self._note()
        return ""

    def __len__(self) -> int:
        self._note()
        return 0

    def __iter__(self) -> Iterator[Any]:
        self._note()
        return iter(())

    def __html__(self) -> str:
        return str(self)

    def __hash__(self) -> int:
        return id(type(self))

    def __eq__(self, other: Any) -> bool:
        return type(self) is type(other)

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)


_SAFE_METHODS: tuple[tuple[type, frozenset[str]], ...] = (
    (
        str,
        _words(
            "capitalize casefold count endswith find isalnum isalpha isdigit islower isnumeric isspace "
            "istitle isupper lower lstrip rfind rsplit rstrip split splitlines startswith strip swapcase "
            "title upper"
        ),
    ),
    (dict, _words("get items keys values")),
    (list, _words("count index")),
    (tuple, _words("count index")),
)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, narrowed to what message templates need."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        if isinstance(obj, Undefined | LoopContext):
            return super().is_safe_attribute(obj, attr, value)
        for kind, names in _SAFE_METHODS:
            if isinstance(obj, kind):
                return attr in names
        return False

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if super().wrap_str_format(value) is None:
            return None

        def refused(*args: Any, **kwargs: Any) -> str:
            raise SecurityError("str.format is not available in templates; use filters")

        return refused

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            raise SecurityError("'%' string formatting is not available in templates; use filters")
        if operator == "**" and _huge_power(left, right):
            raise SecurityError("the template computes a number that is too large")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    _spend(len(sequence) * max(times, 0))
            if _huge_product(left, right):
                raise SecurityError("the template computes a number that is too large")
        result = self.binop_table[operator](left, right)
        if operator == "+" and isinstance(result, str | list | tuple):
            _spend(len(result))
        return result


def _huge_power(base: Any, exponent: Any) -> bool:
    if not (isinstance(base, int) and isinstance(exponent, int)):
        return False
    return exponent > 0 and abs(base) > 1 and exponent * abs(base).bit_length() > MAX_INT_BITS


def _huge_product(left: Any, right: Any) -> bool:
    if not (isinstance(left, int) and isinstance(right, int)):
        return False
    return left.bit_length() + right.bit_length() > MAX_INT_BITS


def _center(value: Any, width: int = 80) -> str:
    if not isinstance(width, int) or width > MAX_VALUE_CHARS:
        raise SecurityError(f"center() width is limited to {MAX_VALUE_CHARS:,}")
    return jinja_filters.do_center(value, width)


@pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old_text, new_text = str(s), str(old), str(new)
    times = text.count(old_text) if old_text else len(text) + 1
    if count is not None:
        times = min(times, max(int(count), 0))
    _spend(len(text) + times * max(len(new_text) - len(old_text), 0))
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)


@pass_context
def _join(context: Context, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    items = list(value)
    if attribute is not None:
        items = list(map(jinja_filters.make_attrgetter(context.environment, attribute), items))
    _spend(sum(len(str(item)) for item in items) + len(str(d)) * max(len(items) - 1, 0))
    return jinja_filters.do_join(context.eval_ctx, items, d)


@pass_context
def _bounded_concat(context: Context, parts: list[Any]) -> str:
    result = (markup_join if context.eval_ctx.autoescape else str_join)(parts)
    _spend(len(result))
    return result


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    state = _STATE.get()
    for item in iterable:
        if state is not None:
            state.steps += 1
            if state.steps > MAX_LOOP_STEPS:
                raise SecurityError(f"loops are limited to {MAX_LOOP_STEPS:,} iterations in all")
        yield item


@pass_context
def _bounded_loop(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    return _counted(iterable)


_PLAIN_VALUES = (str, int, float, Decimal, date, time, type(None))


def _not_printable(value: Any, label: str | None) -> str | None:
    """Why ``value`` (written ``label`` in the template, if known) must not be printed; None if it may."""
    if isinstance(value, (*_PLAIN_VALUES, Undefined)):
        return None
    what = f"'{label}'" if label else "A value"
    if callable(value):
        return f"{what} is a method or function, not a value to print"
    if isinstance(value, Mapping):
        return f"{what} holds several values; print one of them" + (
            f', such as {label}["key"]' if label else ""
        )
    if isinstance(value, list | tuple):
        join = f"({label}[0]) or join them ({label}|join(', '))" if label else "or join them (|join(', '))"
        return f"{what} is a list; print one item {join}"
    return f"{what} is not something a message can print"


def _printed(value: Any, label: str | None) -> Any:
    """Every ``{{ expression }}`` passes here: plain values go on, anything else is a problem."""
    reason = _not_printable(value, label)
    if reason is not None:
        raise SecurityError(reason)
    return value


def _source_of(node: nodes.Node) -> str | None:
    """A variable, attribute or item written back as template text (``custom.items``); else None."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr | nodes.Getitem):
        inner = _source_of(node.node)
        if inner is None:
            return None
        if isinstance(node, nodes.Getattr):
            return f"{inner}.{node.attr}"
        key = node.arg.value if isinstance(node.arg, nodes.Const) else None
        if isinstance(key, int):
            return f"{inner}[{key}]"
        if isinstance(key, str):
            return f'{inner}["{key}"]'
    return None


_LOOP_FILTER, _CONCAT_FILTER, _PRINT_FILTER = "_crier_loop", "_crier_concat", "_crier_print"
_ALLOWED_FILTERS = _words(
    "abs capitalize count d default e escape filesizeformat first float forceescape int last "
    "length list lower max min reverse round safe sort string striptags sum title trim "
    "truncate unique upper urlencode urlize wordcount"
)
_ALLOWED_STATEMENTS = _words("if elif else endif for endfor set endset with endwith filter endfilter")
_FORBIDDEN_STATEMENTS = {
    **dict.fromkeys(
        ("include", "import", "from", "extends"), "templates cannot include, import or extend other templates"
    ),
    **dict.fromkeys(("macro", "endmacro", "call", "endcall"), "macros are not available in templates"),
    **dict.fromkeys(("block", "endblock"), "blocks are not available in templates"),
}


def _make_environment(autoescape: bool) -> _Sandbox:
    env = _Sandbox(autoescape=autoescape, undefined=_ReportingUndefined, cache_size=0)
    env.filters = {name: env.filters[name] for name in _ALLOWED_FILTERS}
    env.filters.update(
        center=_center,
        replace=_replace,
        join=_join,
        **{_LOOP_FILTER: _bounded_loop, _CONCAT_FILTER: _bounded_concat, _PRINT_FILTER: _printed},
    )
    env.globals = {"range": env.globals["range"]}
    return env


_TEXT_ENV = _make_environment(autoescape=False)
_HTML_ENV = _make_environment(autoescape=True)
_GLOBALS = dict(_TEXT_ENV.globals)


# --------------------------------------------------------------------------- compiling


class _Scan:
    """Parses one part, keeping where each token starts so errors get a column."""

    def __init__(self, env: _Sandbox, source: str) -> None:
        lines = _NEWLINES.split(source)
        if lines and lines[-1] == "":
            lines.pop()
        self.env = env
        self.source = "\n".join(lines)  # what Jinja's lexer works on
        self.tokens: list[tuple[Token, int]] = []
        self._starts: dict[int, int] = {}
        self._end = 0  # where the last raw token ends
        self._start = 0  # where it starts
        self._failed_at: int | None = None
        self._parser: Parser | None = None

    def _raw(self) -> Iterator[tuple[int, str, str]]:
        raw = self.env.lexer.tokeniter(self.source, None)
        while True:
            try:
                lineno, kind, value = next(raw)
            except StopIteration:
                return
            except TemplateSyntaxError as exc:
                found = re.search(r" at (\d+)$", exc.message or "")
                self._failed_at = int(found.group(1)) if found else self._skip_space(self._end)
                raise
            start = self.source.find(value, self._end) if value else -1
            self._start = start if start >= 0 else self._end
            self._end = self._start + len(value)
            yield lineno, kind, value

    def _stream(self) -> Iterator[Token]:
        wrapped = self.env.lexer.wrap(self._raw())
        while True:
            try:
                token = next(wrapped)
            except StopIteration:
                return
            except TemplateSyntaxError:
                if self._failed_at is None:
                    self._failed_at = self._start
                raise
            self.tokens.append((token, self._start))
            self._starts[id(token)] = self._start
            yield token

    def _skip_space(self, pos: int) -> int:
        while pos < len(self.source) and self.source[pos].isspace():
            pos += 1
        return pos

    def parse(self) -> nodes.Template:
        self._parser = Parser(self.env, "")
        self._parser.stream = TokenStream(self._stream(), None, None)
        return self._parser.parse()

    def line_column(self, pos: int) -> tuple[int, int]:
        line_start = self.source.rfind("\n", 0, pos) + 1
        return self.source.count("\n", 0, pos) + 1, pos - line_start + 1

    def syntax_problem(self, part: str, exc: TemplateSyntaxError) -> TemplateProblem:
        pos = self._failed_at
        if pos is None and self._parser is not None:
            current = self._parser.stream.current
            pos = self._starts.get(id(current))
            if pos is None and current.type == "eof":
                pos = len(self.source)
        line, column = exc.lineno, None
        if pos is not None:
            found_line, found_column = self.line_column(min(pos, len(self.source)))
            if found_line == line or line is None:
                line, column = found_line, found_column
        message = re.sub(r" at \d+$", "", exc.message or "syntax error")
        return TemplateProblem(part, message, line, column, "syntax")

    def static_problems(self, part: str) -> list[TemplateProblem]:
        """What parses but is not allowed: forbidden statements and names, unknown filters and tests."""
        problems = []

        def refuse(pos: int, message: str, kind: str = "forbidden") -> None:
            problems.append(TemplateProblem(part, message, *self.line_column(pos), kind))

        statement = None
        previous: list[Token] = []
        for token, pos in self.tokens:
            before = previous[-1] if previous else None
            before2 = previous[-2] if len(previous) > 1 else None
            if token.type == "block_begin":
                statement = None
            elif token.type == "name":
                name = token.value
                if name.startswith("_"):
                    refuse(pos, f"'{name}': names starting with '_' are not allowed")
                elif before is not None and before.type == "block_begin":
                    statement = name
                    if name not in _ALLOWED_STATEMENTS:
                        reason = _FORBIDDEN_STATEMENTS.get(name, "this statement is not available")
                        refuse(pos, f"'{{% {name} %}}': {reason}")
                elif (before is not None and before.type == "pipe") or (
                    statement == "filter" and before2 is not None and before2.type == "block_begin"
                ):
                    if name not in self.env.filters:
                        refuse(pos, f"unknown filter '{name}'", "unknown_filter")
                elif before is not None and before.type == "name" and before.value in ("is", "not"):
                    is_test = before.value == "is" or (
                        before2 is not None and before2.type == "name" and before2.value == "is"
                    )
                    if is_test and name not in self.env.tests and name != "not":
                        refuse(pos, f"unknown test '{name}'", "unknown_test")
                elif name == "self" and (before is None or before.type != "dot"):
                    refuse(pos, "'self' is not available in templates")
                elif name == "recursive" and statement == "for":
                    refuse(pos, "recursive loops are not available in templates")
            elif (
                token.type == "string"
                and before is not None
                and before.type == "lbracket"
                and str(token.value).startswith("_")
            ):
                refuse(pos, f"'{token.value}': names starting with '_' are not allowed")
            previous.append(token)
        return problems


class _Bound(NodeTransformer):
    """Counts every loop iteration, bounds every ``~`` concatenation and checks every printed value."""

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        self.generic_visit(node)
        node.nodes = [
            child
            if isinstance(child, nodes.TemplateData)
            else nodes.Filter(
                child, _PRINT_FILTER, [nodes.Const(_source_of(child))], [], None, None, lineno=child.lineno
            )
            for child in node.nodes
        ]
        return node

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        self.generic_visit(node)
        parts = nodes.List(list(node.nodes), lineno=node.lineno)
        return nodes.Filter(parts, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


_DICT_METHODS = next(names for kind, names in _SAFE_METHODS if kind is dict)
_VALUE_METHODS = frozenset().union(*(names for kind, names in _SAFE_METHODS if kind is not dict))


def _unprintable_problems(ast: nodes.Template) -> list[TemplateProblem]:
    """What the source shows cannot be printed: a method named without calling it
    (``{{ custom.items }}``, ``{{ firstName.upper }}``), or ``custom`` or ``range`` themselves."""
    called = {id(call.node) for call in ast.find_all(nodes.Call)}
    problems = []
    for node in ast.find_all(nodes.Getattr):
        inner = node.node
        if id(node) in called or (isinstance(inner, nodes.Name) and inner.name == "loop"):
            continue
        on_custom = isinstance(inner, nodes.Name) and inner.name == "custom"
        if node.attr in (_DICT_METHODS if on_custom else _VALUE_METHODS):
            label = _source_of(node) or node.attr
            hint = f'; for the custom field {node.attr}, write custom["{node.attr}"]' if on_custom else ""
            problems.append(
                TemplateProblem(
                    "", f"'{label}' is a method, not a value to print{hint}", node.lineno, None, "forbidden"
                )
            )
    for output in ast.find_all(nodes.Output):
        for child in output.nodes:
            if isinstance(child, nodes.Name) and child.name in ("custom", "range"):
                value = {"custom": {}, "range": range}[child.name]
                reason = _not_printable(value, child.name) or ""
                problems.append(TemplateProblem("", reason, child.lineno, None, "forbidden"))
    return problems


def _variables_in(ast: nodes.Template, env: _Sandbox) -> tuple[frozenset[str], frozenset[str]]:
    """Every variable the template reads, and those whose every use has a ``default``."""
    names = set(meta.find_undeclared_variables(ast)) - set(env.globals)
    uses: Counter[str] = Counter()
    defaulted_uses: Counter[str] = Counter()

    def variable_of(node: nodes.Node) -> str | None:
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in names:
            return node.name if node.name != "custom" else None
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            inner = node.node
            if isinstance(inner, nodes.Name) and inner.name == "custom" and "custom" in names:
                key = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
                return key if isinstance(key, str) else None
        return None

    for node in ast.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        variable = variable_of(node)
        if variable is not None:
            uses[variable] += 1
    for node in ast.find_all(nodes.Filter):
        if node.name in ("default", "d") and node.node is not None:
            variable = variable_of(node.node)
            if variable is not None:
                defaulted_uses[variable] += 1
    found = (names - {"custom"}) | set(uses)
    defaulted = {name for name in found if uses[name] and defaulted_uses[name] >= uses[name]}
    return frozenset(found), frozenset(defaulted)


@dataclass(frozen=True)
class _CompiledSource:
    template: Any  # jinja2.Template, or None when the source has problems
    problems: tuple[TemplateProblem, ...]  # with an empty part name
    variables: frozenset[str] = frozenset()
    defaulted: frozenset[str] = frozenset()
    loops: bool = False


@lru_cache(maxsize=1024)
def _compile_source(source: str, html: bool) -> _CompiledSource:
    env = _HTML_ENV if html else _TEXT_ENV
    if len(source) > MAX_SOURCE_CHARS:
        return _CompiledSource(
            None, (TemplateProblem("", f"longer than {MAX_SOURCE_CHARS:,} characters", kind="size"),)
        )
    scan = _Scan(env, source)
    try:
        ast = scan.parse()
    except TemplateSyntaxError as exc:
        return _CompiledSource(None, (scan.syntax_problem("", exc),))
    except Exception as exc:  # nesting deep enough to exhaust the parser's recursion
        return _CompiledSource(None, (TemplateProblem("", _describe(exc)),))
    problems = scan.static_problems("") or _unprintable_problems(ast)
    if problems:
        return _CompiledSource(None, tuple(problems))
    try:
        variables, defaulted = _variables_in(ast, env)
        bounded = _Bound().visit(ast)
        bounded.set_environment(env)
        template = env.template_class.from_code(env, env.compile(bounded), env.make_globals(None))
    except TemplateSyntaxError as exc:
        return _CompiledSource(None, (TemplateProblem("", exc.message or str(exc), exc.lineno),))
    except Exception as exc:  # the compiler refusing something the checks above let through
        return _CompiledSource(None, (TemplateProblem("", _describe(exc)),))
    loops = any(True for _ in ast.find_all(nodes.For))
    return _CompiledSource(template, (), variables, defaulted, loops)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "the template needs too much memory"
    if isinstance(exc, RecursionError):
        return "the template nests too deeply"
    return str(exc) or type(exc).__name__


def _template_line(exc: BaseException) -> int | None:
    """The template line a runtime error happened on, from the generated code's frames."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    template: Any  # jinja2.Template
    loops: bool  # only a template with loops can render more than its source and values allow

    def render(self, parent: dict[str, Any], problems: list[TemplateProblem]) -> str | None:
        template = self.template
        context = Context(template.environment, parent, None, {})
        try:
            if self.loops:
                chunks, size = [], 0
                for chunk in template.root_render_func(context):
                    size += len(chunk)
                    if size > MAX_OUTPUT_CHARS:
                        break
                    chunks.append(chunk)
                text = "".join(chunks)
            else:
                text = "".join(template.root_render_func(context))
                size = len(text)
        except _MissingValue:
            return None  # reported in RenderedMessage.missing
        except Exception as exc:
            problems.append(TemplateProblem(self.name, _describe(exc), _template_line(exc), None, "runtime"))
            return None
        if size > MAX_OUTPUT_CHARS:
            problems.append(
                TemplateProblem(self.name, f"renders more than {MAX_OUTPUT_CHARS:,} characters", kind="size")
            )
            return None
        return text


_PARAMETER_TEXT = re.compile(r"[\n\t]| {5,}")


_NO_PROBLEMS: tuple[TemplateProblem, ...] = ()


@dataclass(frozen=True)
class CompiledTemplate:
    """A template compiled once, to render for many contacts."""

    channel: ProviderKind | None
    problems: tuple[TemplateProblem, ...]  # found without rendering: syntax, forbidden constructs, structure
    variables: frozenset[str]  # every variable any part reads
    defaulted: frozenset[str]  # those with a ``default`` wherever they are read
    subject: _Part | None = field(default=None, repr=False)
    body: _Part | None = field(default=None, repr=False)
    html_body: _Part | None = field(default=None, repr=False)
    parameters: tuple[_Part | None, ...] = field(default=(), repr=False)
    caption_limit: int | None = None  # the text goes as a media caption, with this limit

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self, variables: Mapping[str, Any] | Any) -> RenderedMessage:
        """Render every part for one contact's variables (see :func:`contact_variables`) or contact."""
        state = _RenderState()
        token = _STATE.set(state)
        problems = list(self.problems) if self.problems else []
        if not isinstance(variables, dict) and not isinstance(variables, Mapping):
            variables = contact_variables(variables)
        try:
            parent = {**variables, **_GLOBALS}
            text = self.body.render(parent, problems) if self.body is not None else None
            subject = self.subject.render(parent, problems) if self.subject is not None else None
            html = self.html_body.render(parent, problems) if self.html_body is not None else None
            parameters = (
                tuple((part.render(parent, problems) or "") if part else "" for part in self.parameters)
                if self.parameters
                else ()
            )
        finally:
            _STATE.reset(token)
        if subject is not None:
            subject = _NEWLINES.sub(" ", subject).strip()
        for number, value in enumerate(parameters, start=1):
            if _PARAMETER_TEXT.search(value):
                problems.append(
                    TemplateProblem(
                        f"parameter {number}",
                        "WhatsApp refuses template parameters with line breaks, tabs or more than "
                        "four spaces in a row",
                        kind="runtime",
                    )
                )
        text = text or ""
        return RenderedMessage(
            text,
            subject,
            html,
            parameters,
            frozenset(state.missing) if state.missing else _NOTHING_MISSING,
            self._too_long(text, subject),
            tuple(problems) if problems else _NO_PROBLEMS,
        )

    def _too_long(self, text: str, subject: str | None) -> str | None:
        limits = CHANNEL_LIMITS.get(self.channel) if self.channel else None
        if limits is None:
            return None
        if self.caption_limit is not None and len(text) > self.caption_limit:
            channel = CHANNEL_NAMES[self.channel]
            return (
                f"The message is {len(text):,} characters long; {channel} allows {self.caption_limit:,} "
                "as the caption of a media."
            )
        if limits.text is not None and len(text) > limits.text:
            channel = CHANNEL_NAMES[self.channel]
            return f"The message is {len(text):,} characters long; {channel} allows {limits.text:,}."
        if limits.subject is not None and subject is not None and len(subject) > limits.subject:
            channel = CHANNEL_NAMES[self.channel]
            return f"The subject is {len(subject):,} characters long; {channel} allows {limits.subject:,}."
        return None


_NOTHING_MISSING: frozenset[str] = frozenset()


def _channel_of(template: TemplateLike) -> ProviderKind | None:
    try:
        return ProviderKind(template.channel) if template.channel else None
    except ValueError:
        return None


class _Sources(NamedTuple):
    """Everything compiling reads from a template: the cache key."""

    channel: ProviderKind | None
    subject: str | None
    body: str | None
    html_body: str | None
    parameters: tuple[str, ...]
    whatsapp_template: bool
    whatsapp_language: bool
    media_url: str | None
    media_type: str | None


_TEXT_CHANNELS = (ProviderKind.WHATSAPP, ProviderKind.EVOLUTION, ProviderKind.MESSENGER)


def _structure_problems(sources: _Sources) -> list[TemplateProblem]:
    body = (sources.body or "").strip()
    problems = []
    media = media_problem(
        sources.channel,
        sources.media_url,
        sources.media_type,
        has_text=bool(body),
        approved=sources.channel is ProviderKind.WHATSAPP and sources.whatsapp_template,
    )
    if media is not None:
        problems.append(TemplateProblem("media", media, kind="structure"))
    if sources.channel is ProviderKind.SMTP:
        if not (sources.subject or "").strip():
            problems.append(TemplateProblem("subject", "An email needs a subject.", kind="structure"))
        if not body and not (sources.html_body or "").strip() and not sources.media_url:
            problems.append(TemplateProblem("body", "An email needs a text or HTML body.", kind="structure"))
    elif sources.channel is ProviderKind.WHATSAPP and sources.whatsapp_template:
        if not sources.whatsapp_language:
            problems.append(
                TemplateProblem(
                    "whatsapp_language",
                    "Say which language of the approved template to send.",
                    kind="structure",
                )
            )
    elif sources.channel in _TEXT_CHANNELS and not body and not sources.media_url:
        problems.append(TemplateProblem("body", "The message has no text.", kind="structure"))
    return problems


def _caption_limit(sources: _Sources) -> int | None:
    """The text's limit when it goes as a media caption (WhatsApp's 1,024), else None (the channel's)."""
    if sources.channel in _CAPTION_CHANNELS and sources.media_url and not sources.whatsapp_template:
        return MEDIA_CAPTION_LIMIT
    return None


def compile_template(template: TemplateLike) -> CompiledTemplate:
    """Compile every part of ``template`` (cached by source, so calling this again is cheap)."""
    return _compile_sources(
        _Sources(
            _channel_of(template),
            template.subject,
            template.body,
            template.html_body,
            tuple(str(p) if p is not None else "" for p in template.whatsapp_parameters or ()),
            bool(getattr(template, "whatsapp_template", None)),
            bool(getattr(template, "whatsapp_language", None)),
            getattr(template, "media_url", None) or None,
            getattr(template, "media_type", None) or None,
        )
    )


@lru_cache(maxsize=256)
def _compile_sources(sources: _Sources) -> CompiledTemplate:
    problems: list[TemplateProblem] = []
    variables: set[str] = set()
    defaulted: set[str] = set()
    not_defaulted: set[str] = set()

    def part(name: str, source: str | None, html: bool = False) -> _Part | None:
        if not source:
            return None
        compiled = _compile_source(str(source), html)
        problems.extend(replace(problem, part=name) for problem in compiled.problems)
        variables.update(compiled.variables)
        defaulted.update(compiled.defaulted)
        not_defaulted.update(compiled.variables - compiled.defaulted)
        return _Part(name, compiled.template, compiled.loops) if compiled.template is not None else None

    subject, body = part("subject", sources.subject), part("body", sources.body)
    html_body = part("html_body", sources.html_body, html=True)
    parameters = tuple(
        part(f"parameter {number}", source) for number, source in enumerate(sources.parameters, start=1)
    )
    problems.extend(_structure_problems(sources))
    return CompiledTemplate(
        channel=sources.channel,
        problems=tuple(problems),
        variables=frozenset(variables),
        defaulted=frozenset(defaulted - not_defaulted),
        subject=subject,
        body=body,
        html_body=html_body,
        parameters=parameters,
        caption_limit=_caption_limit(sources),
    )


def check_template(template: TemplateLike) -> list[TemplateProblem]:
    """Problems found without rendering: syntax errors, forbidden constructs, unknown filters, structure."""
    return list(compile_template(template).problems)


def variables_used(template: TemplateLike) -> set[str]:
    """Every variable the template reads (``custom["Key"]`` counts as ``Key``)."""
    return set(compile_template(template).variables)


def variables_with_default(template: TemplateLike) -> set[str]:
    """The variables the template reads only through ``|default(...)``: never missing."""
    return set(compile_template(template).defaulted)


def render(template: TemplateLike, variables: Mapping[str, Any]) -> RenderedMessage:
    """Render ``template`` with one contact's variables; never raises for a bad template."""
    return compile_template(template).render(variables)


def missing_for_audience(
    template: TemplateLike, contacts: Iterable[Any], limit: int | None = None
) -> dict[str, int]:
    """How many of ``contacts`` (Contacts, rows, or variable dicts) lack each variable, most first.

    Looks at the first ``limit`` contacts when given.
    """
    compiled = compile_template(template)
    counts: Counter[str] = Counter()
    for number, contact in enumerate(contacts):
        if limit is not None and number >= limit:
            break
        variables = contact if isinstance(contact, Mapping) else contact_variables(contact)
        counts.update(compiled.render(variables).missing)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


__all__ = [
    "BUILTIN_VARIABLES",
    "CHANNEL_LIMITS",
    "CONTACT_FIELDS",
    "MAX_LOOP_STEPS",
    "MAX_OUTPUT_CHARS",
    "MEDIA_CAPTION_LIMIT",
    "MEDIA_TYPES",
    "ChannelLimits",
    "CompiledTemplate",
    "RenderedMessage",
    "TemplateLike",
    "TemplateProblem",
    "check_template",
    "compile_template",
    "contact_variables",
    "guess_media_type",
    "media_file_name",
    "media_problem",
    "media_type_of",
    "media_url_problem",
    "missing_for_audience",
    "render",
    "variables_used",
    "variables_with_default",
]
