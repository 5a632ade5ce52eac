"""The keys that seal what can hold patient data at rest (AES-256-GCM, pyca).

A sealed value is ``version (4 bytes, big-endian) ‖ nonce (12) ‖ ciphertext ‖ tag``.
The version names the key that sealed it, so keys can be rotated while old
values still open. The associated data names the table, the column and the
row (``aad``), so a ciphertext copied into another row or column fails to open
instead of showing another patient's text.

Keys never live in the database: they are in a JSON file of their own
(``{"active": 2, "keys": {"1": "<base64>", "2": "<base64>"}}``, mode 0600),
which is backed up apart from the database. A process seals with the file's
active key and notices a rotation by another process (the file changed on
disk) at its next seal, and at the first value it cannot name the key of.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import secrets
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from replygate.config import Settings
from replygate.errors import ConfigError
from replygate.errors import SealBroken as SealBroken  # raised here; named here as before

HEADER = struct.Struct(">I")
NONCE_BYTES = 12
KEY_BYTES = 32
OVERHEAD = HEADER.size + NONCE_BYTES + 16


def aad(table: str, column: str, row: bytes) -> bytes:
    """The associated data binding a sealed value to one column of one row."""
    return f"{table}.{column}:".encode() + row


def new_row_uid() -> bytes:
    """A row's random name in the associated data (its id is not known before INSERT)."""
    return secrets.token_bytes(16)


def version_of(sealed: bytes) -> int:
    """The key version a sealed value names."""
    if len(sealed) < OVERHEAD:
        raise SealBroken("a sealed value is too short to be one")
    return int(HEADER.unpack_from(sealed)[0])


@dataclass(frozen=True)
class _State:
    active: int
    keys: dict[int, AESGCM]
    stamp: tuple[int, int, int]  # the file's (inode, mtime_ns, size) when read


class Keyring:
    """The versioned keys of one key file; seals with the active one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._state = self._read()

    @classmethod
    def create(cls, path: Path) -> Keyring:
        """Write a new key file with one key (version 1); refuses to overwrite one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = _dump(1, {1: secrets.token_bytes(KEY_BYTES)})
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        return cls(path)

    @classmethod
    def open_or_create(cls, path: Path) -> Keyring:
        return cls(path) if path.exists() else cls.create(path)

    @property
    def active(self) -> int:
        return self._state.active

    @property
    def versions(self) -> list[int]:
        return sorted(self._state.keys)

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        return self.sealing()(plaintext, associated)

    def sealing(self) -> Callable[[bytes, bytes], bytes]:
        """``seal`` for the values of one batch (a batch INSERT): the key file is looked
        at once, here, instead of once for each value (a ``stat`` each)."""
        state = self._fresh()
        key, version = state.keys[state.active], HEADER.pack(state.active)

        def seal(plaintext: bytes, associated: bytes) -> bytes:
            nonce = os.urandom(NONCE_BYTES)
            return version + nonce + key.encrypt(nonce, plaintext, associated)

        return seal

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        version = version_of(sealed)
        key = self._state.keys.get(version) or self._reread().keys.get(version)
        if key is None:
            raise SealBroken(f"a sealed value names key version {version}, which {self.path} lacks")
        nonce = sealed[HEADER.size : HEADER.size + NONCE_BYTES]
        try:
            return key.decrypt(nonce, sealed[HEADER.size + NONCE_BYTES :], associated)
        except InvalidTag:
            raise SealBroken(
                f"a sealed value does not open with key version {version}: the key is "
                "wrong, or the value was changed or moved from another row"
            ) from None

    def rotate(self) -> int:
        """Add a new key and make it the active one; returns its version."""
        with self._changing():
            state = self._read()
            version = max(state.keys) + 1
            raw = self._raw_keys()
            raw[version] = secrets.token_bytes(KEY_BYTES)
            self._write(version, raw)
            return version

    def retire(self, version: int) -> None:
        """Remove a key no value uses any more (the caller checks that); never the active one."""
        with self._changing():
            state = self._read()
            if version == state.active:
                raise ConfigError(f"key version {version} is the active key; rotate first")
            raw = self._raw_keys()
            if version not in raw:
                raise ConfigError(f"{self.path} has no key version {version}")
            del raw[version]
            self._write(state.active, raw)

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the key file's lock (``<file>.lock`` beside it) while reading and rewriting
        it: two operators rotating at once would otherwise both write "version N+1",
        each its own key, and the values sealed with the key that lost would never open."""
        lock = self.path.with_name(f".{self.path.name}.lock")
        with self._lock:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def _fresh(self) -> _State:
        """The keys as the file holds them now (another process may have rotated)."""
        try:
            stat = self.path.stat()
        except OSError:
            return self._state
        if (stat.st_ino, stat.st_mtime_ns, stat.st_size) != self._state.stamp:
            return self._reread()
        return self._state

    def _reread(self) -> _State:
        with self._lock:
            self._state = self._read()
            return self._state

    def _read(self) -> _State:
        active, raw, stamp = _load(self.path)
        return _State(active, {v: AESGCM(k) for v, k in raw.items()}, stamp)

    def _raw_keys(self) -> dict[int, bytes]:
        return _load(self.path)[1]

    def _write(self, active: int, raw: dict[int, bytes]) -> None:
        """Replace the key file atomically: a crash leaves the old file or the new one."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(_dump(active, raw))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._state = self._read()


