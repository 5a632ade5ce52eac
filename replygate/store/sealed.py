"""Columns sealed at rest: the ORM attribute is plain text (or bytes, or JSON), the
stored column is the keyring's ciphertext bound to its table, column and row.

A model with sealed columns has a ``row_uid`` (random, made when a sealed value
is first set, since the row's id is not known before its INSERT) and, for each
sealed column, a mapped ``<name>_sealed`` attribute on the stored column and a
``Sealed`` attribute of the plain name::

    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    body_sealed: Mapped[bytes] = mapped_column("body", LargeBinary)
    body = SealedRequired[str]("body", TEXT)

(``Sealed`` for a column that may be NULL, ``SealedRequired`` for one that may not.)

A class-level use (``Message.body`` in a query) is refused: what is stored
cannot be compared with plain text, so such a query would silently match nothing.
Statements that bypass the ORM (bulk INSERTs, Core SELECTs) use ``seal`` and
``unseal`` (or ``seal_row``) with the same table and column names.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Generic, TypeVar

from replygate.store import keyring
from replygate.store.keyring import SealBroken

T = TypeVar("T")


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a sealed attribute's value becomes bytes and back."""

    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


TEXT: Codec[str] = Codec(lambda s: s.encode("utf-8"), lambda b: b.decode("utf-8"))
BYTES: Codec[bytes] = Codec(bytes, bytes)


@functools.cache
def _orjson() -> ModuleType:
    """orjson, imported at the first value written, not at start-up (it loads uuid and
    platform, which a command line that only reads has no use for)."""
    import orjson

    return orjson


def _json_bytes(value: Any) -> bytes:
    """Compact JSON by orjson (non-ASCII written as UTF-8, not escaped; keys that are
    not strings written as strings, as json.dumps does) in a twentieth of json.dumps'
    time: the gateway's writer seals one decision list per mail."""
    orjson = _orjson()
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)  # type: ignore[no-any-return]


JSON: Codec[Any] = Codec(_json_bytes, lambda b: json.loads(b))

# Seals one value: (table, column, row_uid, plain bytes) → stored bytes.
Sealer = Callable[[str, str, bytes, bytes], bytes]

# Every sealed column, by table: what ``keys status`` counts and ``keys rotate`` re-seals.
REGISTRY: dict[str, dict[str, Codec[Any]]] = {}


def seal(table: str, column: str, row: bytes, plain: bytes) -> bytes:
    return sealer()(table, column, row, plain)


def seal_row(table: str, row: dict[str, Any], seal_with: Sealer | None = None) -> dict[str, Any]:
    """``row`` (plain values by column name) as a Core INSERT writes it: a new
    ``row_uid`` and every registered column of ``table`` sealed with it (by
    ``seal_with``, a batch's ``sealer()``, if given)."""
    seal_with = seal_with or sealer()
    uid = keyring.new_row_uid()
    stored = {**row, "row_uid": uid}
    for column, codec in REGISTRY[table].items():
        if stored.get(column) is not None:
            stored[column] = seal_with(table, column, uid, codec.encode(stored[column]))
    return stored


def sealer() -> Sealer:
    """``seal`` for the values of one batch: the key file is looked at once, not per value."""
    seal_with = keyring.current().sealing()

    def seal(table: str, column: str, row: bytes, plain: bytes) -> bytes:
        return seal_with(plain, keyring.aad(table, column, row))

    return seal


def unseal(table: str, column: str, row: bytes, stored: bytes, *, row_id: object = None) -> bytes:
    """Open a stored value; a value that does not open is logged and raised, never empty."""
    try:
        if row is None:  # a value written into a row that never had one sealed
            raise SealBroken("the row has no row_uid")
        return keyring.current().open(stored, keyring.aad(table, column, row))
    except SealBroken as exc:
        # Logging is loaded only here: ``threads list`` opens subjects and loads no logging.
        from replygate import logs

        logs.get_logger(__name__).error(
            "store.seal_broken", table=table, column=column, row=row_id, error=str(exc)
        )
        # Named where it is, so that a one-line error tells the operator which row to restore.
        raise SealBroken(f"{exc} ({table}.{column} row {row_id})") from None


class Sealed(Generic[T]):
    """The plain-text face of one sealed column (see the module docstring)."""

    def __init__(self, column: str, codec: Codec[T]) -> None:
        self.column = column
        self.codec = codec
        self.stored = f"{column}_sealed"
        self.cache = f"_{column}_opened"

    def __set_name__(self, owner: type, name: str) -> None:
        self.table: str = owner.__tablename__  # type: ignore[attr-defined]
        REGISTRY.setdefault(self.table, {})[self.column] = self.codec

    def __get__(self, obj: Any, owner: type | None = None) -> T | None:
        if obj is None:
            return self  # type: ignore[return-value]
        stored = getattr(obj, self.stored)
        if stored is None:
            return None
        cached = obj.__dict__.get(self.cache)
        if cached is not None and cached[0] is stored:
            return cached[1]  # type: ignore[no-any-return]
        plain = self.codec.decode(
            unseal(self.table, self.column, obj.row_uid, stored, row_id=getattr(obj, "id", None))
        )
        obj.__dict__[self.cache] = (stored, plain)
        return plain

    def _refuse(self, *_: object) -> Any:
        raise TypeError(
            f"{self.table}.{self.column} is sealed at rest: select {self.stored} and "
            "open it, or filter on another column"
        )

    __eq__ = __ne__ = __lt__ = __gt__ = __clause_element__ = _refuse  # type: ignore[assignment]
    __hash__ = object.__hash__

    def __set__(self, obj: Any, value: T | None) -> None:
        if value is None:
            setattr(obj, self.stored, None)
            obj.__dict__.pop(self.cache, None)
            return
        if obj.row_uid is None:
            obj.row_uid = keyring.new_row_uid()
        stored = seal(self.table, self.column, obj.row_uid, self.codec.encode(value))
        setattr(obj, self.stored, stored)
        obj.__dict__[self.cache] = (stored, value)


class SealedRequired(Sealed[T]):
    """A sealed column that is NOT NULL: its plain value is never None once set."""

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        return super().__get__(obj, owner)  # type: ignore[return-value]
