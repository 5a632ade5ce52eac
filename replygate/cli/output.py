"""How every command prints: the command line's one style, in one place.

- A listing is a ``table``: a header row, then one line per row, columns as
  wide as their widest cell (numbers right-aligned); an empty listing says so
  under its header.
- Times are ISO 8601 UTC ending in ``Z`` (``iso_z``), in text and in JSON.
- Booleans and empty values print as words (``yes``, ``no``, ``none``), never
  as Python's ``True`` or ``None``; counts agree with their noun (``plural``).
- Every enumerated option is a ``click.Choice`` (``choice_of`` a state enum),
  so a wrong value is a usage error (exit status 2) for every command alike.
- ``--json`` is ``json_option``, with its help; its shapes are a contract.

Text for a terminal goes through ``say`` (``lines``, ``table``): what mail
brought (a subject, a body, a header) may hold escape sequences that retitle,
clear or reprogram an operator's terminal, so control characters are shown
as escapes instead. ``--json`` and ``--raw`` stay exact.

Only click and the standard library are imported here: every start of the
command line, ``--help`` included, loads this module.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

import click

from replygate.mail.timestamps import iso_z

F = TypeVar("F", bound=Callable[..., Any])

# What a terminal acts on rather than shows: C0 controls but TAB and LF, DEL, the
# C1 controls (CSI U+009B, OSC U+009D: 8-bit escape sequences), line and
# paragraph separators, and the bidi controls that reorder what is shown.
_TERMINAL_CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)

__all__ = [
    "choice_of",
    "emit",
    "fields",
    "iso_z",
    "json_option",
    "lines",
    "plural",
    "say",
    "shown",
    "table",
    "terminal_safe",
]


def terminal_safe(text: str) -> str:
    """``text`` with each control character a terminal acts on written as an escape (``\\x1b``)."""
    return _TERMINAL_CONTROLS.sub(_escaped, text)


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def say(text: str = "") -> None:
    """Print one line of text that may hold what mail brought, made ``terminal_safe``."""
    click.echo(terminal_safe(text))


def shown(value: Any) -> str:
    """A value as a word for a person: ``yes``/``no``, ``none`` for nothing, times as ``iso_z``,
    lists joined by commas."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "" or value == [] or value == ():
        return "none"
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, list | tuple):
        return ", ".join(shown(item) for item in value)
    return str(value)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 message``, ``2 messages`` (``nouns`` when adding an ``s`` is wrong)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def emit(data: Any, as_json: bool, text: Callable[[], None]) -> None:
    """Print ``data`` as JSON (dataclasses as objects, times as ``iso_z``) or call ``text``."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_jsonable))
    else:
        text()


def lines(texts: Iterable[str]) -> Callable[[], None]:
    """The ``text`` for ``emit`` that prints each of ``texts`` on a line of its own."""

    def text() -> None:
        for line in texts:
            say(line)

    return text


def fields(data: dict[str, Any]) -> Callable[[], None]:
    """The ``text`` for ``emit`` of one record: ``name: value`` lines, values ``shown``."""
    return lines(f"{name}: {shown(value)}" for name, value in data.items())


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str
) -> Callable[[], None]:
    """The ``text`` for ``emit`` of a listing: ``headers`` (upper-cased), then one line per row.

    Cells are ``shown`` and made terminal-safe, line breaks included, so one
    row stays one line; ``empty`` is said under the header when there are no rows.
    """

    def text() -> None:
        body = [[_cell(value) for value in row] for row in rows]
        columns = range(len(headers))
        right = [bool(body) and all(row[i][1] for row in body) for i in columns]
        cells = [[h.upper() for h in headers], *[[c for c, _ in row] for row in body]]
        widths = [max(len(row[i]) for row in cells) for i in columns]
        for row in cells:
            say(_line(row, widths, right))
        if not body:
            say(f"({empty})")

    return text


def _cell(value: Any) -> tuple[str, bool]:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    text = shown(value).replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return terminal_safe(text), number


def _line(row: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    parts = [
        cell.rjust(width) if align else cell.ljust(width)
        for cell, width, align in zip(row, widths, right, strict=True)
    ]
    return "  ".join(parts).rstrip()


def choice_of(states: type[StrEnum]) -> click.Choice[str]:
    """The ``click.Choice`` of a state enum's values, so a wrong one is a usage error."""
    return click.Choice([state.value for state in states])


def json_option(fn: F) -> F:
    """``--json``: the same data as JSON, in the shape scripts rely on."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print JSON instead of text (field names and order are a stable contract).",
    )(fn)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime):
        return iso_z(value)
    return str(value)
