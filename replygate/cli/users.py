"""``replygate users``: staff, clients and admins, the state of their addresses, their sessions."""

from __future__ import annotations

import sys

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.cli.output import choice_of, json_option, plural, table
from replygate.store.states import UserRole


@click.group("users")
def group() -> None:
    """Staff, clients and admins."""


@group.command("add")
@click.argument("email")
@click.option("--name", required=True, help="The person's name, as the portal shows it.")
@click.option("--role", type=choice_of(UserRole), required=True, help="What the person may do.")
@json_option
@pass_app
@clean_errors
def add(app: App, email: str, name: str, role: str, as_json: bool) -> None:
    """Add a user."""
    from replygate.core import operations

    user = operations.add_user(app.factory, app.settings, email, name, role)
    emit(user, as_json, lambda: say(f"added {role} {user.email} (id {user.id})"))


@group.command("set-role")
@click.argument("email")
@click.option("--role", type=choice_of(UserRole), required=True, help="What the person may do.")
@json_option
@pass_app
@clean_errors
def set_role(app: App, email: str, role: str, as_json: bool) -> None:
    """Give a user another role; their portal sessions end, so it applies at once."""
    from replygate.core import operations

    user = operations.set_role(app.factory, app.settings, email, role)
    emit(user, as_json, lambda: say(f"{user.email} is {user.role}"))


@group.command("list")
@json_option
@pass_app
@clean_errors
def list_users(app: App, as_json: bool) -> None:
    """List users with the state of their email address.

    A suppressed staff or admin address is marked and warned about at the
    end: that person hears of no new message until it is reset.
    """
    from replygate.core import views

    rows = views.users(app.factory)
    listing = table(
        ("id", "role", "email", "name", "address", "notified"),
        ((u.id, u.role, u.email, u.name, u.address_status, not u.staff_suppressed) for u in rows),
        empty="no users",
    )

    def text() -> None:
        listing()
        for u in rows:
            if u.staff_suppressed:
                days = ", ".join(u.bounce_days) or "unknown days"
                say(
                    f"warning: {u.role} {u.email} is suppressed after "
                    f"{plural(u.bounce_count, 'hard bounce')} ({days}) and gets no "
                    f"notifications; check the address, then run "
                    f"'replygate users reset-bounces {u.email}'"
                )

    emit(rows, as_json, text)


@group.command("set-password")
@click.argument("email")
@pass_app
@clean_errors
def set_password(app: App, email: str) -> None:
    """Set a portal password (read from stdin when piped, else prompted)."""
    from replygate.core import operations

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    stored = operations.set_password(app.factory, app.settings, email, password)
    say(f"password set for {stored}")


@group.command("reset-bounces")
@click.argument("email")
@pass_app
@clean_errors
def reset_bounces(app: App, email: str) -> None:
    """Mark an address good again after its bounces were dealt with."""
    from replygate.core import operations

    stored = operations.reset_bounces(app.factory, email)
    say(f"{stored}: address ok, notifications resume")


@group.command("sessions")
@click.argument("email")
@json_option
@pass_app
@clean_errors
def list_sessions(app: App, email: str, as_json: bool) -> None:
    """A user's live portal sessions: fingerprint, started, last seen, address, browser."""
    from replygate.core import sessions

    rows = sessions.sessions_of(app.factory, app.settings, email)
    text = table(
        ("fingerprint", "started", "last seen", "address", "browser"),
        ((s.fingerprint, s.created_at, s.last_seen_at, s.address, s.user_agent) for s in rows),
        empty="no live sessions",
    )
    emit(rows, as_json, text)


@group.group("mfa")
def mfa_group() -> None:
    """A user's second factor."""


@mfa_group.command("enroll")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print the URI and recovery codes as JSON.")
@pass_app
@clean_errors
def mfa_enroll(app: App, email: str, as_json: bool) -> None:
    """Give EMAIL a new TOTP secret, live at once; prints its otpauth:// URI and ten
    recovery codes, this once only (hand them over privately)."""
    from replygate.core import operations

    uri, codes = operations.enrol_mfa(app.factory, app.settings, email)
    data = {"email": email, "otpauth_uri": uri, "recovery_codes": codes}

    def text() -> None:
        say(f"otpauth URI: {uri}")
        say("recovery codes:")
        for code in codes:
            say(f"  {code}")

    emit(data, as_json, text)


@mfa_group.command("reset")
@click.argument("email")
@pass_app
@clean_errors
def mfa_reset(app: App, email: str) -> None:
    """Forget EMAIL's second factor (a lost phone); they enrol again at their next login."""
    from replygate.core import operations

    stored = operations.reset_mfa(app.factory, app.settings, email)
    click.echo(f"second factor reset for {stored}")


@group.command("logout")
@click.argument("email")
@pass_app
@clean_errors
def logout(app: App, email: str) -> None:
    """End every portal session of a user at once."""
    from replygate.core import sessions

    ended = sessions.log_out_everywhere(app.factory, app.settings, email)
    say(f"{email}: {plural(ended, 'session')} ended")
