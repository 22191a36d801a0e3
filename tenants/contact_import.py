"""CSV contact import: look at a file, map its columns, import it in batches.

The flow the web UI drives (see each function's docstring):

1. upload: :func:`check_import_size`, then :func:`new_import` (profiles the file with
   :func:`profile_file` and records a ``ContactImport`` in state ``uploaded`` with the encoding,
   delimiter, header and a guessed mapping) — or :func:`profile_file` alone;
2. mapping screen: :func:`preview_rows`, then :func:`configure_import` (mapping, target list,
   update existing or not; state ``queued``), then ``tasks.imports.start_import`` enqueues it;
3. the worker runs :func:`import_contacts` (streams the file, validates rows, writes batches,
   reports :class:`ImportProgress`), and the result page offers :func:`rejections_csv`.

Rules, in one place:

* Phones become E.164 (:func:`tenants.phones.to_e164`); national numbers are read in the country
  chosen for the import (``ContactImport.phone_country``, asked on the mapping screen when
  :func:`has_national_numbers`), else in the tenant's default country. Emails are validated and
  lower-cased. A row needs a valid phone, or no phone and a valid email. A phone that is present
  but invalid rejects the row.
* An invalid email does not reject a row that has a valid phone: the contact is imported without
  email and the text is kept in the custom field ``invalid_email`` (counted in the notes).
* Names and company longer than their columns (200) are cut to 200 characters (counted in notes).
* A row whose email belongs to another contact — an existing one or an earlier row of the file
  with another phone — is rejected ("email … is already used by another contact").
* Rows naming a contact an earlier row of the same import already wrote are *merged* into it:
  non-empty values of the later row win, custom fields are combined, empty cells never erase.
* Existing contacts are updated the same way with ``update_existing``; otherwise they are left
  alone (*skipped*). Either way they are added to the target list, like every contact the file
  names.
* Empty cells never erase data; unmapped columns become custom fields; ``ignore`` drops a column.
* Rejected rows are kept (``ImportRejection``: the physical line where the record starts, the header
  being line 1, the reason, the raw text) and downloadable with :func:`rejections_csv`.
* Rows whose every cell is empty (blank lines) are skipped and not counted.

How a batch (:data:`BATCH_ROWS` rows, one transaction) is written:

1. one lookup of the batch's phones and emails among the tenant's contacts (on PostgreSQL one
   unique-index probe per value, see ``_PG_EXISTING``);
2. in memory, row by row, each row is decided: new contact, merged into one this import already
   wrote, update or skip of an existing one, or rejected (email collision);
3. new contacts: one ``INSERT … ON CONFLICT (tenant_id, phone|email) DO UPDATE … RETURNING id,
   (xmax = 0)`` over the whole batch — the conflict arm only matters when another writer created
   the same contact since the lookup, and ``xmax = 0`` tells which rows were really inserted;
   existing contacts: one set-based ``UPDATE … FROM`` (rows it would not change are not written);
   rejections: one multi-row insert; then the import row's counters, and commit;
4. the batch's contacts join the target list (``INSERT … ON CONFLICT DO NOTHING``), on
   PostgreSQL on a second connection in parallel, one batch behind.

Meanwhile a reader thread parses and validates the next batches (at most two ahead), so memory
stays flat whatever the size of the file. A batch that meets a unique violation, deadlock or
busy database is rolled back and redone (the lookup then sees the other writer's rows).

Each contact this import creates gets ``created_at`` = the import's ``started_at``, and each one it
writes ``updated_at`` = ``started_at``: that marker is how a later batch knows a contact was
already written by this same import (so its rows count as *merged*) without keeping a set of
every contact in memory. (An existing contact the file leaves unchanged is not written, so a
second row for it in a later batch counts as *updated* again rather than *merged*.)
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
import queue
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TextIO

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from flask import current_app, has_app_context
from sqlalchemy import JSON, Integer, any_, bindparam, cast, delete, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError

from tenants.contacts import (
    Contact,
    ContactImport,
    ContactList,
    ContactListMember,
    ImportRejection,
    ImportStatus,
)
from tenants.db import db, utcnow
from tenants.models import Tenant
from tenants.phones import InvalidPhone, to_e164
from tenants.scoping import CrossTenantWrite, all_tenants, current_tenant_id, tenant
from tenants.spreadsheet import neutralise_row

log = logging.getLogger(__name__)

MAX_IMPORT_BYTES = 50 * 1024 * 1024  # overridden by the app's MAX_IMPORT_BYTES setting
BATCH_ROWS = 2000
SAMPLE_ROWS = 5
STALE_RUN_SECONDS = 300  # a running import whose row has not moved for this long has lost its worker
TEXT_LIMIT = 200  # first_name, last_name, company columns
EMAIL_LIMIT = 254
RAW_LIMIT = 65536
MAX_RECORD_LINES = 20  # a quoted value over more lines is taken for a quote that was never closed
MAX_COLUMNS = 500  # more makes a mapping page no one can use, and costs the server to build
MAX_HEADER_BYTES = 256 * 1024  # the first row (the column names) is read at most this far
CUSTOM_NAME_LIMIT = 100
INVALID_EMAIL_FIELD = "invalid_email"
STANDARD_TARGETS = ("phone", "email", "first_name", "last_name", "company")
IGNORE = "ignore"
CUSTOM = "custom:"
NATIONAL_SCAN_ROWS = 200  # rows looked at for national phone numbers
_INTERNATIONAL_PREFIX = re.compile(r"\s*(?:\+|00)")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
ENCODINGS = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 with BOM",
    "utf-16": "UTF-16",
    "utf-16-le": "UTF-16 LE",
    "utf-16-be": "UTF-16 BE",
    "cp1252": "Windows-1252",
    "latin-1": "Latin-1 (ISO-8859-1)",
}

NOTE_INVALID_EMAIL = (
    f"email not valid: contact imported without it, the text kept in custom field {INVALID_EMAIL_FIELD}"
)
NOTE_TRUNCATED = "{field} longer than " + str(TEXT_LIMIT) + " characters: cut to " + str(TEXT_LIMIT)


class ContactImportError(ValueError):
    """Base of the import's errors; the message is for the user."""


class ImportFileError(ContactImportError):
    """The file cannot be imported (empty, binary, too large, not decodable, no rows...)."""


class ImportTooLarge(ImportFileError):
    """A file over the size limit (the upload answers 413 Content Too Large)."""


class MappingError(ContactImportError):
    """The column mapping, target list or import state chosen cannot be used."""


class ImportFailed(ContactImportError):
    """:func:`import_contacts` stopped; the import is recorded as failed with this message."""


class InvalidEmail(ValueError):
    """An email address that is not valid; the message is for the user."""


# --- the file: size, encoding, delimiter, header --------------------------------------------------


@dataclass(frozen=True)
class FileProfile:
    """What :func:`profile_file` found: how to read the file and what it seems to contain."""

    encoding: str  # a Python codec name, one of ENCODINGS
    delimiter: str  # one of DELIMITERS
    header: list[str]  # column names, stripped, made unique ("column 3" for a blank one)
    sample_rows: list[list[str]]  # the first rows, each padded or cut to len(header)
    mapping: dict[str, str]  # guessed target for every column, see guess_mapping
    size_bytes: int


def max_import_bytes() -> int:
    """The largest file accepted: the app's ``MAX_IMPORT_BYTES`` setting, else :data:`MAX_IMPORT_BYTES`."""
    if has_app_context():
        return int(current_app.config.get("MAX_IMPORT_BYTES", MAX_IMPORT_BYTES))
    return MAX_IMPORT_BYTES


def check_import_size(size_bytes: int, limit: int | None = None) -> None:
    """Refuse an empty or oversized upload with :class:`ImportFileError` (for the upload view)."""
    limit = max_import_bytes() if limit is None else limit
    if size_bytes <= 0:
        raise ImportFileError("The file is empty.")
    if size_bytes > limit:
        raise ImportTooLarge(
            f"The file is {_megabytes(size_bytes)}; the largest file you can import is {_megabytes(limit)}. "
            "Split it into smaller files."
        )


def too_large_message(limit: int | None = None) -> str:
    """What the upload says about a file over ``limit`` bytes whose exact size it did not read."""
    limit = max_import_bytes() if limit is None else limit
    return f"The file is larger than the {limit // (1024 * 1024)} MB limit. Split it into smaller files."


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive or an Excel .xlsx workbook"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel .xls workbook (or another Office file)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_HEAD_BYTES = 65536
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")
NOT_CSV = "Save or export it as CSV (comma-separated values) and upload that file."


