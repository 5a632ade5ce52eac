"""``replygate tokens``: reply addresses, what they name and whether they are accepted."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.cli.output import fields, json_option


@click.group("tokens")
def group() -> None:
    """Reply addresses."""


@group.command("inspect")
@click.argument("address")
@json_option
@pass_app
@clean_errors
def inspect(app: App, address: str, as_json: bool) -> None:
    """Say what a reply address names, whether it is accepted now, and its fingerprint
    (how log lines name it: ``reply+fp:<fingerprint>@…``)."""
    from replygate.core import views

    data = views.reply_address(app.factory, app.settings, address)
    emit(data, as_json, fields(data))


@group.command("revoke")
@click.argument("address")
@pass_app
@clean_errors
def revoke(app: App, address: str) -> None:
    """Revoke one reply address."""
    from replygate.core import operations

    operations.revoke_reply_address(app.factory, app.settings, address)
    say(f"revoked {address}")
