"""``replygate circles``: named groups of users a message can go to."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.cli.output import json_option, table


@click.group("circles")
def group() -> None:
    """Circles: named groups of users."""


@group.command("add")
@click.argument("name")
@click.option(
    "--clients-may-write",
    is_flag=True,
    help="Clients may write to the Circle too (reaching its staff); off by default.",
)
@pass_app
@clean_errors
def add(app: App, name: str, clients_may_write: bool) -> None:
    """Create a Circle (only staff may write to it unless --clients-may-write)."""
    from replygate.core import operations

    operations.add_circle(app.factory, name, clients_may_write=clients_may_write)
    say(f"added Circle {name}" + (" (clients may write)" if clients_may_write else ""))


@group.command("set")
@click.argument("name")
@click.option(
    "--clients-may-write/--staff-only",
    required=True,
    help="Whether clients may write to the Circle (reaching its staff).",
)
@pass_app
@clean_errors
def set_access(app: App, name: str, clients_may_write: bool) -> None:
    """Open a Circle to clients' messages, or make it staff-only again."""
    from replygate.core import operations

    operations.set_circle_access(app.factory, name, clients_may_write=clients_may_write)
    say(f"{name}: " + ("clients may write" if clients_may_write else "staff only"))


@group.command("add-member")
@click.argument("name")
@click.argument("email")
@pass_app
@clean_errors
def add_member(app: App, name: str, email: str) -> None:
    """Add a user to a Circle."""
    from replygate.core import operations

    operations.add_member(app.factory, name, email)
    say(f"{email} is a member of {name}")


@group.command("list")
@json_option
@pass_app
@clean_errors
def list_circles(app: App, as_json: bool) -> None:
    """List Circles, who may write to them, and their members."""
    from replygate.core import views

    rows = views.circles(app.factory)
    text = table(
        ("name", "who may write", "members"),
        (
            (c.name, "clients and staff" if c.clients_may_write else "staff only", c.members)
            for c in rows
        ),
        empty="no Circles",
    )
    emit(rows, as_json, text)