def profile_file(
    path: str | os.PathLike, *, encoding: str | None = None, delimiter: str | None = None
) -> FileProfile:
    """Sniff ``path``: encoding, delimiter, header, first rows and a guessed mapping.

    ``encoding`` and ``delimiter`` override what is sniffed (the mapping screen may offer them).
    Raises :class:`ImportFileError` for an empty, oversized, binary or undecodable file, a file with
    a header and no rows, and a file whose first row looks like a contact rather than column names.
    """
    size = os.path.getsize(path)
    check_import_size(size)
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    if encoding is None:
        encoding = _sniff_encoding(path, head)
    else:
        _check_encoding_name(encoding)
        _check_decodes(path, encoding)
    sample = _decode_head(head, encoding, complete=size <= len(head))
    if not sample.strip():
        raise ImportFileError("The file is empty.")
    if len(_CONTROL.findall(sample[:20000])) > max(2, len(sample[:20000]) // 100):
        raise ImportFileError(f"This file is not text (it looks like binary data). {NOT_CSV}")
    if delimiter is None:
        delimiter = _sniff_delimiter(sample)
    elif delimiter not in DELIMITERS:
        raise ImportFileError("Choose comma, semicolon, tab or pipe as the separator.")
    _check_columns(path, encoding, delimiter, size)
    header, rows = _first_records(path, encoding, delimiter, SAMPLE_ROWS)
    return FileProfile(encoding, delimiter, header, rows, guess_mapping(header), size)


def _check_encoding_name(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ImportFileError(f"Unknown text encoding {encoding!r}.") from None


def _sniff_encoding(path: str | os.PathLike, head: bytes) -> str:
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            raise ImportFileError(f"This is {what}, not a CSV file. {NOT_CSV}")
    for bom, name in _BOMS:
        if head.startswith(bom):
            if name == "utf-32":
                raise ImportFileError(f"The file is in UTF-32, which Crier does not read. {NOT_CSV}")
            _check_decodes(path, name)
            return name
    zeros = head.count(0)
    if zeros:
        name = _utf16_without_bom(head)
        if name is not None:
            _check_decodes(path, name)
            return name
        if zeros > max(2, len(head) // 1000):  # a stray NUL or two in text is dropped from its row
            raise ImportFileError(f"This file is not text (it looks like binary data). {NOT_CSV}")
    if _decodes(path, "utf-8") is None:
        return "utf-8"
    with open(path, "rb") as handle:
        undefined = any(_CP1252_UNDEFINED.search(chunk) for chunk in iter(lambda: handle.read(1 << 20), b""))
    return "latin-1" if undefined else "cp1252"


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 text without a BOM: mostly-ASCII text has a zero in every other byte."""
    even, odd = head[0::2], head[1::2]
    if len(odd) < 2:
        return None
    even_zeros, odd_zeros = even.count(0) / len(even), odd.count(0) / len(odd)
    if odd_zeros > 0.3 and even_zeros < 0.02:
        return "utf-16-le"
    if even_zeros > 0.3 and odd_zeros < 0.02:
        return "utf-16-be"
    return None


def _decodes(path: str | os.PathLike, encoding: str) -> int | None:
    """None if the whole file decodes with ``encoding``, else the byte offset where it fails."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return offset + exc.start
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return offset
    return None


def _check_decodes(path: str | os.PathLike, encoding: str) -> None:
    failed_at = _decodes(path, encoding)
    if failed_at is not None:
        label = ENCODINGS.get(encoding, encoding)
        raise ImportFileError(f"The file is not valid {label} text (byte {failed_at}). {NOT_CSV}")


def _decode_head(head: bytes, encoding: str, complete: bool) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    return decoder.decode(head, final=complete).lstrip("\ufeff")


def _sniff_delimiter(sample: str) -> str:
    """The separator that gives the header most columns and the rows after it the same count."""
    if "\n" in sample.rstrip("\r\n"):
        sample = sample[: sample.rstrip("\r\n").rfind("\n") + 1]  # whole lines only
    best, best_score = ",", (0.0, 1)
    for candidate in DELIMITERS:
        try:
            rows = csv.reader(io.StringIO(sample), delimiter=candidate)
            records = [r for r in _take(rows, 50) if r]
        except csv.Error:
            continue
        if not records or len(records[0]) < 2:
            continue
        width, rest = len(records[0]), records[1:]
        agreement = sum(1 for r in rest if len(r) == width) / len(rest) if rest else 1.0
        score = (agreement, width)
        if score > best_score:
            best, best_score = candidate, score
    return best


def _take(iterable: Iterable, count: int) -> list:
    taken = []
    for item in iterable:
        taken.append(item)
        if len(taken) >= count:
            break
    return taken


def _check_columns(path: str | os.PathLike, encoding: str, delimiter: str, size: int) -> None:
    """Refuse a file with more than :data:`MAX_COLUMNS` columns, reading at most
    :data:`MAX_HEADER_BYTES` of it (before anything reads its first row whole)."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER_BYTES)
    complete = size <= len(head)
    reader = csv.reader(io.StringIO(_decode_head(head, encoding, complete)), delimiter=delimiter)
    try:
        first = next(reader, None) or []
        ended = complete or next(reader, None) is not None  # a second row began: the first one ended
    except csv.Error:
        return  # reading the rows says what is wrong with them
    columns = len(first)
    if ended and columns <= MAX_COLUMNS:
        return
    if not ended and columns <= MAX_COLUMNS:
        raise ImportFileError(
            f"The first row, the column names, is longer than {MAX_HEADER_BYTES // 1024} KB. "
            "Is the file a CSV with one row per contact?"
        )
    counted = f"{columns:,}" if ended else f"more than {columns:,}"
    raise ImportFileError(
        f"The file has {counted} columns; an import can have at most {MAX_COLUMNS} columns. "
        "Remove the columns you do not need and upload the file again."
    )


def _first_records(path, encoding: str, delimiter: str, count: int) -> tuple[list[str], list[list[str]]]:
    with _open_text(path, encoding) as stream:
        records = _Records(stream, delimiter)
        first = next(records, None)
        if first is None:
            raise ImportFileError("The file is empty.")
        if first.cells is None:
            raise ImportFileError(f"The first row, the column names, cannot be read: {first.error}")
        header = unique_header(first.cells)
        if looks_like_data(header):
            raise ImportFileError(
                "The first row looks like a contact, not like column names. Add a first row naming "
                "the columns (for example: phone,email,first_name,last_name) and upload the file again."
            )
        rows = [_fit(record.cells or [], len(header)) for record in _take(records, count)]
    if not rows:
        raise ImportFileError("The file has a header row but no contacts under it.")
    return header, rows


def _fit(cells: list[str], width: int) -> list[str]:
    return (cells + [""] * (width - len(cells)))[:width]


def _open_text(path, encoding: str) -> TextIO:
    return open(path, encoding=encoding, newline="", errors="strict")


def unique_header(cells: list[str]) -> list[str]:
    """Column names as shown and mapped: stripped, blank ones named, duplicates numbered."""
    names: list[str] = []
    seen: Counter[str] = Counter()
    for index, cell in enumerate(cells, start=1):
        cell = cell.replace("\ufeff", "").replace("\x00", "")
        name = " ".join(cell.split())[:CUSTOM_NAME_LIMIT] or f"column {index}"
        seen[name.lower()] += 1
        if seen[name.lower()] > 1:
            name = f"{name} ({seen[name.lower()]})"
        names.append(name)
    return names


_PHONE_LIKE = re.compile(r"\+?[0-9][0-9 ()\-.]{6,}")
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def looks_like_data(header: list[str]) -> bool:
    """Whether a first row holds phone numbers or emails rather than column names."""
    return any(_PHONE_LIKE.fullmatch(cell) or _EMAIL_LIKE.fullmatch(cell) for cell in header)


# --- the mapping -------------------------------------------------------------------------------


def _words(spellings: str) -> frozenset[str]:
    return frozenset(spellings.split())


HEADER_SPELLINGS: dict[str, frozenset[str]] = {
    "phone": _words(
        "phone phonenumber phoneno phonenum telephone telephonenumber tel telefone telefono mobile "
        "mobilephone mobilenumber mobileno mobilephonenumber cell cellphone cellnumber cellular celular "
        "whatsapp whatsappnumber whatsappphone wa wanumber msisdn number contactnumber handy gsm"
    ),
    "email": _words("email emailaddress mail mailaddress emailid correo correoelectronico courriel"),
    "first_name": _words(
        "firstname first givenname forename fname name fullname contactname nome nombre prenom vorname"
    ),
    "last_name": _words("lastname last surname familyname lname sobrenome apellido apellidos nachname"),
    "company": _words(
        "company companyname organization organisation org business businessname employer empresa firma "
        "societe account accountname"
    ),
}


def _header_key(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c))


def guess_mapping(header: list[str]) -> dict[str, str]:
    """A target for each column from common header spellings; the rest become custom fields.

    Targets are ``phone``, ``email``, ``first_name``, ``last_name``, ``company``,
    ``custom:<name>`` and ``ignore``; each standard target goes to the first column that fits.
    """
    mapping, taken = {}, set()
    for column in header:
        key = _header_key(column)
        target = next((t for t, names in HEADER_SPELLINGS.items() if key in names and t not in taken), None)
        if target is None:
            mapping[column] = CUSTOM + column
        else:
            mapping[column] = target
            taken.add(target)
    return mapping


def validate_mapping(header: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """The complete mapping (every column of ``header``) or :class:`MappingError` saying what is wrong.

    Columns missing from ``mapping`` become custom fields named after the column.
    """
    unknown = [column for column in mapping if column not in header]
    if unknown:
        raise MappingError(f"The file has no column {unknown[0]!r}.")
    complete, used, custom_names = {}, {}, {}
    for column in header:
        target = (mapping.get(column) or CUSTOM + column).strip()
        if target.startswith(CUSTOM):
            name = " ".join(target[len(CUSTOM) :].split())
            if not name:
                raise MappingError(f"Give the custom field for column {column!r} a name.")
            if len(name) > CUSTOM_NAME_LIMIT:
                raise MappingError(f"Custom field names are at most {CUSTOM_NAME_LIMIT} characters.")
            if name.lower() in custom_names:
                raise MappingError(
                    f"Columns {custom_names[name.lower()]!r} and {column!r} both go to custom field {name!r}."
                )
            custom_names[name.lower()] = column
            target = CUSTOM + name
        elif target in STANDARD_TARGETS:
            if target in used:
                raise MappingError(f"Columns {used[target]!r} and {column!r} are both mapped to {target}.")
            used[target] = column
        elif target != IGNORE:
            raise MappingError(f"Column {column!r}: unknown target {target!r}.")
        complete[column] = target
    if "phone" not in used and "email" not in used:
        raise MappingError("Map a column to phone or to email: contacts need one of them.")
    return complete


def check_phone_country(code: str | None) -> str | None:
    """The ISO code of the country national phone numbers are in (None: the workspace's default)."""
    country = (code or "").strip().upper() or None
    if country and country not in phonenumbers.SUPPORTED_REGIONS:
        raise MappingError(f"Unknown country code {country!r} for national phone numbers.")
    return country


def _national(value: str) -> bool:
    """Whether a phone cell is a national number: no international prefix, unreadable without a country."""
    if not value.strip() or _INTERNATIONAL_PREFIX.match(value):
        return False
    try:
        to_e164(value)
    except InvalidPhone:
        return any(c.isdigit() for c in value)
    return False


def has_national_numbers(contact_import: ContactImport) -> bool:
    """Whether the first rows' phone column (as mapped) holds national numbers, which are read only
    with a country: the mapping screen then asks for it."""
    mapping = contact_import.mapping or {}
    header = list(contact_import.header)
    columns = [n for n, column in enumerate(header) if mapping.get(column) == "phone"]
    if not columns:
        return False
    rows = preview_rows(contact_import, NATIONAL_SCAN_ROWS)
    return any(_national(row[n]) for row in rows for n in columns)


# --- records and rows ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    line: int  # physical line where the record starts (the header is line 1)
    raw: str  # the record's text as in the file, without its final line break
    cells: list[str] | None  # None when the CSV itself could not be read
    error: str | None = None


class _Records:
    """CSV records with the physical line each starts on and its raw text, read as a stream."""

    def __init__(self, stream: TextIO, delimiter: str):
        self.line = 0
        self._pending: list[str] = []
        self._reader = csv.reader(self._lines(stream), delimiter=delimiter, strict=True)

    def _lines(self, stream: TextIO) -> Iterator[str]:
        for text_line in stream:
            self.line += 1
            self._pending.append(text_line)
            yield text_line

    def __iter__(self) -> Iterator[_Record]:
        return self

    def __next__(self) -> _Record:
        while True:
            try:
                cells, error = next(self._reader), None
            except csv.Error as exc:
                cells, error = None, _csv_problem(exc)
            if not self._pending:
                raise StopIteration
            raw = self._pending[0] if len(self._pending) == 1 else "".join(self._pending)
            start = self.line - len(self._pending) + 1
            if len(self._pending) > MAX_RECORD_LINES and error is None:
                spread = f"the row runs over {len(self._pending)} lines, to line {self.line}"
                cells, error = None, f"{spread}: is a closing quote missing?"
            self._pending.clear()
            if error is None and not "".join(cells).strip():
                continue  # a blank line or a row of empty cells
            return _Record(start, raw.rstrip("\r\n"), cells, error)


def _csv_problem(exc: csv.Error) -> str:
    text = str(exc)
    if "unexpected end of data" in text:
        return "a quote opens here and is never closed, so the rest of the file is one value"
    if "expected after" in text:
        return "a quoted value is followed by more text before the separator"
    if "field larger than field limit" in text:
        return f"a value is longer than {csv.field_size_limit():,} characters: is a closing quote missing?"
    return f"the row could not be read as CSV ({text})"


@dataclass(slots=True)
class _Row:
    """One valid row: a contact's identity and the values it brings."""

    line: int
    raw: str
    phone: str | None
    email: str | None
    values: dict[str, str]  # first_name / last_name / company, non-empty only
    custom: dict[str, str]


@dataclass(slots=True)
class _Rejection:
    line: int
    raw: str
    reason: str


_FAST_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63})"
)
_SPECIAL_DOMAINS = frozenset(SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_SUFFIXES = tuple("." + name for name in SPECIAL_USE_DOMAIN_NAMES)


def normalize_email(raw: str) -> str:
    """``raw`` as a valid, lower-cased address, or :class:`InvalidEmail`.

    Plain ASCII addresses are checked by one regular expression that accepts only what
    ``email_validator`` accepts; anything else goes to ``email_validator`` (no DNS lookups).
    """
    text_value = raw.strip()
    lowered = text_value.lower()
    fast = _FAST_EMAIL.fullmatch(lowered)
    if fast and len(lowered) <= EMAIL_LIMIT and lowered.index("@") <= 64:
        domain = fast.group(1)
        if "--" not in domain and domain not in _SPECIAL_DOMAINS and not domain.endswith(_SPECIAL_SUFFIXES):
            return lowered
    try:
        normalized = validate_email(text_value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        shown = text_value if len(text_value) <= 60 else text_value[:60] + "…"
        raise InvalidEmail(f"email '{shown}' is not valid: {exc}") from None
    if len(normalized) > EMAIL_LIMIT:
        raise InvalidEmail(f"email is longer than {EMAIL_LIMIT} characters")
    return normalized


class _RowReader:
    """Turns records into :class:`_Row` or :class:`_Rejection` under one mapping."""

    def __init__(
        self, header: list[str], mapping: dict[str, str], default_country: str | None, notes: Counter
    ):
        self.width = len(header)
        self.country = default_country
        self.notes = notes
        index = {column: i for i, column in enumerate(header)}
        standard = {target: index[column] for column, target in mapping.items() if target in STANDARD_TARGETS}
        self.phone_at = standard.get("phone")
        self.email_at = standard.get("email")
        self.texts = [
            (name, standard[name]) for name in ("first_name", "last_name", "company") if name in standard
        ]
        self.customs = [
            (target[len(CUSTOM) :], index[column])
            for column, target in mapping.items()
            if target.startswith(CUSTOM)
        ]

    def read(self, record: _Record) -> _Row | _Rejection:
        raw = record.raw if len(record.raw) <= RAW_LIMIT else record.raw[:RAW_LIMIT] + "…"
        if "\x00" in raw:
            raw = raw.replace("\x00", "")  # text columns cannot hold NUL characters
        if record.cells is None:
            return _Rejection(record.line, raw, record.error or "the row could not be read")
        cells = record.cells
        if len(cells) > self.width:
            if any(cell.strip() for cell in cells[self.width :]):
                return _Rejection(
                    record.line,
                    raw,
                    f"the row has {len(cells)} values but the header has {self.width} columns "
                    "(a separator inside a value that is not in quotes?)",
                )
            cells = cells[: self.width]
        elif len(cells) < self.width:
            cells = cells + [""] * (self.width - len(cells))
        if "\x00" in record.raw:
            cells = [cell.replace("\x00", "") for cell in cells]

        phone_text = cells[self.phone_at].strip() if self.phone_at is not None else ""
        email_text = cells[self.email_at].strip() if self.email_at is not None else ""
        custom = {}
        for name, at in self.customs:
            value = cells[at].strip()
            if value:
                custom[name] = value
        phone = email = None
        if phone_text:
            try:
                phone = to_e164(phone_text, self.country)
            except InvalidPhone as exc:
                return _Rejection(record.line, raw, str(exc))
        if email_text:
            try:
                email = normalize_email(email_text)
            except InvalidEmail as exc:
                if phone is None:
                    return _Rejection(record.line, raw, f"no phone number, and {exc}")
                custom[INVALID_EMAIL_FIELD] = email_text
                self.notes[NOTE_INVALID_EMAIL] += 1
        if phone is None and email is None:
            what = " or ".join(
                w for w, at in (("phone number", self.phone_at), ("email", self.email_at)) if at is not None
            )
            return _Rejection(record.line, raw, f"no {what}")
        values = {}
        for name, at in self.texts:
            value = cells[at].strip()
            if value:
                if len(value) > TEXT_LIMIT:
                    value = value[:TEXT_LIMIT]
                    self.notes[NOTE_TRUNCATED.format(field=name)] += 1
                values[name] = value
        return _Row(record.line, raw, phone, email, values, custom)


# --- one batch: who each row is ----------------------------------------------------------------


class _Target:
    """A contact a batch writes or names: new (no id yet) or existing (from the database)."""

    __slots__ = ("contact_id", "custom", "email", "ours", "phone", "seen", "values", "write")

    def __init__(
        self, phone: str | None, email: str | None, contact_id: int | None = None, ours: bool = False
    ):
        self.phone = phone
        self.email = email
        self.contact_id = contact_id
        self.ours = ours  # created or updated earlier by this same import
        self.seen = False  # an earlier row of this batch already named it
        self.write = contact_id is None  # new contacts are written; existing ones when a row changes them
        self.values: dict[str, str] = {}
        self.custom: dict[str, str] = {}

    def absorb(self, row: _Row) -> None:
        if row.values:
            self.values.update(row.values)
        if row.custom:
            self.custom.update(row.custom)
        if row.phone and self.phone is None:
            self.phone = row.phone
        if row.email:
            self.email = row.email

    def as_values(self) -> dict[str, Any]:
        return {
            "phone": self.phone,
            "email": self.email,
            "first_name": self.values.get("first_name"),
            "last_name": self.values.get("last_name"),
            "company": self.values.get("company"),
            "custom_fields": self.custom,
        }


@dataclass
class _Outcome:
    created: int = 0
    updated: int = 0
    merged: int = 0
    skipped: int = 0
    rejections: list[_Rejection] = field(default_factory=list)
    listed: list[int] = field(default_factory=list)  # contacts for the target list
    targets: dict[int, _Target] = field(default_factory=dict)  # each accepted row's line → its contact


class _Batch:
    """Decides, row by row, what each row of a batch does, against the database and earlier rows."""

    def __init__(
        self,
        rows: list[_Row],
        existing: Iterable[Any],
        update_existing: bool,
        room: ContactRoom | None = None,
    ):
        self.update_existing = update_existing
        self.room = room
        self.by_phone: dict[str, _Target] = {}
        self.by_email: dict[str, _Target] = {}
        for found in {row.id: row for row in existing}.values():  # (id, phone, email, ours)
            target = _Target(found.phone, found.email, contact_id=found.id, ours=bool(found.ours))
            if found.phone:
                self.by_phone[found.phone] = target
            if found.email:
                self.by_email[found.email] = target
        self.outcome = _Outcome()
        self.new: list[_Target] = []
        self.changed: list[_Target] = []
        self.named: list[_Target] = []  # existing contacts left alone, for list membership
        for row in rows:
            self._take(row)

    def _take(self, row: _Row) -> None:
        by_phone = self.by_phone.get(row.phone) if row.phone else None
        by_email = self.by_email.get(row.email) if row.email else None
        if (
            by_email is not None
            and by_email is not by_phone
            and (by_phone is not None or (row.phone and by_email.phone))
        ):
            self.outcome.rejections.append(
                _Rejection(row.line, row.raw, f"email {row.email} is already used by another contact")
            )
            return
        target = by_phone or by_email
        outcome = self.outcome
        if target is None:
            if self.room is not None and len(self.new) >= self.room.left:
                outcome.rejections.append(_Rejection(row.line, row.raw, self.room.reason))
                return
            target = _Target(row.phone, row.email)
            self.new.append(target)
            outcome.created += 1
        elif target.contact_id is None or target.ours:
            outcome.merged += 1
            if not target.write:
                target.write = True
                self.changed.append(target)
        elif not self.update_existing:
            outcome.skipped += 1
            if not target.seen:
                self.named.append(target)
            target.seen = True
            outcome.targets[row.line] = target
            return
        elif target.seen:
            outcome.merged += 1
        else:
            outcome.updated += 1
            target.write = True
            self.changed.append(target)
        target.seen = True
        outcome.targets[row.line] = target
        replaced = (
            target.email if row.email and row.email != target.email and target.contact_id is None else None
        )
        target.absorb(row)
        if target.phone:
            self.by_phone[target.phone] = target
        if target.email:
            self.by_email[target.email] = target
        if replaced and self.by_email.get(replaced) is target:
            del self.by_email[replaced]  # never written: free for a later row


# --- writing a batch -----------------------------------------------------------------------------


@dataclass
class _ParsedBatch:
    rows: list[_Row] = field(default_factory=list)
    rejections: list[_Rejection] = field(default_factory=list)


class _Prefetched:
    """Runs a generator in a thread, a bounded number of items ahead of the caller.

    The import reads and validates the next batch (Python work) while the previous one is being
    written (database work), and holds at most ``depth`` + 2 batches in memory.
    """

    _DONE = object()

    def __init__(self, produce: Callable[[], Iterator[Any]], depth: int = 2):
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="contact-import-reader", daemon=True)

    def __enter__(self) -> Iterator[Any]:
        self._thread.start()
        return self._items()

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            for item in self._produce():
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _items(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


@dataclass
class _Plan:
    tenant_id: int
    import_id: int
    marker: datetime
    update_existing: bool
    list_id: int | None
    contact_limit: int | None = None  # the plan's contacts limit (tenants.plans)
    contacts_before: int = 0  # the tenant's contacts when the import started


@dataclass(frozen=True)
class ContactRoom:
    """How many new contacts a batch may still create under the plan's limit, and what a row beyond says."""

    left: int
    limit: int

    @property
    def reason(self) -> str:
        return f"the workspace's plan allows {self.limit:,} contacts; this row would add one more"


class _PortableWriter:
    """Batch writes with SQLAlchemy Core, for SQLite (and any database with INSERT … ON CONFLICT)."""

    members_inline = True  # list members are written in the batch's own transaction

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.table = Contact.__table__
        self.dialect = db.engine.dialect.name

    def _insert(self, table):
        return pg_insert(table) if self.dialect == "postgresql" else sqlite_insert(table)

    def _merged_custom(self, incoming):
        column = self.table.c.custom_fields
        if self.dialect == "postgresql":
            return column.op("||")(cast(incoming, JSONB))
        return func.json_patch(column, incoming)

    def after_commit(self, created: int) -> None:
        """Called after each batch's commit with the contacts created so far."""

    def existing(self, phones: list[str], emails: list[str]) -> list[Any]:
        c = self.table.c
        where = [c.phone.in_(phones)] if phones else []
        if emails:
            where.append(c.email.in_(emails))
        if not where:
            return []
        marker = self.plan.marker
        ours = ((c.created_at == marker) | (c.updated_at == marker)).label("ours")
        query = select(c.id, c.phone, c.email, ours).where(c.tenant_id == self.plan.tenant_id, or_(*where))
        return db.session.execute(query).all()

    def insert_new(self, targets: list[_Target], key: str) -> dict[str, tuple[int, bool | None]]:
        """Insert new contacts keyed by ``key``; answers key → (id, inserted or None if unknown)."""
        if not targets:
            return {}
        c, plan = self.table.c, self.plan
        statement = self._insert(self.table)
        other = "email" if key == "phone" else "phone"
        statement = statement.on_conflict_do_update(
            index_elements=[c.tenant_id, c[key]],
            set_={
                other: func.coalesce(statement.excluded[other], c[other]),
                "first_name": func.coalesce(statement.excluded.first_name, c.first_name),
                "last_name": func.coalesce(statement.excluded.last_name, c.last_name),
                "company": func.coalesce(statement.excluded.company, c.company),
                "custom_fields": self._merged_custom(statement.excluded.custom_fields),
                "updated_at": statement.excluded.updated_at,
            },
            where=None if plan.update_existing else literal(False),
        ).returning(c.id, c[key])
        rows = [
            {
                **t.as_values(),
                "tenant_id": plan.tenant_id,
                "opted_out": False,
                "created_at": plan.marker,
                "updated_at": plan.marker,
            }
            for t in sorted(targets, key=lambda t: getattr(t, key))
        ]
        result = db.session.execute(statement, rows)
        return {row[1]: (row[0], None) for row in result.all()}

    def update_changed(self, targets: list[_Target]) -> None:
        """Write what this batch's rows bring to existing contacts (empty values never erase)."""
        if not targets:
            return
        c = self.table.c
        statement = (
            update(self.table)
            .where(c.id == bindparam("b_id"), c.tenant_id == self.plan.tenant_id)
            .values(
                phone=func.coalesce(bindparam("b_phone"), c.phone),
                email=func.coalesce(bindparam("b_email"), c.email),
                first_name=func.coalesce(bindparam("b_first_name"), c.first_name),
                last_name=func.coalesce(bindparam("b_last_name"), c.last_name),
                company=func.coalesce(bindparam("b_company"), c.company),
                custom_fields=self._merged_custom(bindparam("b_custom_fields", type_=JSON)),
                updated_at=bindparam("b_updated_at", type_=c.updated_at.type),
            )
        )
        rows = [
            {
                "b_id": t.contact_id,
                "b_updated_at": self.plan.marker,
                **{f"b_{k}": v for k, v in t.as_values().items()},
            }
            for t in sorted(targets, key=lambda t: t.contact_id)
        ]
        db.session.connection().execute(statement, rows)

    def add_to_list(self, contact_ids: list[int]) -> None:
        if not contact_ids or self.plan.list_id is None:
            return
        now = utcnow()
        statement = self._insert(ContactListMember.__table__).on_conflict_do_nothing()
        rows = [
            {"tenant_id": self.plan.tenant_id, "list_id": self.plan.list_id, "contact_id": i, "added_at": now}
            for i in sorted(set(contact_ids))
        ]
        db.session.execute(statement, rows)

    def reject(self, rejections: list[_Rejection]) -> None:
        if rejections:
            plan = self.plan
            rows = [
                {
                    "tenant_id": plan.tenant_id,
                    "import_id": plan.import_id,
                    "line": r.line,
                    "reason": r.reason[:500],
                    "raw": r.raw,
                }
                for r in rejections
            ]
            db.session.execute(ImportRejection.__table__.insert(), rows)


_PG_COLUMNS = "phone text, email text, first_name text, last_name text, company text, custom_fields jsonb"
_PG_LOOKUP = (
    "SELECT c.id, c.phone, c.email, (c.created_at = :marker OR c.updated_at = :marker) AS ours "
    "FROM (SELECT CAST(:tenant_id AS integer) AS id OFFSET 0) AS t "
    "CROSS JOIN jsonb_array_elements_text(CAST(:{key}s AS jsonb)) AS k(value) "
    "CROSS JOIN LATERAL (SELECT id, phone, email, created_at, updated_at FROM contacts "
    "WHERE tenant_id = t.id AND {key} = k.value LIMIT 1) AS c"
)
# One probe of the unique (tenant_id, phone|email) index per value, whatever the statistics say.
# LIMIT 1 keeps each lateral subquery from being flattened into a join (a hash join over all the
# tenant's contacts), and the OFFSET 0 fence hides the tenant id from the planner: for a tenant
# the statistics think rare (a new one, or an import outrunning them) it would otherwise find the
# (tenant_id, id) index as cheap as the unique one and filter every probe through all of the
# tenant's contacts, which makes an import quadratic.
_PG_EXISTING = text(_PG_LOOKUP.format(key="phone") + " UNION " + _PG_LOOKUP.format(key="email"))


_PG_CHANGES = " OR ".join(
    [f"v.{c} IS NOT NULL AND v.{c} IS DISTINCT FROM contacts.{c}" for c in STANDARD_TARGETS]
    + ["NOT contacts.custom_fields @> coalesce(v.custom_fields, '{}'::jsonb)"]
)
_PG_ADD_MEMBERS = text(
    "INSERT INTO contact_list_members (tenant_id, list_id, contact_id, added_at) "
    "SELECT :tenant_id, :list_id, CAST(i.value AS integer), :now "
    "FROM jsonb_array_elements_text(CAST(:ids AS jsonb)) AS i(value) ON CONFLICT DO NOTHING"
)


class _ListMembers:
    """Adds each batch's contacts to the target list on a second PostgreSQL connection.

    A list member's foreign keys are checked row by row, which costs about as much as writing
    the contact; doing it in parallel, one committed batch behind, keeps it off the import's
    critical path. :meth:`close` waits for the last batch and raises what went wrong, if anything.
    """

    def __init__(self, engine, tenant_id: int, list_id: int):
        self._engine = engine
        self._parameters = {"tenant_id": tenant_id, "list_id": list_id}
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="contact-import-list", daemon=True)
        self._thread.start()

    def add(self, contact_ids: list[int]) -> None:
        if self._error is not None:
            raise self._error
        if contact_ids:
            self._queue.put(json.dumps(sorted(set(contact_ids))))

    def close(self, raise_error: bool = True) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and raise_error:
            raise self._error

    def _run(self) -> None:
        with self._engine.connect() as connection:
            while (ids := self._queue.get()) is not None:
                if self._error is not None:
                    continue  # drain, so that add() never blocks
                try:
                    connection.execute(_PG_ADD_MEMBERS, {**self._parameters, "now": utcnow(), "ids": ids})
                    connection.commit()
                except BaseException as exc:
                    connection.rollback()
                    self._error = exc


class _PostgresWriter(_PortableWriter):
    """PostgreSQL: each write is one statement over a JSON array of rows (``jsonb_to_recordset``).

    New contacts: ``INSERT … SELECT … ON CONFLICT (tenant_id, phone|email) DO UPDATE … RETURNING
    id, key, (xmax = 0)`` — the conflict arm only fires when another writer created the same
    contact since this batch looked (``xmax = 0`` tells a real insert from such an update).
    Existing contacts: one ``UPDATE … FROM jsonb_to_recordset(…) WHERE contacts.id = v.id``.
    """

    members_inline = False  # _ListMembers writes them on a second connection, in parallel
    analyzed = False

    def after_commit(self, created: int) -> None:
        # A table whose statistics have never seen this many contacts (a new installation, the
        # first big import) gets them now, once: the planner then knows each probe finds one row.
        if self.analyzed or created == 0:
            return
        self.analyzed = True
        estimate = db.session.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'contacts'::regclass"))
        if estimate.scalar() < created:
            db.session.execute(text("ANALYZE contacts"))  # a warning, not an error, if we do not own it
            db.session.commit()

    def existing(self, phones: list[str], emails: list[str]) -> list[Any]:
        parameters = {
            "tenant_id": self.plan.tenant_id,
            "marker": self.plan.marker,
            "phones": json.dumps(phones),
            "emails": json.dumps(emails),
        }
        return db.session.execute(_PG_EXISTING, parameters).all()

    def insert_new(self, targets: list[_Target], key: str) -> dict[str, tuple[int, bool | None]]:
        if not targets:
            return {}
        other = "email" if key == "phone" else "phone"
        # only constant names are interpolated: key and other are "phone" and "email"
        statement = text(
            "INSERT INTO contacts (tenant_id, phone, email, first_name, last_name, company, custom_fields, "  # noqa: S608
            "opted_out, created_at, updated_at) "
            "SELECT :tenant_id, v.phone, v.email, v.first_name, v.last_name, v.company, "
            "coalesce(v.custom_fields, '{}'::jsonb), false, :marker, :marker "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v({_PG_COLUMNS}) ORDER BY v.{key} "
            f"ON CONFLICT (tenant_id, {key}) DO UPDATE SET "
            f"{other} = coalesce(excluded.{other}, contacts.{other}), "
            "first_name = coalesce(excluded.first_name, contacts.first_name), "
            "last_name = coalesce(excluded.last_name, contacts.last_name), "
            "company = coalesce(excluded.company, contacts.company), "
            "custom_fields = contacts.custom_fields || excluded.custom_fields, "
            "updated_at = excluded.updated_at "
            "WHERE CAST(:update_existing AS boolean) "
            f"RETURNING id, {key}, (xmax = 0) AS inserted"
        )
        result = db.session.execute(
            statement,
            {
                "tenant_id": self.plan.tenant_id,
                "marker": self.plan.marker,
                "update_existing": self.plan.update_existing,
                "rows": json.dumps([t.as_values() for t in targets], ensure_ascii=False),
            },
        )
        return {row[1]: (row[0], row[2]) for row in result.all()}

    def update_changed(self, targets: list[_Target]) -> None:
        if not targets:
            return
        statement = text(
            "UPDATE contacts SET phone = coalesce(v.phone, contacts.phone), "  # noqa: S608 (constant columns)
            "email = coalesce(v.email, contacts.email), "
            "first_name = coalesce(v.first_name, contacts.first_name), "
            "last_name = coalesce(v.last_name, contacts.last_name), "
            "company = coalesce(v.company, contacts.company), "
            "custom_fields = contacts.custom_fields || coalesce(v.custom_fields, '{}'::jsonb), "
            "updated_at = :marker "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id integer, {_PG_COLUMNS}) "
            f"WHERE contacts.id = v.id AND ({_PG_CHANGES}) RETURNING contacts.tenant_id"
        )
        # The ids come from this batch's tenant-scoped lookup. The tenant is checked on what comes
        # back rather than in the WHERE clause, which would let a planner with stale statistics
        # trade one primary-key probe per row for a scan of all the tenant's contacts. Rows the
        # file would not change are not written at all (no new row version, updated_at kept).
        rows = [{"id": t.contact_id, **t.as_values()} for t in sorted(targets, key=lambda t: t.contact_id)]
        parameters = {"marker": self.plan.marker, "rows": json.dumps(rows, ensure_ascii=False)}
        tenants = set(db.session.execute(statement, parameters).scalars())
        if tenants - {self.plan.tenant_id}:
            raise CrossTenantWrite(
                f"import of tenant {self.plan.tenant_id} reached another tenant's contacts"
            )


def _writer_for(plan: _Plan, portable: bool = False) -> _PortableWriter:
    if db.engine.dialect.name == "postgresql" and not portable:
        return _PostgresWriter(plan)
    return _PortableWriter(plan)


def _write_batch(
    writer: _PortableWriter, rows: list[_Row], rejections: list[_Rejection], room: ContactRoom | None = None
) -> _Outcome:
    """Resolve and write one batch in the session's transaction; the caller commits. Rows that would
    create contacts beyond ``room`` are rejected (the plan's limit)."""
    plan = writer.plan
    phones = sorted({r.phone for r in rows if r.phone})
    emails = sorted({r.email for r in rows if r.email})
    batch = _Batch(rows, writer.existing(phones, emails), plan.update_existing, room)
    outcome = batch.outcome
    outcome.rejections = sorted(rejections + outcome.rejections, key=lambda r: r.line)

    listed = [t.contact_id for t in batch.named]
    by_key = {"phone": [t for t in batch.new if t.phone], "email": [t for t in batch.new if not t.phone]}
    for key, targets in by_key.items():
        written = writer.insert_new(targets, key)
        missing = []
        for target in targets:
            found = written.get(getattr(target, key))
            if found is None:  # created by someone else meanwhile, and update_existing is off
                missing.append(target)
                continue
            target.contact_id, inserted = found
            if inserted is False:  # created by someone else meanwhile, and updated now
                outcome.created -= 1
                outcome.updated += 1
            listed.append(target.contact_id)
        if missing:
            outcome.created -= len(missing)
            outcome.skipped += len(missing)
            found_ids = writer.existing(
                [t.phone for t in missing if t.phone], [t.email for t in missing if not t.phone and t.email]
            )
            listed.extend(row.id for row in found_ids)
    writer.update_changed(batch.changed)
    listed.extend(t.contact_id for t in batch.changed)
    if writer.members_inline:
        writer.add_to_list(listed)
    else:
        outcome.listed = listed
    writer.reject(outcome.rejections)
    return outcome


# --- the import ----------------------------------------------------------------------------------


@dataclass
class ImportProgress:
    """Where an import stands; also the payload of the ``import:progress`` event."""

    import_id: int
    total: int | None  # rows in the file (blank lines excluded), None until counted
    processed: int = 0  # rows handled so far = created + updated + merged + skipped + rejected
    created: int = 0  # new contacts
    updated: int = 0  # existing contacts updated (update_existing)
    merged: int = 0  # rows about a contact an earlier row of this file already wrote
    skipped: int = 0  # rows about existing contacts left alone (update_existing off)
    rejected: int = 0  # rows refused, each with an ImportRejection

    @property
    def percent(self) -> int | None:
        if self.total is None:
            return None
        if self.total == 0:
            return 100
        return min(100, self.processed * 100 // self.total)

    def as_event(self) -> dict[str, Any]:
        return {**asdict(self), "percent": self.percent}


@dataclass
class ImportResult(ImportProgress):
    """What :func:`import_contacts` did; ``notes`` counts what was adjusted without rejecting a row."""

    notes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


ProgressCallback = Callable[[ImportProgress], None]


def new_import(path: str | os.PathLike, *, filename: str, user_id: int | None = None) -> ContactImport:
    """Profile an uploaded file and record it as an import waiting for its mapping (state ``uploaded``).

    Runs in the current tenant's scope; flushes, the caller commits. Raises :class:`ImportFileError`.
    """
    profile = profile_file(path)
    contact_import = ContactImport(
        user_id=user_id,
        filename=filename[:255],
        stored_path=str(path),
        size_bytes=profile.size_bytes,
        encoding=profile.encoding,
        delimiter=profile.delimiter,
        header=profile.header,
        mapping=profile.mapping,
        status=ImportStatus.UPLOADED,
    )
    db.session.add(contact_import)
    db.session.flush()
    return contact_import


def preview_rows(contact_import: ContactImport, limit: int = SAMPLE_ROWS) -> list[list[str]]:
    """The first rows of the import's file, as the mapping screen shows them."""
    encoding = contact_import.encoding or "utf-8"
    delimiter = contact_import.delimiter or ","
    with _open_text(contact_import.stored_path, encoding) as stream:
        records = _Records(stream, delimiter)
        next(records, None)
        width = len(contact_import.header)
        return [_fit(record.cells or [], width) for record in _take(records, limit)]


def _list_exists(list_id: int) -> bool:
    # A query, not session.get: the identity map would answer for a list of another tenant.
    return db.session.scalar(select(ContactList.id).where(ContactList.id == list_id)) is not None


def configure_import(
    contact_import: ContactImport,
    *,
    mapping: dict[str, str],
    list_id: int | None,
    update_existing: bool,
    phone_country: str | None = None,
) -> None:
    """Record the confirmed mapping, target list, update rule and the country of national phone
    numbers (None: the workspace's default); the import becomes ``queued``.

    Runs in the import's tenant scope (the list must be one of the tenant's). The caller commits,
    then enqueues (``tasks.imports.start_import`` does both). Raises :class:`MappingError`.
    """
    if contact_import.status not in (ImportStatus.UPLOADED, ImportStatus.QUEUED, ImportStatus.FAILED):
        raise MappingError(f"This import is {contact_import.status.value}; it cannot be changed now.")
    complete = validate_mapping(list(contact_import.header), mapping)
    country = check_phone_country(phone_country)
    if list_id is not None and not _list_exists(list_id):
        raise MappingError("That list does not exist (any more).")
    contact_import.mapping = complete
    contact_import.phone_country = country
    contact_import.list_id = list_id
    contact_import.update_existing = bool(update_existing)
    contact_import.status = ImportStatus.QUEUED
    contact_import.error = None


def claim_import(import_id: int, stale_after: float = STALE_RUN_SECONDS) -> int | None:
    """Mark a queued import running (or take over a running one whose worker died) and commit.

    Answers its tenant id, or None when there is nothing to run: unknown, not queued, finished,
    or running in another worker right now. The actor calls this before :func:`import_contacts`.
    """
    table = ContactImport.__table__
    now = utcnow()
    stale = now - timedelta(seconds=stale_after)
    claim = (
        update(table)
        .where(
            table.c.id == import_id,
            or_(
                table.c.status == ImportStatus.QUEUED,
                (table.c.status == ImportStatus.RUNNING) & (table.c.updated_at < stale),
            ),
        )
        .values(status=ImportStatus.RUNNING, updated_at=now)
        .returning(table.c.tenant_id)
    )
    with all_tenants(db.session):
        tenant_id = db.session.execute(claim).scalar()
    db.session.commit()
    return tenant_id


def import_contacts(
    contact_import: ContactImport, on_progress: ProgressCallback | None = None, *, portable: bool = False
) -> ImportResult:
    """Run the import now, in this process: the worker's job (and the benchmark's).

    Streams the file, writes batches of :data:`BATCH_ROWS` rows (each batch its own transaction),
    keeps the import row's counters current and calls ``on_progress`` after counting the rows and
    after every batch. Returns the :class:`ImportResult`; the import is then ``completed``.
    A problem the user can act on (file gone or changed, mapping invalid, list deleted) raises
    :class:`ImportFailed` after recording the import as ``failed`` with that message; any other
    exception records ``failed`` too and propagates. Rows written before a failure stay written.
    ``portable`` forces the SQLAlchemy Core writer on PostgreSQL (tests compare both).
    """
    with all_tenants(db.session):
        tenant_id = contact_import.tenant_id  # loads an expired instance without a tenant chosen yet
    with tenant(db.session, tenant_id):
        return _Import(contact_import, on_progress, portable).run()


class _Import:
    def __init__(self, contact_import: ContactImport, on_progress: ProgressCallback | None, portable: bool):
        self.record = contact_import
        self.import_id = contact_import.id
        self.on_progress = on_progress or (lambda progress: None)
        self.portable = portable
        self.notes: Counter[str] = Counter()
        self.line = 0
        self.path = ""
        self.country: str | None = None

    def run(self) -> ImportResult:
        started = time.monotonic()
        try:
            plan, header, mapping, encoding, delimiter = self._start()
            progress = ImportProgress(self.import_id, total=None)
            progress.total = self._count(encoding, delimiter)
            self.record.rows_total = progress.total
            db.session.commit()
            self.on_progress(replace(progress))  # a snapshot: callers may keep it
            self._import(plan, header, mapping, encoding, delimiter, progress)
        except ContactImportError as exc:
            self._fail(str(exc))
            raise ImportFailed(str(exc)) from exc
        except UnicodeDecodeError as exc:
            label = ENCODINGS.get(exc.encoding, exc.encoding)
            message = f"The file is not valid {label} text after line {self.line}."
            self._fail(message)
            raise ImportFailed(message) from exc
        except OSError as exc:
            message = f"The uploaded file could not be read ({exc.strerror or exc})."
            self._fail(message)
            raise ImportFailed(message) from exc
        except BaseException as exc:  # also a worker's time limit or shutdown: never leave it "running"
            self._fail(
                f"The import stopped after line {self.line} because of an internal error "
                f"({type(exc).__name__})."
            )
            raise
        record = self.record
        record.status = ImportStatus.COMPLETED
        record.finished_at = utcnow()
        db.session.commit()
        return ImportResult(**asdict(progress), notes=dict(self.notes), seconds=time.monotonic() - started)

    def _start(self) -> tuple[_Plan, list[str], dict[str, str], str, str]:
        record = self.record
        db.session.execute(delete(ImportRejection).where(ImportRejection.import_id == record.id))
        record.status = ImportStatus.RUNNING
        record.started_at = utcnow()
        record.finished_at = None
        record.error = None
        record.rows_total = record.rows_processed = 0
        record.created_count = record.updated_count = record.merged_count = record.rejected_count = 0
        db.session.commit()
        self.path = record.stored_path  # a plain string: the reader thread must not touch the ORM
        if not os.path.exists(self.path):
            raise ImportFileError("The uploaded file is no longer there; upload it again.")
        check_import_size(os.path.getsize(self.path))
        encoding, delimiter, header = record.encoding, record.delimiter, list(record.header or [])
        if not (encoding and delimiter and header):
            profile = profile_file(self.path, encoding=encoding, delimiter=delimiter)
            encoding, delimiter, header = profile.encoding, profile.delimiter, profile.header
        mapping = validate_mapping(header, dict(record.mapping or {}))
        if record.list_id is not None and not _list_exists(record.list_id):
            raise MappingError("The target list was deleted; choose another list.")
        tenant_row = db.session.get(Tenant, record.tenant_id)
        default = tenant_row.default_country if tenant_row is not None else None
        self.country = record.phone_country or default
        contacts_before = db.session.scalar(
            select(func.count()).select_from(Contact).where(Contact.tenant_id == record.tenant_id)
        )
        plan = _Plan(
            record.tenant_id,
            record.id,
            record.started_at,
            record.update_existing,
            record.list_id,
            tenant_row.max_contacts if tenant_row is not None else None,
            contacts_before or 0,
        )
        return plan, header, mapping, encoding, delimiter

    def _count(self, encoding: str, delimiter: str) -> int:
        """Rows in the file, counted as :class:`_Records` counts them (blank ones left out)."""
        total = -1  # the header
        with _open_text(self.path, encoding) as stream:
            reader = csv.reader(stream, delimiter=delimiter, strict=True)
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error:
                    total += 1
                    continue
                if "".join(cells).strip():
                    total += 1
        if total < 0:
            raise ImportFileError("The file is empty.")
        if total == 0:
            raise ImportFileError("The file has a header row but no contacts under it.")
        return total

    def _read(self, reader: _RowReader, encoding: str, delimiter: str) -> Iterator[_ParsedBatch]:
        """The file's rows, validated, in batches (runs in the reader thread)."""
        with _open_text(self.path, encoding) as stream:
            records = _Records(stream, delimiter)
            next(records, None)  # the header
            batch = _ParsedBatch()
            for record in records:
                self.line = record.line
                read = reader.read(record)
                (batch.rows if type(read) is _Row else batch.rejections).append(read)
                size = len(batch.rows) + len(batch.rejections)
                if size >= BATCH_ROWS:
                    yield batch
                    batch = _ParsedBatch()
                elif size % 32 == 0:
                    time.sleep(
                        0
                    )  # let the writing thread have the interpreter as soon as its database answers
            if batch.rows or batch.rejections:
                yield batch

    def _import(self, plan, header, mapping, encoding, delimiter, progress: ImportProgress) -> None:
        reader = _RowReader(header, mapping, self.country, self.notes)
        writer = _writer_for(plan, self.portable)
        members = None
        if plan.list_id is not None and not writer.members_inline:
            members = _ListMembers(db.engine, plan.tenant_id, plan.list_id)
        try:
            with _Prefetched(lambda: self._read(reader, encoding, delimiter)) as batches:
                for batch in batches:
                    listed = self._flush(writer, batch.rows, batch.rejections, progress)
                    if members is not None:
                        members.add(listed)
        except BaseException:
            if members is not None:
                members.close(raise_error=False)  # what went wrong here is the story
            raise
        if members is not None:
            members.close()

    def _flush(
        self, writer, rows: list[_Row], rejections: list[_Rejection], progress: ImportProgress
    ) -> list[int]:
        """Write one batch (retrying it if another writer got in the way); answers the contacts to list."""
        plan = writer.plan
        room = None
        if plan.contact_limit is not None:
            left = max(0, plan.contact_limit - plan.contacts_before - progress.created)
            room = ContactRoom(left, plan.contact_limit)
        for attempt in range(3):
            try:
                outcome = _write_batch(writer, rows, rejections, room)
                record = self.record
                progress.processed += len(rows) + len(rejections)
                progress.created += outcome.created
                progress.updated += outcome.updated
                progress.merged += outcome.merged
                progress.skipped += outcome.skipped
                progress.rejected += len(outcome.rejections)
                record.rows_processed = progress.processed
                record.created_count = progress.created
                record.updated_count = progress.updated
                record.merged_count = progress.merged
                record.rejected_count = progress.rejected
                db.session.commit()
                writer.after_commit(progress.created)
                break
            except (IntegrityError, OperationalError):
                # another writer got in between (same phone or email, a deadlock, SQLite busy): redo the batch
                db.session.rollback()
                if attempt == 2:
                    raise
                time.sleep(0.05 * (attempt + 1))
        self.on_progress(replace(progress))  # a snapshot: callers may keep it
        return outcome.listed

    def _fail(self, message: str) -> None:
        try:
            db.session.rollback()
            record = db.session.get(ContactImport, self.import_id)
            if record is not None:
                record.status = ImportStatus.FAILED
                record.error = message[:1000]
                record.finished_at = utcnow()
                db.session.commit()
        except Exception:  # the database itself may be what failed; the original error is raised next
            log.exception("could not record the failure of import %s", self.import_id)
            db.session.rollback()


# --- rejected rows, for download -------------------------------------------------------------------


def rejections_csv(import_id: int) -> Iterator[str]:
    """The import's rejected rows as CSV text, one line per item: ``line,reason,row``.

    The first item starts with a UTF-8 BOM (spreadsheets then read UTF-8 correctly); every cell is
    neutralised for spreadsheets (:func:`tenants.spreadsheet.neutralise`). Reads in the current
    tenant's scope, lazily: a streaming view wraps it in ``stream_with_context``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(cells: list[object]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(neutralise_row(cells))
        return buffer.getvalue()

    yield "\ufeff" + line(["line", "reason", "row"])
    query = (
        select(ImportRejection.line, ImportRejection.reason, ImportRejection.raw)
        .where(ImportRejection.import_id == import_id)
        .order_by(ImportRejection.line, ImportRejection.id)
        .execution_options(yield_per=1000)
    )
    for rejected in db.session.execute(query):
        yield line([rejected.line, rejected.reason, rejected.raw])


# --- contacts sent as data (the API's bulk upsert) ---------------------------------------------------

MAX_UPSERT_ROWS = 10_000
CUSTOM_COLUMN = "custom_fields."  # an upserted contact's custom field, seen as a column of a file


@dataclass(frozen=True, slots=True)
class UpsertedRow:
    """What became of one contact of a bulk upsert (``index``: its place in the request)."""

    index: int
    status: str  # created, updated, unchanged or rejected
    contact_id: int | None
    reason: str | None = None  # why it was rejected, or what was adjusted or merged


@dataclass(frozen=True)
class UpsertResult:
    rows: list[UpsertedRow]

    def count(self, status: str) -> int:
        return sum(1 for row in self.rows if row.status == status)


class _UpsertWriter(_PortableWriter):
    """A bulk upsert writes in its caller's transaction; it answers its rejections instead of storing them."""

    def reject(self, rejections: list[_Rejection]) -> None:
        return None


class _PostgresUpsertWriter(_PostgresWriter):
    members_inline = True  # one statement, in the same transaction as the contacts
    reject = _UpsertWriter.reject

    def add_to_list(self, contact_ids: list[int]) -> None:
        if contact_ids and self.plan.list_id is not None:
            parameters = {"tenant_id": self.plan.tenant_id, "list_id": self.plan.list_id, "now": utcnow()}
            db.session.execute(_PG_ADD_MEMBERS, {**parameters, "ids": json.dumps(sorted(set(contact_ids)))})


def upsert_contacts(
    contacts: Sequence[Mapping[str, Any]], *, list_id: int | None = None, phone_country: str | None = None
) -> UpsertResult:
    """Create or update the current tenant's contacts from data rather than a file, by the import's rules.

    Each contact is a mapping of ``phone``, ``email``, ``first_name``, ``last_name``, ``company`` (text
    or None) and ``custom_fields`` (names to text). Every row is read, checked and written exactly as a
    row of an import with ``update_existing`` (national numbers in ``phone_country``, else the
    workspace's default country; the plan's contacts limit; rows naming the same contact merged), in
    one set-based batch, and answered by its index: created, updated, unchanged (an existing contact
    it would not change; SQLite's writer rewrites them all, so there they count as updated) or
    rejected with the import's reason. Every contact named joins ``list_id``.
    Flushes in a savepoint (redone when another writer got in the way); the caller commits. Raises
    :class:`MappingError` for an unknown list or country, or custom field names an import would refuse.
    """
    tenant_id = current_tenant_id(db.session)
    workspace = db.session.get(Tenant, tenant_id)
    country = check_phone_country(phone_country) or workspace.default_country
    if list_id is not None and not _list_exists(list_id):
        raise MappingError("That list does not exist (any more).")
    names = sorted({name for contact in contacts for name in contact.get("custom_fields") or {}})
    if len(names) > MAX_COLUMNS - len(STANDARD_TARGETS):
        raise MappingError(
            f"The contacts have {len(names):,} different custom fields; "
            f"one request can have at most {MAX_COLUMNS - len(STANDARD_TARGETS)}."
        )
    header = [*STANDARD_TARGETS, *(CUSTOM_COLUMN + name for name in names)]
    mapping = validate_mapping(
        header, {**{t: t for t in STANDARD_TARGETS}, **{CUSTOM_COLUMN + n: CUSTOM + n for n in names}}
    )
    reader = _RowReader(header, mapping, country, Counter())
    rows: list[_Row] = []
    rejections: list[_Rejection] = []
    adjusted: dict[int, str] = {}
    for index, contact in enumerate(contacts):
        custom = contact.get("custom_fields") or {}
        cells = [contact.get(t) or "" for t in STANDARD_TARGETS] + [custom.get(n) or "" for n in names]
        reader.notes = notes = Counter()
        read = reader.read(_Record(index, "\x1f".join(cells), cells))
        (rows if type(read) is _Row else rejections).append(read)
        if notes:
            adjusted[index] = "; ".join(notes)

    marker = utcnow()  # this request's contacts are told apart by it, as an import's are
    contacts_before = db.session.scalar(select(func.count()).select_from(Contact)) or 0
    plan = _Plan(tenant_id, 0, marker, True, list_id, workspace.max_contacts, contacts_before)
    room = ContactRoom(max(0, workspace.max_contacts - contacts_before), workspace.max_contacts)
    writer_class = _PostgresUpsertWriter if db.engine.dialect.name == "postgresql" else _UpsertWriter
    writer = writer_class(plan)
    for attempt in range(3):
        try:
            with db.session.begin_nested():
                outcome = _write_batch(writer, rows, rejections, room)
            break
        except (IntegrityError, OperationalError):
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    return UpsertResult(_upserted_rows(len(contacts), outcome, marker, adjusted))


def _upserted_rows(
    count: int, outcome: _Outcome, marker: datetime, adjusted: dict[int, str]
) -> list[UpsertedRow]:
    """Each row's answer: what the database says happened to its contact (created or written by this
    upsert's marker, or neither), the later rows naming a contact counting as merged into it."""
    ids = sorted({t.contact_id for t in outcome.targets.values() if t.contact_id is not None})
    if db.engine.dialect.name == "postgresql":  # one array parameter rather than 10,000
        named = Contact.id == any_(bindparam("ids", ids, type_=ARRAY(Integer)))
    else:
        named = Contact.id.in_(ids)
    written = {
        row.id: (row.created, row.updated)
        for row in db.session.execute(
            select(
                Contact.id,
                (Contact.created_at == marker).label("created"),
                (Contact.updated_at == marker).label("updated"),
            ).where(named)
        )
    }
    rejected = {r.line: r.reason for r in outcome.rejections}
    first_named: dict[int, int] = {}
    answers = []
    for index in range(count):
        if index in rejected:
            answers.append(UpsertedRow(index, "rejected", None, rejected[index]))
            continue
        contact_id = outcome.targets[index].contact_id
        created, updated = written.get(contact_id, (False, False))
        earlier = first_named.setdefault(contact_id, index)
        reasons = [adjusted[index]] if index in adjusted else []
        if earlier == index:
            status = "created" if created else "updated" if updated else "unchanged"
        else:
            status = "updated" if created or updated else "unchanged"
            reasons.insert(0, f"the same contact as row {earlier}: merged into it")
        answers.append(UpsertedRow(index, status, contact_id, "; ".join(reasons) or None))
    return answers