def _dump(active: int, raw: dict[int, bytes]) -> str:
    keys = {str(v): base64.b64encode(k).decode("ascii") for v, k in sorted(raw.items())}
    return json.dumps({"active": active, "keys": keys}, indent=2) + "\n"


def _load(path: Path) -> tuple[int, dict[int, bytes], tuple[int, int, int]]:
    """Read and check a key file; every problem is one ConfigError line naming the file."""
    try:
        with path.open("rb") as fh:
            stat = os.fstat(fh.fileno())
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(
            f"the encryption key file {path} does not exist "
            "(create it with: replygate keys init --file PATH)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"the encryption key file {path} cannot be read: {exc.strerror}"
        ) from None
    if stat.st_mode & 0o077:
        raise ConfigError(
            f"the encryption key file {path} is readable by others "
            f"(mode {stat.st_mode & 0o777:o}); chmod 600 it"
        )
    try:
        data = json.loads(text)
        active = int(data["active"])
        raw = {int(v): base64.b64decode(k, validate=True) for v, k in data["keys"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise ConfigError(f"the encryption key file {path} is not a replygate key file") from None
    if active not in raw:
        raise ConfigError(f"the encryption key file {path} names active key {active} but lacks it")
    if any(len(k) != KEY_BYTES or v < 1 for v, k in raw.items()):
        raise ConfigError(f"the encryption key file {path} holds a key that is not 256 bits")
    return active, raw, (stat.st_ino, stat.st_mtime_ns, stat.st_size)


# One keyring per process, like the logging set-up: sealed columns open
# themselves on attribute access, where no session or settings are at hand.
_CURRENT: list[Keyring] = []


def install(keyring: Keyring) -> Keyring:
    """Make ``keyring`` the one this process seals and opens with."""
    _CURRENT[:] = [keyring]
    return keyring


def load(settings: Settings) -> Keyring:
    """Load and install the settings' key file; for SQLite it is made on first run,
    like the secret key; elsewhere it must exist (every host shares it)."""
    path = settings.encryption_keys_file
    if _CURRENT and _CURRENT[0].path == path:
        return _CURRENT[0]
    if settings.is_sqlite and not path.exists():
        _refuse_a_new_key_for_sealed_data(path, settings.database_url)
        return install(Keyring.create(path))
    return install(Keyring(path))


def _refuse_a_new_key_for_sealed_data(path: Path, database_url: str) -> None:
    """A new key file is made for a database that holds nothing sealed yet, never for one
    that does: a lost or misnamed key file would otherwise be replaced by a new key,
    every stored value would stop opening, and new values would be sealed with a key
    the backed-up file does not hold, under the same version number."""
    import sqlite3

    from sqlalchemy.engine import make_url

    database = make_url(database_url).database
    if not database or database == ":memory:" or not Path(database).exists():
        return
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT m.name FROM sqlite_master AS m, pragma_table_info(m.name) AS c "
                "WHERE m.type = 'table' AND c.name = 'row_uid'"
            )
        ]
        sealed = any(
            conn.execute(f'SELECT 1 FROM "{t}" WHERE row_uid IS NOT NULL LIMIT 1').fetchone()
            for t in tables
        )
    conn.close()
    if sealed:
        raise ConfigError(
            f"the encryption key file {path} does not exist, but the database {database} "
            "holds values sealed with a key: restore the key file from its backup "
            "(or point REPLYGATE_ENCRYPTION_KEYS_FILE at it)"
        )


def current() -> Keyring:
    if not _CURRENT:
        raise ConfigError("no encryption keyring is loaded in this process")
    return _CURRENT[0]
