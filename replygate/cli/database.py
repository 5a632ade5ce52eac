"""``replygate db``: the schema."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, pass_app, say


@click.group("db")
def group() -> None:
    """Database schema."""


@group.command("upgrade")
@pass_app
@clean_errors
def upgrade(app: App) -> None:
    """Create or migrate the schema to the newest revision (Alembic)."""
    from replygate.store import keyring
    from replygate.store.db import current_revision, upgrade

    keyring.load(app.settings)  # a migration may seal stored values
    upgrade(app.settings.database_url)
    say(f"database at revision {current_revision(app.engine)}")
