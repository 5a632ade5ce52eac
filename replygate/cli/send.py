"""``replygate send``: a message from staff or a client, one private thread per recipient."""

from __future__ import annotations

import sys

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.cli.output import json_option


@click.command("send")
@click.option(
    "--from",
    "sender",
    required=True,
    help="Email of the author: staff, or a client (who may write to staff, and to a "
    "Circle open to clients).",
)
@click.option("--to", "to", multiple=True, required=True, help="EMAIL or circle:NAME (repeat).")
@click.option("--subject", required=True, help="Subject of the new threads.")
@click.option("--body", required=True, help="Message text; '-' reads it from stdin.")
@click.option(
    "--read-receipt/--no-read-receipt",
    default=None,
    help="Tell the author when each recipient first opens it (default: the organisation's).",
)
@json_option
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
    """Send a message: one private thread per recipient (the same rules as the portal's compose)."""
    from replygate.core.messaging import Messaging

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
            say(f"thread {t.id} with {t.recipient}: message {m}")

    emit(data, as_json, text)
