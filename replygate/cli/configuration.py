"""``replygate config``: the effective configuration."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, lines, pass_app
from replygate.cli.output import json_option, shown


@click.group("config")
def group() -> None:
    """Inspect the effective configuration."""


@group.command("show")
@json_option
@pass_app
@clean_errors
def show(app: App, as_json: bool) -> None:
    """Print the effective configuration, secrets masked."""
    data = app.settings.masked()
    emit(data, as_json, lines(f"{k} = {shown(v)}" for k, v in data.items()))
