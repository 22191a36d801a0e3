"""Making exported cells safe to open in a spreadsheet (CSV/formula injection).

Crier stores what people import as plain text, formulas included (``=HYPERLINK(...)`` is a
legitimate company name as far as the database is concerned). Whoever *exports* cells for a
spreadsheet neutralises them: a cell that starts with a character a spreadsheet would read as the
start of a formula gets a leading apostrophe, which spreadsheets show as text and do not evaluate.
"""

from __future__ import annotations

from collections.abc import Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> str:
    """``value`` as text that a spreadsheet will not evaluate (``'`` before a formula-like start)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def neutralise_row(values: Iterable[object]) -> list[str]:
    return [neutralise(value) for value in values]
