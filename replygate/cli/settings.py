"""``replygate settings``: the organisation's name, Convenience Mode, sender and DMARC
policies, read receipts and unread reminders."""

from __future__ import annotations

import dataclasses

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.cli.output import choice_of, fields, json_option, plural
from replygate.store.states import DmarcPolicy, MfaRequirement, SenderPolicy


@click.group("settings")
def group() -> None:
    """Organisation settings."""


@group.command("show")
@json_option
@pass_app
@clean_errors
def show(app: App, as_json: bool) -> None:
    """Show the organisation's settings."""
    from replygate.core import views

    data = dataclasses.asdict(views.organisation_settings(app.factory, app.settings))
    emit(data, as_json, fields(data))


@group.command("organisation-name")
@click.argument("name")
@pass_app
@clean_errors
def organisation_name(app: App, name: str) -> None:
    """Rename the organisation (the name notifications and the portal show)."""
    from replygate.core import operations

    kept = operations.rename_organisation(app.factory, app.settings, name)
    say(f"organisation name: {kept}")


@group.command("convenience")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option(
    "--acknowledge-hipaa",
    is_flag=True,
    help="Required to switch on: email will carry message content.",
)
@click.option("--by", "acknowledged_by", help="Who acknowledges (recorded with the time).")
@pass_app
@clean_errors
def convenience(app: App, state: str, acknowledge_hipaa: bool, acknowledged_by: str | None) -> None:
    """Switch Convenience Mode (reply by email) on or off."""
    from replygate.core import operations

    voided = operations.set_convenience_mode(
        app.factory,
        app.settings,
        on=state == "on",
        acknowledged_by=acknowledged_by,
        acknowledge_hipaa=acknowledge_hipaa,
    )
    if state == "on":
        say("Convenience Mode is on: notifications carry content and accept replies.")
    else:
        addresses = plural(voided, "outstanding reply address", "outstanding reply addresses")
        say(f"Convenience Mode is off: {addresses} voided.")


@group.group("mfa")
def mfa_group() -> None:
    """Two-factor login."""


@mfa_group.command("require")
@click.argument("who", type=choice_of(MfaRequirement))
@pass_app
@clean_errors
def mfa_require(app: App, who: str) -> None:
    """Who must log in with a code from an authenticator app: staff (and admins), all, or off.

    Those who must and have not enrolled yet enrol at their next login.
    """
    from replygate.core import operations

    operations.set_mfa_requirement(app.factory, app.settings, who)
    click.echo(f"second factor required for: {who}")


@group.command("sender-policy")
@click.argument("policy", type=choice_of(SenderPolicy))
@pass_app
@clean_errors
def sender_policy(app: App, policy: str) -> None:
    """What to do with a reply whose From is not the token's recipient."""
    from replygate.core import operations

    operations.set_sender_policy(app.factory, app.settings, policy)
    say(f"sender policy: {policy}")


@group.command("dmarc-policy")
@click.argument("policy", type=choice_of(DmarcPolicy))
@pass_app
@clean_errors
def dmarc_policy(app: App, policy: str) -> None:
    """Refuse replies whose From domain a trusted relay says failed DMARC (reject-fail),
    or also those it does not say passed (require-pass)."""
    from replygate.core import operations

    operations.set_dmarc_policy(app.factory, app.settings, policy)
    say(f"DMARC policy: {policy}")


@group.command("read-receipts")
@click.argument("state", type=click.Choice(["on", "off"]))
@pass_app
@clean_errors
def read_receipts(app: App, state: str) -> None:
    """Whether "Tell me when it is read" starts ticked at compose and reply."""
    from replygate.core import operations

    operations.set_read_receipts_default(app.factory, app.settings, state == "on")
    say(f"read receipts by default: {state}")


@group.command("reminder-delay")
@click.argument("delay")
@pass_app
@clean_errors
def reminder_delay(app: App, delay: str) -> None:
    """Remind a recipient once of a message unread in the portal after DELAY
    (90s, 30m, 24h, 2d; 0 for no reminders). Messages sent before keep theirs."""
    from replygate.core import operations

    seconds = operations.set_reminder_delay(app.factory, app.settings, delay)
    say(f"reminder delay: {plural(seconds, 'second')}" if seconds else "reminders: off")
