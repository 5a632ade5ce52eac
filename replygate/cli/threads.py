"""``replygate threads``: read threads as an operator (mail text made terminal-safe)."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, pass_app, say, shown
from replygate.cli.output import json_option, plural, table


@click.group("threads")
def group() -> None:
    """Read threads."""


@group.command("list")
@click.option("--user", "email", metavar="EMAIL", help="This person's threads, as their inbox.")
# The values of ``core.placement.InboxFilter``, checked there (importing it here
# would load the database layer for every ``--help``).
@click.option("--unread", "view", flag_value="unread", help="Unread (needs --user).")
@click.option("--pinned", "view", flag_value="pinned", help="Pinned (needs --user).")
@click.option("--archived", "view", flag_value="archived", help="Archived (needs --user).")
@json_option
@pass_app
@clean_errors
def list_threads(app: App, email: str | None, view: str | None, as_json: bool) -> None:
    """List threads, newest activity first; with --user, one person's, pinned first.

    Without a filter, --user lists that person's inbox (archived threads left out).
    """
    if email is None:
        from replygate.core import thread_list

        if view is not None:
            raise click.UsageError(f"--{view} needs --user EMAIL: whose {view} threads?")
        rows = thread_list.threads(app.read_engine)
        text = table(
            ("id", "last activity", "messages", "subject", "participants"),
            ((t.id, t.last_activity_at, t.messages, t.subject[:40], t.participants) for t in rows),
            empty="no threads",
        )
        emit(rows, as_json, text)
        return
    from replygate.core import person_threads
    from replygate.core.placement import InboxFilter

    mine = person_threads.threads_of(app.factory, email, InboxFilter(view or InboxFilter.ALL))
    person_text = table(
        ("id", "last activity", "unread", "pinned", "archived", "subject", "with"),
        (
            (
                t.id,
                t.last_activity_at,
                t.unread,
                t.pinned,
                t.archived,
                t.subject[:40],
                t.with_people,
            )
            for t in mine
        ),
        empty=f"no {view} threads" if view else "no threads",
    )
    emit(mine, as_json, person_text)


@group.command("show")
@click.argument("thread_id", type=int)
@json_option
@pass_app
@clean_errors
def show(app: App, thread_id: int, as_json: bool) -> None:
    """Show a thread with every message."""
    from replygate.core import views

    thread = views.thread(app.factory, thread_id)
    shown(app, "threads show", "thread", thread_id, thread_id)

    def text() -> None:
        say(f"thread {thread.id}: {thread.subject}")
        say(f"participants: {', '.join(thread.participants)}")
        say(plural(len(thread.messages), "message"))
        for m in thread.messages:
            say(f"\n--- message {m.id} from {m.author} via {m.source}, {m.created_at}")
            say(m.body)
            for a in m.attachments:
                say(
                    f"[attachment {a.id}: {a.filename}, {a.content_type}, {plural(a.size, 'byte')}]"
                )

    emit(thread, as_json, text)
