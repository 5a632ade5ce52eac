"""Shared fixtures: a migrated database (SQLite by default, PostgreSQL when
``REPLYGATE_TEST_DATABASE_URL`` names one) and settings rooted in a temp dir.

The whole suite runs once per backend; ``make test`` runs both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings, load_settings
from replygate.store.db import make_engine, session_factory, upgrade
from replygate.store.models import Base

TEST_SECRET = "test-secret-" + "k" * 52
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _pg_url() -> str | None:
    return os.environ.get("REPLYGATE_TEST_DATABASE_URL") or None


@pytest.fixture(scope="session")
def backend_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database: for SQLite a template file copied per test; for
    PostgreSQL the schema itself, migrated once from empty."""
    url = _pg_url()
    if url is None:
        path = tmp_path_factory.mktemp("template") / "template.db"
        upgrade(f"sqlite:///{path}")
        return str(path)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception as exc:  # the suite must not pass silently without its database
        pytest.exit(f"PostgreSQL at {url} is unreachable: {exc}", returncode=3)
    finally:
        engine.dispose()
    upgrade(url)
    return url


@pytest.fixture
def database_url(backend_template: str, tmp_path: Path) -> Iterator[str]:
    """A clean, migrated database for one test."""
    pg = _pg_url()
    if pg is None:
        path = tmp_path / "replygate.db"
        shutil.copyfile(backend_template, path)
        yield f"sqlite:///{path}"
        return
    engine = make_engine(pg)
    tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield pg


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        env={},
        overrides={
            "var_dir": tmp_path / "var",
            "database_url": database_url,
            "secret_key": TEST_SECRET,
            "reply_domain": "reply.test",
            "portal_url": "http://portal.test",
        },
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)
