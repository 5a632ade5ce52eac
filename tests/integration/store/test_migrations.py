"""Alembic migrations and the models describe the same schema, on both backends,
and the migrations run down and up again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from replygate.store.db import alembic_config, current_revision
from replygate.store.models import Base


def test_the_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrations_go_down_to_the_first_and_up_again(database_url: str, engine: Engine) -> None:
    head = current_revision(engine)
    command.downgrade(alembic_config(database_url), "0001")
    assert current_revision(engine) == "0001"
    command.upgrade(alembic_config(database_url), "head")
    assert current_revision(engine) == head
