"""Phone numbers to E.164, the one form Crier stores and sends to.

:func:`to_e164` reads what people type or export: ``+55 11 96123-4567``, ``0055 11 961234567``,
``5511961234567`` (digits without ``+`` are international), or a national number such as
``(11) 96123-4567`` when the tenant has a default country. It answers the E.164 string or
raises :class:`InvalidPhone` whose message says what is wrong, in words a person understands.

Validation is libphonenumber's (``phonenumbers.is_valid_number``). Because parsing every number
with it costs ~100 µs, a number already in international form (``+`` or ``00`` then digits, with
spaces, dashes, dots or brackets) first goes through :class:`_FastValidator`, which applies the same
metadata patterns, compiled once per region. The fast path only ever *accepts*: anything it is not
certain of (a possible national prefix after the country code, a non-geographic code, a number it
finds invalid) goes to ``phonenumbers.parse`` — so it can change speed, never the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult
from phonenumbers.phonemetadata import PhoneMetadata
from phonenumbers.re_util import enable_pattern_cache

# Keep phonenumbers' compiled patterns instead of relying on the re module's bounded cache.
enable_pattern_cache()

MAX_PHONE_INPUT = 64  # longer cells are not phone numbers, whatever they contain
_SEPARATORS = re.compile(r"[\s\-.()/\u00a0\u2010-\u2015]+")
_INTERNATIONAL = re.compile(r"(?:\+|00)([1-9][0-9]{2,16})")
_DIGITS = re.compile(r"[0-9]+")
_EXCEL_SCIENTIFIC = re.compile(r"[0-9](?:[.,][0-9]+)?[eE]\+?[0-9]+")
_TOO_FEW_DIGITS = re.compile(r"\+?[0-9]{1,4}")


class InvalidPhone(ValueError):
    """A value that is not a usable phone number; the message is for the user."""


def to_e164(raw: str, default_country: str | None = None) -> str:
    """The E.164 form of ``raw`` (``+`` and digits), or :class:`InvalidPhone` saying why not.

    ``+`` or ``00`` then digits, and digits alone, are international numbers. With a
    ``default_country`` (ISO 3166 code such as ``BR``), other numbers — and digits alone that are
    a valid national number there — are read as national numbers of that country.
    """
    text = (raw or "").strip()
    if not text:
        raise InvalidPhone("no phone number")
    if text[0] == "+" and text.isascii() and text[1:].isdigit():  # already E.164-shaped: the common case
        fast = _FAST.e164(text[1:])
        if fast is not None:
            return fast
    shown = text if len(text) <= 40 else text[:40] + "…"
    if len(text) > MAX_PHONE_INPUT:
        raise InvalidPhone(f"phone '{shown}' is not a phone number (too long)")
    if _EXCEL_SCIENTIFIC.fullmatch(text):
        raise InvalidPhone(
            f"phone '{shown}' was rounded by a spreadsheet (scientific notation); "
            "format the column as text and export again"
        )
    region = default_country.upper() if default_country else None
    compact = _SEPARATORS.sub("", text)
    if _TOO_FEW_DIGITS.fullmatch(compact):
        raise InvalidPhone(f"phone '{shown}' is too short")
    international = _INTERNATIONAL.fullmatch(compact)
    if international:
        digits = international.group(1)
        fast = _FAST.e164(digits)
        if fast is not None:
            return fast
        return _parse_checked("+" + digits, None, shown)
    if region and _DIGITS.fullmatch(compact) and not compact.startswith("00"):
        try:
            return _parse_checked(compact, region, shown)
        except InvalidPhone as national_problem:
            try:
                return _parse_checked("+" + compact, None, shown)
            except InvalidPhone:
                raise national_problem from None
    if _DIGITS.fullmatch(compact):
        fast = _FAST.e164(compact)
        if fast is not None:
            return fast
        try:
            return _parse_checked("+" + compact, None, shown)
        except InvalidPhone as problem:
            if "too short" in str(problem) or "too long" in str(problem):
                raise
            raise InvalidPhone(
                f"phone '{shown}' is not a valid international number (without + the first digits are "
                "the country code; national numbers need the workspace's default country)"
            ) from None
    return _parse_checked(text, region, shown)


def _parse_checked(text: str, region: str | None, shown: str) -> str:
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise InvalidPhone(_parse_problem(exc, shown, region)) from None
    if phonenumbers.is_valid_number(number):
        return phonenumbers.format_number(number, PhoneNumberFormat.E164)
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason == ValidationResult.TOO_SHORT or reason == ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        raise InvalidPhone(f"phone '{shown}' is too short")
    if reason == ValidationResult.TOO_LONG:
        raise InvalidPhone(f"phone '{shown}' is too long")
    if reason == ValidationResult.INVALID_COUNTRY_CODE:
        raise InvalidPhone(f"phone '{shown}' has an unknown country code")
    where = phonenumbers.region_code_for_country_code(number.country_code)
    country = f" in {where}" if where and where not in ("ZZ", "001") else ""
    if reason == ValidationResult.INVALID_LENGTH:
        raise InvalidPhone(f"phone '{shown}' has the wrong number of digits{country}")
    raise InvalidPhone(f"phone '{shown}' is not a valid number{country}")


def _parse_problem(exc: NumberParseException, shown: str, region: str | None) -> str:
    kind = exc.error_type
    if kind == NumberParseException.INVALID_COUNTRY_CODE:
        if region is None and not shown.lstrip().startswith("+"):
            return (
                f"phone '{shown}' has no country code (write it with + and the country code, "
                "or set the workspace's default country)"
            )
        return f"phone '{shown}' has an unknown country code"
    if kind in (NumberParseException.TOO_SHORT_NSN, NumberParseException.TOO_SHORT_AFTER_IDD):
        return f"phone '{shown}' is too short"
    if kind == NumberParseException.TOO_LONG:
        return f"phone '{shown}' is too long"
    return f"phone '{shown}' is not a phone number"


@dataclass(frozen=True, slots=True)
class _Desc:
    lengths: frozenset[int]
    pattern: re.Pattern[str]

    def matches(self, nsn: str) -> bool:
        return (not self.lengths or len(nsn) in self.lengths) and self.pattern.fullmatch(nsn) is not None


class _Region:
    """One region's patterns: ``valid`` is ``phonenumbers._number_type_helper(nsn) != UNKNOWN``.

    The number types (mobile, fixed line, toll free, ...) whose possible lengths admit a length are
    joined into one alternation per length, so a number costs two regular-expression matches.
    """

    __slots__ = ("_by_length", "general", "kinds", "leading_digits")

    def __init__(
        self, general: _Desc | None, kinds: tuple[_Desc, ...], leading_digits: re.Pattern[str] | None
    ):
        self.general = general
        self.kinds = kinds
        self.leading_digits = leading_digits
        self._by_length: dict[int, re.Pattern[str] | None] = {}

    def valid(self, nsn: str) -> bool:
        if self.general is None or not self.general.matches(nsn):
            return False
        size = len(nsn)
        if size not in self._by_length:
            patterns = [
                kind.pattern.pattern for kind in self.kinds if not kind.lengths or size in kind.lengths
            ]
            self._by_length[size] = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        combined = self._by_length[size]
        return combined is not None and combined.fullmatch(nsn) is not None


_KIND_ATTRIBUTES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


def _desc(desc) -> _Desc | None:
    if desc is None or not desc.national_number_pattern:
        return None
    return _Desc(frozenset(desc.possible_length or ()), re.compile(desc.national_number_pattern))


class _FastValidator:
    """The valid-number decision of ``phonenumbers`` for ``+<digits>`` input, with patterns compiled once."""

    def __init__(self) -> None:
        self._regions: dict[str, _Region] = {}
        self._national_prefix: dict[int, re.Pattern[str] | None] = {}

    def e164(self, digits: str) -> str | None:
        """``"+" + digits`` when that is certainly a valid number as ``phonenumbers`` would parse it."""
        country_code, nsn = _split_country_code(digits)
        if country_code == 0 or not 2 <= len(nsn) <= 17:
            return None
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[country_code]
        if "001" in regions:
            return None
        prefix = self._prefix_for_parsing(country_code)
        if prefix is not None and prefix.match(nsn):
            return None  # phonenumbers might strip a national prefix here: let it decide
        return "+" + digits if self._valid(regions, nsn) else None

    def _valid(self, regions: tuple[str, ...], nsn: str) -> bool:
        if len(regions) == 1:
            return self._region(regions[0]).valid(nsn)
        for code in regions:  # phonenumbers' _region_code_for_number_from_list
            region = self._region(code)
            if region.leading_digits is not None:
                if region.leading_digits.match(nsn):
                    return region.valid(nsn)
            elif region.valid(nsn):
                return True
        return False

    def _region(self, code: str) -> _Region:
        region = self._regions.get(code)
        if region is None:
            metadata = PhoneMetadata.metadata_for_region(code, None)
            kinds = tuple(d for d in (_desc(getattr(metadata, a)) for a in _KIND_ATTRIBUTES) if d is not None)
            leading = re.compile(metadata.leading_digits) if metadata.leading_digits is not None else None
            region = _Region(_desc(metadata.general_desc), kinds, leading)
            self._regions[code] = region
        return region

    def _prefix_for_parsing(self, country_code: int) -> re.Pattern[str] | None:
        if country_code not in self._national_prefix:
            main = phonenumbers.region_code_for_country_code(country_code)
            metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, main)
            pattern = metadata.national_prefix_for_parsing if metadata is not None else None
            self._national_prefix[country_code] = re.compile(pattern) if pattern else None
        return self._national_prefix[country_code]


_COUNTRY_CODES = {str(code): code for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}


def _split_country_code(digits: str) -> tuple[int, str]:
    """phonenumbers' ``_extract_country_code``: the shortest known code at the start."""
    if not digits or digits[0] == "0":
        return 0, digits
    for size in (1, 2, 3):
        code = _COUNTRY_CODES.get(digits[:size])
        if code is not None and len(digits) > size:
            return code, digits[size:]
    return 0, digits


_FAST = _FastValidator()


@cache
def _countries_by_timezone() -> dict[str, str]:
    """Each time zone's country from the IANA database's ``zone.tab`` (shipped by the tzdata package)."""
    table = (files("tzdata.zoneinfo") / "zone.tab").read_text(encoding="utf-8")
    countries = {}
    for line in table.splitlines():
        if line and not line.startswith("#"):
            country, _, zone, *_ = line.split("\t")
            countries[zone] = country
    return countries


def country_for_timezone(timezone: str) -> str | None:
    """The country a time zone belongs to (``America/Sao_Paulo`` → ``BR``), to propose for national
    phone numbers; None for zones of no one country (``UTC``) or that phonenumbers does not know."""
    country = _countries_by_timezone().get(timezone)
    return country if country in phonenumbers.SUPPORTED_REGIONS else None
