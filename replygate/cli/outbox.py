"""``replygate outbox``: inspect and retry outgoing notifications (never their content)."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, pass_app
from replygate.core import operations, views


@click.group("outbox")
def group() -> None:
    """Inspect and retry outgoing notifications."""


@group.command("list")
@click.option("--status", help="Only notifications with this status.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def list_notifications(app: App, status: str | None, limit: int, as_json: bool) -> None:
    """List notifications, newest first (never their content)."""
    rows = views.notifications(app.factory, status=status, limit=limit)

    def text() -> None:
        if not rows:
            click.echo("no notifications")
        for r in rows:
            click.echo(
                f"{r.id:>6}  {r.status:<10} {r.kind:<7} {r.recipient:<32} {r.last_error or ''}"
            )

    emit(rows, as_json, text)


@group.command("retry")
@click.argument("ids", type=int, nargs=-1)
@click.option("--failed", is_flag=True, help="Retry every failed notification.")
@pass_app
@clean_errors
def retry(app: App, ids: tuple[int, ...], failed: bool) -> None:
    """Queue failed notifications again (the outbound worker delivers them)."""
    if not ids and not failed:
        raise click.UsageError("give notification ids or --failed")
    n = operations.retry_notifications(app.factory, ids, all_failed=failed)
    click.echo(f"{n} notification(s) queued again")
