"""Attacks on the key file, and on the keys through it: a key file missing, readable
by others, not JSON, or replaced by another one; two operators rotating at once.
Each is run through the real ``replygate`` command in a process of its own.

A problem with the file itself is one line naming the file and exit status 1,
for ``serve`` and for every command that reads the database, before anything
is read or sealed. A key file that is sound but not the one the values were
sealed with opens nothing: every read fails loudly (never empty text).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.store import keyring
from replygate.store.keyring import Keyring
from replygate.store.models import Message, Thread
from tests.helpers import cli_env, free_port
from tests.portal_support import People, messaging, password_hash, people

__all__ = ["messaging", "password_hash", "people"]  # fixtures

REPLYGATE = str(Path(sys.executable).with_name("replygate"))
MARK = "Bilbykeyfilemark"


@pytest.fixture
def written(people: People, messaging: Messaging) -> None:
    messaging.send(sender=people.staff, to=[people.client1], subject=MARK, body=f"{MARK} body")


def _run(
    settings: Settings, *args: str, keys: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cli_env(settings)}
    if keys is not None:
        env["REPLYGATE_ENCRYPTION_KEYS_FILE"] = str(keys)
    return subprocess.run(
        [REPLYGATE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _missing(settings: Settings) -> Path:
    return settings.encryption_keys_file.with_name("gone")


def _readable(settings: Settings) -> Path:
    path = settings.encryption_keys_file.with_name("open")
    shutil.copy(settings.encryption_keys_file, path)
    path.chmod(0o644)
    return path


def _not_json(settings: Settings) -> Path:
    path = settings.encryption_keys_file.with_name("garbled")
    path.write_bytes(settings.encryption_keys_file.read_bytes()[:-20])
    path.chmod(0o600)
    return path


BAD_FILES: dict[str, tuple[Callable[[Settings], Path], str]] = {
    "missing": (_missing, "does not exist"),
    "readable by others": (_readable, "is readable by others (mode 644); chmod 600 it"),
    "not JSON": (_not_json, "is not a replygate key file"),
}
SERVE = ["serve", "--smtp", "127.0.0.1:0", "--portal", "127.0.0.1:0"]


def _serve_on_free_ports() -> list[str]:
    """``SERVE`` as run: on ports free now, so a refusal is the key file's, not a port's."""
    return ["serve", "--smtp", f"127.0.0.1:{free_port()}", "--portal", f"127.0.0.1:{free_port()}"]


@pytest.mark.parametrize("problem", list(BAD_FILES))
@pytest.mark.parametrize(
    "command", [["threads", "list"], ["threads", "show", "1"], ["keys", "status"], SERVE]
)
def test_a_bad_key_file_is_one_line_naming_it_and_exit_1(
    settings: Settings, written: None, problem: str, command: list[str]
) -> None:
    make, says = BAD_FILES[problem]
    path = make(settings)
    if command is SERVE:
        command = _serve_on_free_ports()
    done = _run(settings, *command, keys=path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0] and says in lines[0]
    assert "Traceback" not in done.stderr and MARK not in done.stdout + done.stderr
    assert not _missing(settings).exists()  # no new key was made in its place


def test_a_missing_key_file_is_not_replaced_by_a_new_key_over_sealed_values(
    settings: Settings, written: None, sessions: sessionmaker[Session]
) -> None:
    """On SQLite the key file is made on first run; a lost one must not be made again,
    which would seal new values with a key the backed-up file does not hold."""
    if not settings.is_sqlite:
        pytest.skip("PostgreSQL never makes a key file (every host shares one)")
    away = settings.encryption_keys_file.with_name("backup")
    settings.encryption_keys_file.rename(away)
    done = _run(settings, "send", "--from", People.staff, "--to", People.client1,
                "--subject", "New", "--body", "New text")  # fmt: skip
    assert done.returncode == 1
    assert "holds values sealed with a key: restore the key file" in done.stderr
    assert not settings.encryption_keys_file.exists()
    away.rename(settings.encryption_keys_file)
    assert _run(settings, "threads", "show", "1").returncode == 0


def test_another_key_file_opens_nothing_and_says_so(
    settings: Settings, written: None, tmp_path: Path
) -> None:
    other = Keyring.create(tmp_path / "other").path  # the same version 1, another key
    for command in (["threads", "list"], ["threads", "show", "1"]):
        done = _run(settings, *command, keys=other)
        assert done.returncode == 1
        error = [ln for ln in done.stderr.splitlines() if ln.startswith("Error:")]
        assert error == [
            "Error: a sealed value does not open with key version 1: the key is wrong, or the "
            "value was changed or moved from another row (threads.subject row 1)"
        ], done.stderr
        assert MARK not in done.stdout


def test_two_rotations_at_once_both_finish_and_every_value_opens(
    settings: Settings, written: None, sessions: sessionmaker[Session], messaging: Messaging
) -> None:
    for n in range(30):
        messaging.send(sender=People.staff, to=[People.client2], subject=f"S{n}", body=f"B{n}")
    env = {**os.environ, **cli_env(settings)}
    rotations = [
        subprocess.Popen(
            [REPLYGATE, "keys", "rotate", "--batch", "5"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in rotations]
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    # Each says the key active when it ended: the later one's, or its own.
    assert {out.split(" is active")[0] for _, out, _ in outcomes} <= {
        "key version 2",
        "key version 3",
    }
    ring = keyring.install(Keyring(settings.encryption_keys_file))
    assert ring.versions == [1, 2, 3] and ring.active == 3
    with sessions() as s:
        subjects = sorted(t.subject for t in s.scalars(select(Thread)))
        bodies = [m.body for m in s.scalars(select(Message))]
        heads = {m.body_sealed[:4] for m in s.scalars(select(Message))}
    assert subjects == sorted([MARK, *(f"S{n}" for n in range(30))])
    assert len(bodies) == 31 and heads == {b"\x00\x00\x00\x03"}
    status = _run(settings, "keys", "status")
    assert status.returncode == 0 and "versions stored values use but" not in status.stdout


def test_serve_refuses_to_start_with_a_key_file_that_opens_nothing_stored(
    settings: Settings, written: None, tmp_path: Path
) -> None:
    other = Keyring.create(tmp_path / "other").path
    command = _serve_on_free_ports()
    done = _run(settings, *command, keys=other)
    assert done.returncode == 1, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if "store.seal_broken" not in ln]
    assert line.startswith(f"replygate: the encryption key file {other} opens none of the newest")
    assert "threads.subject row 1" in line and MARK not in done.stderr
    once = _run(settings, "worker", "--once", keys=other)
    assert once.returncode == 1 and "opens none of the newest" in once.stderr
