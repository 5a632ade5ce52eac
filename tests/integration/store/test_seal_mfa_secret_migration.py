"""The seal_mfa_secret migration seals the two-factor secrets already stored: a user
enrolled (and one mid-enrolment) in plain text before it reads back the same secrets
through the model after it, codes made from them still log in, the columns hold
ciphertext, and its downgrade gives the plain secrets back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pyotp
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import mfa
from replygate.core.workspace import Workspace
from replygate.store.db import transaction
from replygate.store.models import User
from tests.integration.store.migration_support import before_migration

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PENDING = "KRSXG5DSNFXGOIDBEBZWKY3SMV2CAMJS"


def _plain_users(engine: Engine) -> None:
    """Users as revision 0015 stored them: Dana enrolled, Cleo mid-enrolment, Eli neither."""
    at = datetime(2026, 12, 1, tzinfo=UTC)
    insert = text(
        "INSERT INTO users (id, email, name, role, address_status, bounce_count, bounce_days,"
        " mfa_secret, mfa_pending_secret, mfa_enrolled_at, created_at) VALUES (:id, :email,"
        " :name, :role, 'ok', 0, '[]', :secret, :pending, :enrolled, :at)"
    )
    rows = [
        {"id": 1, "email": "dana@staff.test", "name": "Dana", "role": "staff",
         "secret": SECRET, "pending": None, "enrolled": at},
        {"id": 2, "email": "cleo@example.com", "name": "Cleo", "role": "client",
         "secret": None, "pending": PENDING, "enrolled": None},
        {"id": 3, "email": "eli@example.com", "name": "Eli", "role": "client",
         "secret": None, "pending": None, "enrolled": None},
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert, [{**row, "at": at} for row in rows])
        if engine.dialect.name == "postgresql":  # ids were given: move the sequence past them
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('users', 'id'), "
                    "(SELECT max(id) FROM users))"
                )
            )


def _stored(engine: Engine) -> list[object]:
    """Each user's two secret columns as the database holds them, by id."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT mfa_secret, mfa_pending_secret FROM users ORDER BY id")
        ).all()
    return [bytes(v) if isinstance(v, memoryview) else v for row in rows for v in row]


@pytest.fixture
def before_sealing(database_url: str, engine: Engine) -> Iterator[tuple[Config, str, str]]:
    """The database before seal_mfa_secret, with plain secrets."""
    with before_migration(
        database_url, "_seal_mfa_secret.py", lambda: _plain_users(engine)
    ) as found:
        yield found


def test_upgrading_seals_the_secrets_and_downgrading_opens_them(
    before_sealing: tuple[Config, str, str],
    engine: Engine,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    config, before, sealing = before_sealing
    assert _stored(engine) == [SECRET, None, None, PENDING, None, None]

    command.upgrade(config, sealing)
    stored = _stored(engine)
    assert [v is None for v in stored] == [False, True, True, False, True, True]
    for value in (stored[0], stored[3]):
        assert isinstance(value, bytes)
        assert SECRET.encode() not in value and PENDING.encode() not in value
    with sessions() as s:
        dana, cleo, eli = (s.get_one(User, n) for n in (1, 2, 3))
        assert (dana.mfa_secret, dana.mfa_pending_secret) == (SECRET, None)
        assert (cleo.mfa_secret, cleo.mfa_pending_secret) == (None, PENDING)
        assert (eli.mfa_secret, eli.mfa_pending_secret) == (None, None)
        assert len({dana.row_uid, cleo.row_uid, eli.row_uid} - {None}) == 3

    # A code made from the sealed secret still passes the code step, once.
    code = pyotp.TOTP(SECRET).at(time.time())
    workspace = Workspace(sessions, settings)
    assert workspace.second_factor(1, code, address="192.0.2.1").user_id == 1
    assert workspace.second_factor(1, code, address="192.0.2.1").user_id is None
    # And finishing the pending enrolment with the sealed pending secret works.
    with transaction(sessions) as s:
        cleo = s.get_one(User, 2)
        assert len(mfa.finish_enrolment(s, cleo, pyotp.TOTP(PENDING).at(time.time()))) == 10
        assert (cleo.mfa_secret, cleo.mfa_pending_secret) == (PENDING, None)

    command.downgrade(config, before)
    assert _stored(engine) == [SECRET, None, PENDING, None, None, None]
