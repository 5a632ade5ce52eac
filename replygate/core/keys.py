"""The encryption keys: their status (which key seals, which the key file holds, how
many stored values each sealed), and rotation and retirement, the operator's acts on
the keyring, audited."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import audit
from replygate.errors import Invalid, StartupError
from replygate.store import keyring, rotation


@dataclass(frozen=True)
class Rotated:
    version: int
    resealed: int
    # Values that do not open, left on their old key: "table.column row N", in order.
    broken: list[str]


def rotate(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    new_key: bool = True,
    batch: int = 200,
    progress: Callable[[int], None] = lambda _: None,
) -> Rotated:
    """Make a new key active (unless resuming) and re-seal every value with it.

    The new key is in the key file before the first value is re-sealed, so a
    crash at any point leaves every value openable; running again (``new_key``
    false) resumes. ``progress`` gets each batch's count. A value that does not
    open is left as it is and named in ``broken`` (the caller reports it).
    """
    ring = keyring.current()
    before = ring.active
    version = ring.rotate() if new_key else before
    _audit(factory, settings, version, {"from": before, "resumed": not new_key})
    resealed = 0
    broken: rotation.Broken = {}
    for count in rotation.reseal_all(factory, ring, batch, broken):
        resealed += count
        progress(count)
    named = [f"{column} row {row}" for column, rows in broken.items() for row in sorted(rows)]
    return Rotated(ring.active, resealed, named)


def to_reseal(factory: sessionmaker[Session], *, new_key: bool) -> int:
    """How many stored values a rotation re-seals: all of them for a new key, else
    those not on the active one."""
    with factory() as session:
        if not new_key:
            return rotation.left_on_old_keys(session, keyring.current().active)
        return sum(sum(v.values()) for v in rotation.versions_in_use(session).values())


def retire(factory: sessionmaker[Session], settings: Settings, version: int) -> None:
    """Remove a key from the file once no stored value is sealed with it."""
    if version == keyring.current().active:
        raise Invalid(f"key version {version} is the active key; rotate first")
    if rotation.version_used(factory, version):
        raise Invalid(
            f"key version {version} still seals stored values; "
            "run `replygate keys rotate --resume` first"
        )
    keyring.current().retire(version)
    _audit(factory, settings, version, {"retired": True})


def _audit(
    factory: sessionmaker[Session], settings: Settings, version: int, detail: audit.Detail
) -> None:
    audit.record_now(
        factory,
        settings,
        audit.who(),
        audit.Action.KEY_ROTATED,
        object_kind=audit.ObjectKind.KEY,
        object_id=version,
        detail=detail,
    )


@dataclass(frozen=True)
class ColumnVersions:
    table: str
    column: str
    # Rows per key version, keyed by the version as a string ("1": 120); empty when none.
    rows: dict[str, int]


@dataclass(frozen=True)
class KeyStatus:
    """Field order is ``keys status --json``'s, a contract."""

    key_file: str
    active: int
    versions: list[int]
    # Versions stored values name that the key file lacks: those values cannot be opened.
    missing: list[int]
    columns: list[ColumnVersions]


def status(factory: sessionmaker[Session]) -> KeyStatus:
    """The loaded keyring and what every sealed column holds, per key version (counted
    in SQL from each value's first four bytes)."""
    ring = keyring.current()
    with factory() as session:
        counts = rotation.versions_in_use(session)
    used = {v for per_version in counts.values() for v in per_version}
    columns = []
    for name, per_version in counts.items():
        table, _, column = name.partition(".")
        columns.append(
            ColumnVersions(table, column, {str(v): n for v, n in sorted(per_version.items())})
        )
    return KeyStatus(
        key_file=str(ring.path),
        active=ring.active,
        versions=ring.versions,
        missing=sorted(used - set(ring.versions)),
        columns=columns,
    )


def check_key_file(factory: sessionmaker[Session]) -> None:
    """Refuse to start with a key file that opens none of the newest stored values: it is
    another key file (the same version numbers, other keys), and running on it would
    seal new values with a key the right file lacks. One value that does not open is
    a broken value, not a wrong file, and stops nothing here."""
    with factory() as session:
        tried, opened = rotation.newest_open(session)
    if tried and not opened:
        raise StartupError(
            f"the encryption key file {keyring.current().path} opens none of the newest "
            f"stored values ({', '.join(tried[:3])}, ...): it is not the key file they were "
            "sealed with; restore that one (replygate keys status shows the versions)"
        )
