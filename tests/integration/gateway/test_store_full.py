"""The SQLite database full: the gateway defers with ``452 4.3.1``, never 250, and
accepts again once there is room, without a restart.

The database here is an SQLite file of the test's own (in the PostgreSQL run
too), capped with ``sqlite_max_size_mb``'s mechanism: every connection's
``PRAGMA max_page_count``, the gateway's writer connection included. A write
past the cap is SQLite's ``SQLITE_FULL``, exactly what a full disk gives.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import App
from replygate.config import Settings
from replygate.store.db import make_engine, transaction, upgrade
from replygate.store.models import InboundMail
from tests.integration.gateway.conftest import World, queued, reply_message

ROOM_BYTES = 256 * 1024  # what the cap leaves above the migrated, seeded file
BODY = ("Tuesday at 10 works for me. " * 3 + "\r\n") * 500  # about 42 KB a message


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'capped.db'}"
    upgrade(url)
    return url


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    size = (tmp_path / "capped.db").stat().st_size
    wal = tmp_path / "capped.db-wal"
    size += wal.stat().st_size if wal.exists() else 0
    eng = make_engine(database_url, sqlite_max_bytes=size + ROOM_BYTES)
    yield eng
    eng.dispose()


def _send(client: smtplib.SMTP, world: World, n: int) -> tuple[int, str]:
    raw = reply_message(from_=world.client_email, to=world.address, body=f"{n}: {BODY}")
    client.mail(world.client_email)
    code, text = client.rcpt(world.address)
    if code != 250:
        return code, text.decode()
    code, text = client.data(raw)
    return code, text.decode()


def test_a_full_database_answers_452_431_and_accepts_again_once_there_is_room(
    sessions: sessionmaker[Session], world: World, client: smtplib.SMTP
) -> None:
    answers = [_send(client, world, n) for n in range(12)]
    accepted = [a for a in answers if a[0] == 250]
    refused = [a for a in answers if a[0] != 250]
    assert accepted and refused, answers
    assert {code for code, _ in refused} == {452}, refused
    assert all(text.startswith("4.3.1 ") for _, text in refused), refused
    assert "store is full" in refused[0][1]
    assert answers.index(refused[0]) == len(accepted), "a 250 after the store was full"
    assert len(queued(sessions)) == len(accepted), "a 250 without a commit"
    # An operator makes room (purging old mail); the same gateway accepts again.
    with transaction(sessions) as session:
        session.execute(delete(InboundMail))
    code, text = _send(client, world, 99)
    assert code == 250, text
    assert len(queued(sessions)) == 1


def test_the_cap_comes_from_the_settings(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'settings.db'}"
    overrides = {"var_dir": settings.var_dir, "database_url": url, "sqlite_max_size_mb": 3}
    app = App(None, overrides)
    with app.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA max_page_count").scalar()
        page_size = conn.exec_driver_sql("PRAGMA page_size").scalar()
    assert pages * page_size == 3 * 1024 * 1024
