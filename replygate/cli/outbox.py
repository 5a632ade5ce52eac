"""``replygate outbox``: inspect and retry outgoing notifications (never their content)."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.cli.output import choice_of, json_option, plural, table
from replygate.store.states import OutboxStatus


@click.group("outbox")
def group() -> None:
    """Inspect and retry outgoing notifications."""


@group.command("list")
@click.option("--status", type=choice_of(OutboxStatus), help="Only notifications with this status.")
@click.option("--limit", default=100, show_default=True, help="Show at most this many.")
@json_option
@pass_app
@clean_errors
def list_notifications(app: App, status: str | None, limit: int, as_json: bool) -> None:
    """List notifications, newest first (never their content)."""
    from replygate.core import views

    rows = views.notifications(app.factory, status=status, limit=limit)
    text = table(
        ("id", "status", "kind", "created", "attempts", "recipient", "last error"),
        (
            (r.id, r.status, r.kind, r.created_at, r.attempts, r.recipient, r.last_error)
            for r in rows
        ),
        empty="no notifications",
    )
    emit(rows, as_json, text)


@group.command("retry")
@click.argument("ids", type=int, nargs=-1)
@click.option("--failed", is_flag=True, help="Retry every failed notification.")
@pass_app
@clean_errors
def retry(app: App, ids: tuple[int, ...], failed: bool) -> None:
    """Queue failed notifications again (the outbound worker delivers them)."""
    from replygate.core import operations

    if not ids and not failed:
        raise click.UsageError("give notification ids or --failed")
    n = operations.retry_notifications(app.factory, ids, all_failed=failed)
    say(f"{plural(n, 'notification')} queued again")
