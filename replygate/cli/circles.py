"""``replygate circles``: named groups of users a message can go to."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, lines, pass_app
from replygate.core import operations, views


@click.group("circles")
def group() -> None:
    """Circles: named groups of users."""


@group.command("add")
@click.argument("name")
@pass_app
@clean_errors
def add(app: App, name: str) -> None:
    """Create a Circle."""
    operations.add_circle(app.factory, name)
    click.echo(f"added Circle {name}")


@group.command("add-member")
@click.argument("name")
@click.argument("email")
@pass_app
@clean_errors
def add_member(app: App, name: str, email: str) -> None:
    """Add a user to a Circle."""
    operations.add_member(app.factory, name, email)
    click.echo(f"{email} is a member of {name}")


@group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def list_circles(app: App, as_json: bool) -> None:
    """List Circles and their members."""
    rows = views.circles(app.factory)
    emit(rows, as_json, lines(f"{c.name}: {', '.join(c.members) or '-'}" for c in rows))
