"""The command line starts without loading what it does not use.

``--help`` loads neither SQLAlchemy nor Alembic nor the mail-reading libraries;
a listing (``threads list``) loads SQLAlchemy Core and nothing of the gateway,
the workers, the portal, Alembic or structlog, nor the ORM and our models,
whose mapping cost more than its queries. Timing is ``bench/cli_startup.py``'s
job; what is imported is the deterministic part, checked in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from replygate.config import Settings
from tests.helpers import cli_env

# Run as ``python -m replygate`` does, then report every module loaded.
PROBE = """
import json, sys
from replygate.cli import main
try:
    main(sys.argv[1:], prog_name="replygate")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""

HEAVY = {
    "sqlalchemy",
    "alembic",
    "mako",
    "talon",
    "structlog",
    "rich",
    "aiosmtpd",
    "uvicorn",
    "starlette",
    "mailparser",
    "lxml",
    "psycopg",
}
OURS_NOT_NEEDED = {
    "replygate.gateway",
    "replygate.workers",
    "replygate.portal",
    "replygate.runtime",
    "replygate.mail.extract",
    "replygate.mail.parse",
}


def _loaded(settings: Settings, *args: str) -> set[str]:
    env = {
        **os.environ,
        **cli_env(settings),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, done.stdout + done.stderr
    return set(report["modules"])


def _packages(modules: set[str], names: set[str]) -> set[str]:
    return {n for n in names if any(m == n or m.startswith(n + ".") for m in modules)}


def test_help_loads_no_database_nor_mail_libraries(settings: Settings) -> None:
    loaded = _loaded(settings, "--help")
    assert _packages(loaded, HEAVY) == set()
    assert (
        _packages(loaded, OURS_NOT_NEEDED | {"replygate.core", "replygate.store.models"}) == set()
    )


@pytest.mark.parametrize("group", ["threads", "queue", "users", "outbox", "settings", "serve"])
def test_a_group_s_help_loads_no_database(settings: Settings, group: str) -> None:
    assert _packages(_loaded(settings, group, "--help"), {"sqlalchemy", "alembic"}) == set()


def test_a_listing_loads_the_database_and_nothing_it_does_not_use(settings: Settings) -> None:
    loaded = _loaded(settings, "threads", "list")
    assert "sqlalchemy" in loaded
    assert _packages(loaded, HEAVY - {"sqlalchemy", "psycopg"}) == set()
    assert _packages(loaded, OURS_NOT_NEEDED) == set()


def test_the_list_of_threads_loads_no_orm_nor_models(settings: Settings) -> None:
    loaded = _loaded(settings, "threads", "list")
    orm_and_models = {
        "sqlalchemy.orm",
        "replygate.store.models",
        "replygate.store.access_models",
        "replygate.store.base",
        "replygate.core.views",
    }
    assert _packages(loaded, orm_and_models) == set()
    assert "replygate.store.keyring" in loaded  # as for every use of the database
