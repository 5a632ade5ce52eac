"""Key rotation and retirement: the operator's acts on the keyring, audited."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import audit
from replygate.errors import Invalid
from replygate.store import keyring, rotation


@dataclass(frozen=True)
class Rotated:
    version: int
    resealed: int


def rotate(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    new_key: bool = True,
    progress: Callable[[int], None] = lambda _: None,
) -> Rotated:
    """Make a new key active (unless resuming) and re-seal every value with it.

    The new key is in the key file before the first value is re-sealed, so a
    crash at any point leaves every value openable; running again (``new_key``
    false) resumes. ``progress`` gets each batch's count.
    """
    ring = keyring.current()
    before = ring.active
    version = ring.rotate() if new_key else before
    audit.record_now(
        factory,
        settings,
        audit.who(),
        audit.Action.KEY_ROTATED,
        object_kind=audit.ObjectKind.KEY,
        object_id=version,
        detail={"from": before, "resumed": not new_key},
    )
    resealed = 0
    for count in rotation.reseal_all(factory, ring):
        resealed += count
        progress(count)
    return Rotated(version, resealed)


def left_to_reseal(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return rotation.left_on_old_keys(session, keyring.current().active)


def retire(factory: sessionmaker[Session], settings: Settings, version: int) -> None:
    """Remove a key from the file once no stored value is sealed with it."""
    if rotation.version_used(factory, version):
        raise Invalid(
            f"key version {version} still seals stored values; "
            "run `replygate keys rotate --resume` first"
        )
    keyring.current().retire(version)
    audit.record_now(
        factory,
        settings,
        audit.who(),
        audit.Action.KEY_ROTATED,
        object_kind=audit.ObjectKind.KEY,
        object_id=version,
        detail={"retired": True},
    )
