"""``replygate audit``: the access audit trail: check, read, export, apply its retention."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.cli.output import json_option, plural, table


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time", param_hint="--since"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@click.group("audit")
def group() -> None:
    """The access audit trail (who read or changed what, tamper-evident)."""


@group.command("verify")
@json_option
@pass_app
@clean_errors
def verify(app: App, as_json: bool) -> None:
    """Check every row of the trail; exit 1 naming the first row that was changed or removed.

    The head (seq and MAC) printed on success can be kept elsewhere: a trail
    cut short after it would end before it.
    """
    from replygate.core import audit

    verdict = audit.verify(app.factory, app.settings)
    data = {
        "intact": verdict.intact,
        "checked": verdict.checked,
        "head_seq": verdict.head_seq,
        "head_mac": verdict.head_mac,
        "bad_seq": verdict.bad_seq,
        "problem": verdict.problem,
    }
    if verdict.intact:
        emit(data, as_json, lambda: say(
            f"intact: {plural(verdict.checked, 'row')}, head {verdict.head_seq} {verdict.head_mac}"
            if verdict.checked else "intact: the trail is empty"
        ))  # fmt: skip
        return
    if as_json:
        emit(data, True, lambda: None)
        sys.exit(1)
    raise click.ClickException(
        f"the audit trail is broken at row {verdict.bad_seq}: {verdict.problem}"
    )


@group.command("list")
@click.option(
    "--user", "user", metavar="EMAIL", help="Only what this person did or had done to them."
)
@click.option(
    "--thread", "thread_id", type=int, metavar="ID", help="Only what touched this thread."
)
@click.option(
    "--since", metavar="ISO8601", help="Only rows written at or after this time (UTC if no zone)."
)
@click.option(
    "--limit", type=int, default=200, show_default=True, help="At most this many, newest first."
)
@json_option
@pass_app
@clean_errors
def list_events(
    app: App, user: str | None, thread_id: int | None, since: str | None, limit: int, as_json: bool
) -> None:
    """The newest rows of the trail."""
    from replygate.core import audit

    try:
        rows = audit.events(
            app.factory, user=user, thread_id=thread_id, since=_since(since), limit=limit,
            newest_first=True,
        )  # fmt: skip
    except audit.UnknownUser as exc:
        raise click.ClickException(f"no user with email {exc.args[0]}") from None

    text = table(
        ("seq", "at", "actor", "action", "object", "outcome"),
        (
            (
                row.seq,
                row.at,
                row.actor,
                row.action,
                f"{row.object_kind}:{row.object_id}" if row.object_kind else None,
                row.outcome,
            )
            for row in rows
        ),
        empty="no audit events",
    )
    emit([row.to_json() for row in rows], as_json, text)


@group.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True, help="JSON lines, or CSV with a header row.")  # fmt: skip
@click.option("--since", metavar="ISO8601", help="Only rows written at or after this time.")
@pass_app
@clean_errors
def export(app: App, fmt: str, since: str | None) -> None:
    """Every row of the trail, oldest first, to standard output."""
    from replygate.core import audit

    rows = audit.iter_events(app.factory, since=_since(since))
    for line in audit.export_lines(rows, fmt):
        click.echo(line, nl=False)
    audit.record_now(
        app.factory, app.settings, audit.Actor.operator(), audit.Action.EXPORTED,
        object_kind=audit.ObjectKind.AUDIT, detail={"format": fmt},
    )  # fmt: skip


@group.command("purge")
@pass_app
@clean_errors
def purge(app: App) -> None:
    """Remove rows older than ``audit_retention_days`` (six years by default), leaving an anchor."""
    from replygate.core import audit

    removed = audit.purge(app.factory, app.settings, audit.Actor.operator())
    days = app.settings.audit_retention_days
    say(f"removed {plural(removed, 'audit event')} older than {plural(days, 'day')}")
