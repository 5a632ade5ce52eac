"""``replygate config``: the effective configuration."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, lines, pass_app


@click.group("config")
def group() -> None:
    """Inspect the effective configuration."""


@group.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def show(app: App, as_json: bool) -> None:
    """Print the effective configuration, secrets masked."""
    data = app.settings.masked()
    emit(data, as_json, lines(f"{k} = {v}" for k, v in data.items()))
