"""How every moment we show or export is written: ISO 8601, UTC, to the second, ``Z``.

One format for the command line's text and ``--json`` and for the
explanations of decisions, so a time read in one place can be searched for
in another (``2026-12-01T23:39:29Z``). Pure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso_z(value: datetime | str) -> str: ...
@overload
def iso_z(value: None) -> None: ...
@overload
def iso_z(value: datetime | str | None) -> str | None: ...


def iso_z(value: datetime | str | None) -> str | None:
    """``value`` as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC; None stays None.

    A string is read as ISO 8601 first (decision records keep their times as
    text); a time without a zone is taken to be UTC, as everything we store is.
    """
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
