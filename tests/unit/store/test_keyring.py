"""The keyring: sealed values open only with their key, row and column."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from replygate.errors import ConfigError
from replygate.store.keyring import Keyring, SealBroken, aad, new_row_uid, version_of


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keys")


def test_a_new_key_file_is_private_and_holds_one_256_bit_key(keyring: Keyring) -> None:
    assert keyring.path.stat().st_mode & 0o777 == 0o600
    assert keyring.active == 1 and keyring.versions == [1]


def test_a_sealed_value_opens_with_its_row_and_column_and_hides_the_text(
    keyring: Keyring,
) -> None:
    row = new_row_uid()
    sealed = keyring.seal(b"Cleo's biopsy result", aad("messages", "body", row))
    assert b"biopsy" not in sealed and version_of(sealed) == 1
    assert keyring.open(sealed, aad("messages", "body", row)) == b"Cleo's biopsy result"


@pytest.mark.parametrize(
    "where",
    [
        ("messages", "body", b"other-row-uid-16"),
        ("messages", "quote", None),
        ("threads", "body", None),
    ],
)
def test_a_sealed_value_moved_to_another_row_or_column_does_not_open(
    keyring: Keyring, where: tuple[str, str, bytes | None]
) -> None:
    row = new_row_uid()
    sealed = keyring.seal(b"text", aad("messages", "body", row))
    table, column, other = where
    with pytest.raises(SealBroken, match="moved from another row"):
        keyring.open(sealed, aad(table, column, other or row))


def test_a_changed_byte_anywhere_after_the_version_is_refused(keyring: Keyring) -> None:
    row = new_row_uid()
    sealed = bytearray(keyring.seal(b"text", aad("t", "c", row)))
    for i in range(4, len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(SealBroken):
            keyring.open(bytes(tampered), aad("t", "c", row))


def test_another_key_file_cannot_open_it(keyring: Keyring, tmp_path: Path) -> None:
    row = new_row_uid()
    sealed = keyring.seal(b"text", aad("t", "c", row))
    stranger = Keyring.create(tmp_path / "other-keys")
    with pytest.raises(SealBroken, match="key is wrong"):
        stranger.open(sealed, aad("t", "c", row))


def test_after_a_rotation_new_values_use_the_new_key_and_old_ones_still_open(
    keyring: Keyring,
) -> None:
    row = new_row_uid()
    old = keyring.seal(b"old", aad("t", "c", row))
    assert keyring.rotate() == 2
    new = keyring.seal(b"new", aad("t", "c", row))
    assert (version_of(old), version_of(new)) == (1, 2)
    assert keyring.open(old, aad("t", "c", row)) == b"old"
    keyring.retire(1)
    assert keyring.versions == [2]
    with pytest.raises(SealBroken, match="lacks"):
        keyring.open(old, aad("t", "c", row))


def test_another_process_sees_a_rotation_at_its_next_seal(keyring: Keyring) -> None:
    other = Keyring(keyring.path)  # what a running serve holds
    keyring.rotate()
    assert version_of(other.seal(b"x", aad("t", "c", b"r"))) == 2


def test_an_unknown_version_rereads_the_file_before_refusing(keyring: Keyring) -> None:
    other = Keyring(keyring.path)
    keyring.rotate()
    sealed = keyring.seal(b"x", aad("t", "c", b"r"))
    assert other.open(sealed, aad("t", "c", b"r")) == b"x"


def test_the_active_key_cannot_be_retired(keyring: Keyring) -> None:
    with pytest.raises(ConfigError, match="active key"):
        keyring.retire(1)


def test_a_key_file_readable_by_others_is_refused_in_one_line(keyring: Keyring) -> None:
    os.chmod(keyring.path, 0o644)
    with pytest.raises(ConfigError, match="readable by others") as caught:
        Keyring(keyring.path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "body",
    ["", "{}", '{"active": 1, "keys": {"1": "c2hvcnQ="}}', '{"active": 2, "keys": {"1": "x"}}'],
)
def test_a_malformed_key_file_is_refused_naming_the_file(tmp_path: Path, body: str) -> None:
    path = tmp_path / "keys"
    path.write_text(body)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=str(path)):
        Keyring(path)


def test_a_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keys init"):
        Keyring(tmp_path / "absent")


def test_the_file_is_json_with_base64_keys(keyring: Keyring) -> None:
    data = json.loads(keyring.path.read_text())
    assert data["active"] == 1 and len(data["keys"]["1"]) == 44


def test_rotations_at_once_each_add_their_own_version_and_none_is_lost(keyring: Keyring) -> None:
    """Operators rotating at the same moment (a process each: a Keyring each): without
    the file's lock two would write the same version, each with its own key, and the
    values one of them sealed would never open again."""
    rings = [Keyring(keyring.path) for _ in range(8)]
    sealed: list[tuple[bytes, bytes]] = []
    start = threading.Barrier(len(rings))

    def rotate(ring: Keyring) -> None:
        start.wait()
        ring.rotate()
        sealed.append((ring.seal(b"x", aad("t", "c", b"r")), b"x"))

    workers = [threading.Thread(target=rotate, args=(ring,)) for ring in rings]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    final = Keyring(keyring.path)
    assert final.versions == list(range(1, 10)) and final.active == 9
    assert [final.open(value, aad("t", "c", b"r")) for value, _ in sealed] == [b"x"] * 8


def test_a_changed_version_header_is_refused_even_naming_a_key_the_file_holds(
    keyring: Keyring,
) -> None:
    row = new_row_uid()
    keyring.rotate()  # versions 1 and 2: a flipped low bit names the other, which exists
    sealed = keyring.seal(b"text", aad("t", "c", row))
    for bit in range(32):
        tampered = bytearray(sealed)
        tampered[3 - bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SealBroken, match=r"lacks|does not open"):
            keyring.open(bytes(tampered), aad("t", "c", row))


def test_a_truncated_value_is_refused_at_every_length(keyring: Keyring) -> None:
    row = new_row_uid()
    sealed = keyring.seal(b"text", aad("t", "c", row))
    for length in range(len(sealed)):
        with pytest.raises(SealBroken):
            keyring.open(sealed[:length], aad("t", "c", row))


def test_a_value_of_a_retired_key_is_refused_naming_the_version(keyring: Keyring) -> None:
    row = new_row_uid()
    old = keyring.seal(b"text", aad("t", "c", row))
    keyring.rotate()
    keyring.retire(1)
    with pytest.raises(SealBroken, match=r"names key version 1, which .* lacks"):
        Keyring(keyring.path).open(old, aad("t", "c", row))
