"""``replygate threads``: read threads as an operator (mail text made terminal-safe)."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, pass_app, say, shown
from replygate.core import person_threads, views
from replygate.core.placement import InboxFilter


@click.group("threads")
def group() -> None:
    """Read threads."""


@group.command("list")
@click.option("--user", "email", metavar="EMAIL", help="This person's threads, as their inbox.")
@click.option(
    "--unread", "view", flag_value=InboxFilter.UNREAD.value, help="Unread (needs --user)."
)
@click.option(
    "--pinned", "view", flag_value=InboxFilter.PINNED.value, help="Pinned (needs --user)."
)
@click.option(
    "--archived", "view", flag_value=InboxFilter.ARCHIVED.value, help="Archived (needs --user)."
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def list_threads(app: App, email: str | None, view: str | None, as_json: bool) -> None:
    """List threads, newest activity first; with --user, one person's, pinned first.

    Without a filter, --user lists that person's inbox (archived threads left out).
    """
    if email is None:
        if view is not None:
            raise click.UsageError(f"--{view} needs --user EMAIL: whose {view} threads?")
        rows = views.threads(app.factory)

        def text() -> None:
            for t in rows:
                say(
                    f"{t.id:>5}  {t.subject[:40]:<40}  {', '.join(t.participants)}  "
                    f"({t.messages} messages)"
                )

        emit(rows, as_json, text)
        return
    mine = person_threads.threads_of(app.factory, email, InboxFilter(view or InboxFilter.ALL))

    def person_text() -> None:
        for t in mine:
            marks = " ".join(m for m, on in (("pinned", t.pinned), ("archived", t.archived)) if on)
            unread = f"{t.unread} unread" if t.unread else ""
            say(
                f"{t.id:>5}  {t.subject[:40]:<40}  {', '.join(t.with_people)}  "
                + "  ".join(part for part in (unread, marks) if part)
            )

    emit(mine, as_json, person_text)


@group.command("show")
@click.argument("thread_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def show(app: App, thread_id: int, as_json: bool) -> None:
    """Show a thread with every message."""
    thread = views.thread(app.factory, thread_id)
    shown(app, "threads show", "thread", thread_id, thread_id)

    def text() -> None:
        say(f"thread {thread.id}: {thread.subject}")
        say(f"participants: {', '.join(thread.participants)}")
        for m in thread.messages:
            say(f"\n--- message {m.id} from {m.author} via {m.source}, {m.created_at}")
            say(m.body)
            for a in m.attachments:
                say(f"[attachment {a.id}: {a.filename}, {a.content_type}, {a.size} bytes]")

    emit(thread, as_json, text)
