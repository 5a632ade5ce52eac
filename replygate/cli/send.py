"""``replygate send``: a message from staff, one private thread per recipient."""

from __future__ import annotations

import sys

import click

from replygate.cli import App, clean_errors, emit, pass_app
from replygate.core.messaging import Messaging


@click.command("send")
@click.option("--from", "sender", required=True, help="Email of the staff author.")
@click.option("--to", "to", multiple=True, required=True, help="EMAIL or circle:NAME (repeat).")
@click.option("--subject", required=True)
@click.option("--body", required=True, help="Message text; '-' reads it from stdin.")
@click.option(
    "--read-receipt/--no-read-receipt",
    default=None,
    help="Tell the author when each recipient first opens it (default: the organisation's).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def send(
    app: App,
    sender: str,
    to: tuple[str, ...],
    subject: str,
    body: str,
    read_receipt: bool | None,
    as_json: bool,
) -> None:
    """Send a message: one private thread per recipient."""
    if body == "-":
        body = sys.stdin.read()
    result = Messaging(app.factory, app.settings).send(
        sender=sender, to=list(to), subject=subject, body=body, read_receipt=read_receipt
    )
    data = {
        "threads": [{"id": t.id, "recipient": t.recipient} for t in result.threads],
        "messages": [{"id": m} for m in result.messages],
    }

    def text() -> None:
        for t, m in zip(result.threads, result.messages, strict=True):
            click.echo(f"thread {t.id} with {t.recipient}: message {m}")

    emit(data, as_json, text)
