"""Tests of a migration that rewrites stored rows: the database taken back to the
revision before it, seeded there, and brought to the newest schema afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from replygate.store.db import alembic_config


@contextmanager
def before_migration(
    database_url: str, file_suffix: str, seed: Callable[[], None]
) -> Iterator[tuple[Config, str, str]]:
    """The database at the revision before the migration whose file ends in
    ``file_suffix``, with ``seed`` run there: (config, that revision, the migration's).
    Upgraded to the newest afterwards, since PostgreSQL tests share the database."""
    config = alembic_config(database_url)
    scripts = ScriptDirectory.from_config(config).walk_revisions()
    mine = next(s for s in scripts if s.path.endswith(file_suffix))
    command.downgrade(config, str(mine.down_revision))
    try:
        seed()
        yield config, str(mine.down_revision), mine.revision
    finally:
        command.upgrade(config, "head")
