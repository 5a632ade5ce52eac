"""``replygate tokens``: reply addresses, what they name and whether they are accepted."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, lines, pass_app
from replygate.core import operations, views


@click.group("tokens")
def group() -> None:
    """Reply addresses."""


@group.command("inspect")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def inspect(app: App, address: str, as_json: bool) -> None:
    """Say what a reply address names, whether it is accepted now, and its fingerprint
    (how log lines name it: ``reply+fp:<fingerprint>@…``)."""
    data = views.reply_address(app.factory, app.settings, address)
    emit(data, as_json, lines(f"{k}: {v}" for k, v in data.items()))


@group.command("revoke")
@click.argument("address")
@pass_app
@clean_errors
def revoke(app: App, address: str) -> None:
    """Revoke one reply address."""
    operations.revoke_reply_address(app.factory, app.settings, address)
    click.echo(f"revoked {address}")
