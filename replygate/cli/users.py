"""``replygate users``: staff, clients and admins, the state of their addresses, their sessions."""

from __future__ import annotations

import sys

import click

from replygate.cli import App, clean_errors, emit, lines, pass_app
from replygate.core import operations, sessions, views
from replygate.store.models import UserRole


@click.group("users")
def group() -> None:
    """Staff, clients and admins."""


@group.command("add")
@click.argument("email")
@click.option("--name", required=True)
@click.option("--role", type=click.Choice([role.value for role in UserRole]), required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def add(app: App, email: str, name: str, role: str, as_json: bool) -> None:
    """Add a user."""
    user = operations.add_user(app.factory, app.settings, email, name, role)
    emit(user, as_json, lambda: click.echo(f"added {role} {user.email} (id {user.id})"))


@group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def list_users(app: App, as_json: bool) -> None:
    """List users with the state of their email address.

    A suppressed staff or admin address is marked and warned about at the
    end: that person hears of no new message until it is reset.
    """
    rows = views.users(app.factory)

    def text() -> None:
        for u in rows:
            mark = "  <- not notified" if u.staff_suppressed else ""
            click.echo(
                f"{u.id:>5}  {u.role:<6}  {u.email:<36} {u.name:<24} {u.address_status}{mark}"
            )
        for u in rows:
            if u.staff_suppressed:
                days = ", ".join(u.bounce_days) or "unknown days"
                click.echo(
                    f"warning: {u.role} {u.email} is suppressed after {u.bounce_count} hard "
                    f"bounces ({days}) and gets no notifications; check the address, then "
                    f"run 'replygate users reset-bounces {u.email}'"
                )

    emit(rows, as_json, text)


@group.command("set-password")
@click.argument("email")
@pass_app
@clean_errors
def set_password(app: App, email: str) -> None:
    """Set a portal password (read from stdin when piped, else prompted)."""
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    stored = operations.set_password(app.factory, app.settings, email, password)
    click.echo(f"password set for {stored}")


@group.command("reset-bounces")
@click.argument("email")
@pass_app
@clean_errors
def reset_bounces(app: App, email: str) -> None:
    """Mark an address good again after its bounces were dealt with."""
    stored = operations.reset_bounces(app.factory, email)
    click.echo(f"{stored}: address ok, notifications resume")


@group.command("sessions")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def list_sessions(app: App, email: str, as_json: bool) -> None:
    """A user's live portal sessions: fingerprint, started, last seen, address, browser."""
    rows = sessions.sessions_of(app.factory, app.settings, email)
    emit(
        rows,
        as_json,
        lines(
            f"{s.fingerprint}  {s.created_at:%Y-%m-%d %H:%M}  {s.last_seen_at:%Y-%m-%d %H:%M}"
            f"  {s.address:<39}  {s.user_agent}"
            for s in rows
        ),
    )


@group.command("logout")
@click.argument("email")
@pass_app
@clean_errors
def logout(app: App, email: str) -> None:
    """End every portal session of a user at once."""
    ended = sessions.log_out_everywhere(app.factory, app.settings, email)
    click.echo(f"{email}: {ended} session(s) ended")
