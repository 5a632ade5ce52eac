"""``replygate queue``: inspect, replay, release, reject and purge inbound mail."""

from __future__ import annotations

import io
import sys

import click

from replygate.cli import App, clean_errors, emit, pass_app, say, shown
from replygate.cli.output import choice_of, json_option, plural, table
from replygate.store.states import InboundStatus


@click.group("queue")
def group() -> None:
    """Inspect and replay inbound mail."""


@group.command("list")
@click.option("--status", type=choice_of(InboundStatus), help="Only mail with this status.")
@click.option("--older-than", "older_than", type=float, help="Received more than DAYS ago.")
@click.option("--newer-than", "newer_than", type=float, help="Received within the last DAYS.")
@click.option("--sender", help="Only mail with this envelope sender.")
@click.option("--thread", "thread_id", type=int, help="Only mail filed into this thread.")
@click.option("--limit", default=100, show_default=True, help="Show at most this many.")
@json_option
@pass_app
@clean_errors
def list_mail(
    app: App,
    status: str | None,
    older_than: float | None,
    newer_than: float | None,
    sender: str | None,
    thread_id: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """List inbound mail, newest first."""
    from replygate.core import views

    rows = views.queue(
        app.factory,
        status=status,
        limit=limit,
        older_than_days=older_than,
        newer_than_days=newer_than,
        sender=sender,
        thread_id=thread_id,
    )

    text = table(
        ("id", "status", "received", "from", "thread", "reason"),
        ((r.id, r.status, r.received_at, r.mail_from or "<>", r.thread_id, r.reason) for r in rows),
        empty="no inbound mail",
    )
    emit(rows, as_json, text)


@group.command("show")
@click.argument("inbound_id", type=int)
@click.option("--raw", is_flag=True, help="Print the original bytes only.")
@json_option
@pass_app
@clean_errors
def show(app: App, inbound_id: int, raw: bool, as_json: bool) -> None:
    """Show one inbound mail: envelope, headers, decisions, extracted reply (or --raw)."""
    from replygate.core import views

    if raw:
        data = views.raw_mail(app.factory, inbound_id)
        shown(app, "queue show --raw", "inbound", inbound_id)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    mail = views.queue_detail(app.factory, inbound_id)
    shown(app, "queue show", "inbound", inbound_id)

    def text() -> None:
        for line in views.explanation(mail, mail.decisions):
            say(line)
        say("\nHeaders:")
        for name, value in mail.headers.items():
            say(f"  {name}: {value}")
        if mail.reply is None:
            say("\n(raw bytes purged)")
        else:
            say("\nExtracted reply:")
            say("  " + mail.reply.replace("\n", "\n  "))

    emit(mail, as_json, text)


@group.command("replay")
@click.argument("ids", type=int, nargs=-1)
@click.option("--failed", is_flag=True, help="Replay every failed mail.")
@pass_app
@clean_errors
def replay(app: App, ids: tuple[int, ...], failed: bool) -> None:
    """Run mail through the engine again (filing stays exactly-once).

    Each replay is a new decision in the mail's history; what was decided
    before stays there (``queue explain``).
    """
    from replygate.core import operations
    from replygate.workers.inbound import InboundWorker

    if not ids and not failed:
        raise click.UsageError("give queue ids or --failed")
    requeued = operations.requeue_inbound(app.factory, ids, all_failed=failed)
    worker = InboundWorker(app.factory, app.settings)
    lines: list[str] = []
    with click.progressbar(
        requeued, label="replaying", file=sys.stderr if len(requeued) > 5 else io.StringIO()
    ) as bar:
        for item in bar:
            done = operations.replay_one(app.factory, item, worker.process)
            if done.status is None:
                lines.append(f"{done.inbound_id}: taken by a running worker")
            else:
                lines.append(
                    f"{done.inbound_id}: {done.previous} -> {done.status}"
                    + (f" ({done.reason})" if done.reason else "")
                )
    for line in lines:
        say(line)
    if not requeued:
        say("nothing to replay")


@group.command("release")
@click.argument("inbound_id", type=int)
@pass_app
@clean_errors
def release(app: App, inbound_id: int) -> None:
    """File a held mail (an operator vouches for its sender)."""
    from replygate.core import operations, views
    from replygate.workers.inbound import InboundWorker

    operations.release_held(app.factory, inbound_id)
    outcome = InboundWorker(app.factory, app.settings).process(inbound_id, released=True)
    status = views.plain(outcome.status)
    say(f"{inbound_id}: {status}" + (f" ({outcome.reason})" if outcome.reason else ""))


@group.command("reject")
@click.argument("inbound_id", type=int)
@click.option(
    "--reason",
    default="rejected by an operator",
    show_default=True,
    help="Why, as the queue will show it.",
)
@pass_app
@clean_errors
def reject(app: App, inbound_id: int, reason: str) -> None:
    """Drop a held mail without filing it."""
    from replygate.core import operations

    operations.reject_held(app.factory, inbound_id, reason)
    say(f"{inbound_id}: rejected")


@group.command("explain")
@click.argument("inbound_id", type=int)
@json_option
@pass_app
@clean_errors
def explain(app: App, inbound_id: int, as_json: bool) -> None:
    """Say in plain words what was decided about a mail, and why, every decision in order
    (replays included)."""
    from replygate.core import views

    explained = views.explain_mail(app.factory, inbound_id)

    def text() -> None:
        for line in explained.explanation:
            say(line)

    emit(explained, as_json, text)


@group.command("stats")
@json_option
@pass_app
@clean_errors
def stats(app: App, as_json: bool) -> None:
    """Count inbound mail by status and reason."""
    from replygate.core import views

    counts = views.queue_stats(app.factory)
    text = table(
        ("count", "status", "reason"),
        ((c.count, c.status, c.reason) for c in counts),
        empty="no inbound mail",
    )
    emit(counts, as_json, text)


@group.command("purge")
@click.option(
    "--older-than", "older_than", type=float, default=None, help="DAYS (default: retention)."
)
@pass_app
@clean_errors
def purge(app: App, older_than: float | None) -> None:
    """Delete raw mail past retention; filed messages and queue records stay."""
    from replygate.core import operations

    purged = operations.purge_raw_mail(app.factory, app.settings, older_than)
    days = f"{purged.days:g} day" + ("" if purged.days == 1 else "s")
    say(f"purged the raw bytes of {plural(purged.count, 'mail')} received more than {days} ago")
