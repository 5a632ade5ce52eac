"""Alembic environment: run migrations against the URL the caller configured."""

from alembic import context

from replygate.store.db import make_engine
from replygate.store.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:  # db.upgrade always sets it; alembic run by hand may not
        raise SystemExit("no sqlalchemy.url configured; run `replygate db upgrade`")
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        if connection.in_transaction():
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `replygate db upgrade`")
run_migrations_online()
