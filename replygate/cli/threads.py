"""``replygate threads``: read threads as an operator (mail text made terminal-safe)."""

from __future__ import annotations

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.core import views


@click.group("threads")
def group() -> None:
    """Read threads."""


@group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def list_threads(app: App, as_json: bool) -> None:
    """List threads, newest activity first."""
    rows = views.threads(app.factory)

    def text() -> None:
        for t in rows:
            say(
                f"{t.id:>5}  {t.subject[:40]:<40}  {', '.join(t.participants)}  "
                f"({t.messages} messages)"
            )

    emit(rows, as_json, text)


@group.command("show")
@click.argument("thread_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def show(app: App, thread_id: int, as_json: bool) -> None:
    """Show a thread with every message."""
    thread = views.thread(app.factory, thread_id)

    def text() -> None:
        say(f"thread {thread.id}: {thread.subject}")
        say(f"participants: {', '.join(thread.participants)}")
        for m in thread.messages:
            say(f"\n--- message {m.id} from {m.author} via {m.source}, {m.created_at}")
            say(m.body)
            for a in m.attachments:
                say(f"[attachment {a.id}: {a.filename}, {a.content_type}, {a.size} bytes]")

    emit(thread, as_json, text)
