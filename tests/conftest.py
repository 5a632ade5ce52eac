"""Shared fixtures: a migrated database (SQLite by default, PostgreSQL when
``REPLYGATE_TEST_DATABASE_URL`` names one) and settings rooted in a temp dir.

The whole suite runs once per backend; ``make test`` runs both.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings, load_settings
from replygate.store import keyring
from replygate.store.db import make_engine, normalise_url, session_factory, upgrade
from replygate.store.keyring import Keyring
from replygate.store.models import Base
from tests.dns_server import LoopbackDns, Zone

# Property tests assert behaviour, never speed (benchmarks under bench/ do that): on a
# shared machine an example slower than Hypothesis's 200 ms, or a slow draw, is no failure.
hypothesis.settings.register_profile(
    "replygate", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile("replygate")

TEST_SECRET = "test-secret-" + "k" * 52
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _pg_url() -> str | None:
    return os.environ.get("REPLYGATE_TEST_DATABASE_URL") or None


@pytest.fixture(scope="session")
def backend_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database: for SQLite a template file copied per test; for
    PostgreSQL a database of its own on the given server (so concurrent runs
    never meet), migrated once from empty and dropped at the end."""
    url = _pg_url()
    if url is None:
        path = tmp_path_factory.mktemp("template") / "template.db"
        upgrade(f"sqlite:///{path}")
        yield str(path)
        return
    admin = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    name = f"replygate_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the suite must not pass silently without its database
        pytest.exit(f"PostgreSQL at {url} is unreachable: {exc}", returncode=3)
    own = make_url(normalise_url(url)).set(database=name).render_as_string(hide_password=False)
    upgrade(own)
    yield own
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(backend_template: str, tmp_path: Path) -> Iterator[str]:
    """A clean, migrated database for one test."""
    if _pg_url() is None:
        path = tmp_path / "replygate.db"
        shutil.copyfile(backend_template, path)
        yield f"sqlite:///{path}"
        return
    engine = make_engine(backend_template)
    tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield backend_template


@pytest.fixture(scope="session")
def dns_server() -> Iterator[LoopbackDns]:
    """The suite's DNS: a server on loopback, named in every setting and subprocess.

    The gateway checks SPF, DKIM and DMARC by default (``mail_auth = verify``);
    no test may ask the machine's resolver, so processes the tests start find
    this server in ``REPLYGATE_DNS_NAMESERVERS``.
    """
    server = LoopbackDns()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REPLYGATE_DNS_NAMESERVERS", server.address)
        yield server
    server.stop()


@pytest.fixture
def dns_zone(dns_server: LoopbackDns) -> Iterator[Zone]:
    """The records this test publishes; all gone after it."""
    dns_server.zone.clear()
    yield dns_server.zone
    dns_server.zone.clear()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, dns_server: LoopbackDns) -> Settings:
    """The test's settings; its key file is made and is the one this process seals with."""
    keys = Keyring.create(tmp_path / "var" / "keys")
    keyring.install(keys)
    return load_settings(
        env={},
        overrides={
            "var_dir": tmp_path / "var",
            "database_url": database_url,
            "secret_key": TEST_SECRET,
            "encryption_keys_file": keys.path,
            "reply_domain": "reply.test",
            "portal_url": "http://portal.test",
            "dns_nameservers": dns_server.address,
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


TIERS = ("unit", "integration", "system")
# Folders of their own that run in a tier: the attacks run against real
# databases and sockets, as integration tests do.
FOLDER_TIERS = {**{tier: tier for tier in TIERS}, "security": "integration"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier, from the folder it lives in (``-m unit`` and so on)."""
    root = Path(__file__).resolve().parent
    for item in items:
        folder = Path(item.path).resolve().relative_to(root).parts[0]
        if folder not in FOLDER_TIERS:
            raise pytest.UsageError(
                f"{item.nodeid} is in no tier; put it under tests/{sorted(FOLDER_TIERS)}"
            )
        item.add_marker(FOLDER_TIERS[folder])
