"""``replygate settings``: the organisation's name, Convenience Mode, sender and DMARC
policies, read receipts and unread reminders."""

from __future__ import annotations

import dataclasses

import click

from replygate.cli import App, clean_errors, emit, lines, pass_app
from replygate.core import operations, views


@click.group("settings")
def group() -> None:
    """Organisation settings."""


@group.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def show(app: App, as_json: bool) -> None:
    """Show the organisation's settings."""
    data = dataclasses.asdict(views.organisation_settings(app.factory, app.settings))
    emit(data, as_json, lines(f"{k}: {v}" for k, v in data.items()))


@group.command("organisation-name")
@click.argument("name")
@pass_app
@clean_errors
def organisation_name(app: App, name: str) -> None:
    """Rename the organisation (the name notifications and the portal show)."""
    kept = operations.rename_organisation(app.factory, app.settings, name)
    click.echo(f"organisation name: {kept}")


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
    voided = operations.set_convenience_mode(
        app.factory,
        app.settings,
        on=state == "on",
        acknowledged_by=acknowledged_by,
        acknowledge_hipaa=acknowledge_hipaa,
    )
    if state == "on":
        click.echo("Convenience Mode is on: notifications carry content and accept replies.")
    else:
        click.echo(f"Convenience Mode is off: {voided} outstanding reply address(es) voided.")


@group.command("sender-policy")
@click.argument("policy", type=click.Choice(operations.SENDER_POLICIES))
@pass_app
@clean_errors
def sender_policy(app: App, policy: str) -> None:
    """What to do with a reply whose From is not the token's recipient."""
    operations.set_sender_policy(app.factory, app.settings, policy)
    click.echo(f"sender policy: {policy}")


@group.command("dmarc-policy")
@click.argument("policy", type=click.Choice(operations.DMARC_POLICIES))
@pass_app
@clean_errors
def dmarc_policy(app: App, policy: str) -> None:
    """Refuse replies whose From domain a trusted relay says failed DMARC (reject-fail),
    or also those it does not say passed (require-pass)."""
    operations.set_dmarc_policy(app.factory, app.settings, policy)
    click.echo(f"DMARC policy: {policy}")


@group.command("read-receipts")
@click.argument("state", type=click.Choice(["on", "off"]))
@pass_app
@clean_errors
def read_receipts(app: App, state: str) -> None:
    """Whether "Tell me when it is read" starts ticked at compose and reply."""
    operations.set_read_receipts_default(app.factory, app.settings, state == "on")
    click.echo(f"read receipts by default: {state}")


@group.command("reminder-delay")
@click.argument("delay")
@pass_app
@clean_errors
def reminder_delay(app: App, delay: str) -> None:
    """Remind a recipient once of a message unread in the portal after DELAY
    (90s, 30m, 24h, 2d; 0 for no reminders). Messages sent before keep theirs."""
    seconds = operations.set_reminder_delay(app.factory, app.settings, delay)
    click.echo(f"reminder delay: {seconds} s" if seconds else "reminders: off")
