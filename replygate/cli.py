"""The ``replygate`` command: thin click commands over the layers.

The group builds one ``App`` (settings, database) and every subcommand
receives it. Errors are one clear line and a non-zero exit, never a
traceback. Every listing has ``--json``; those shapes are a contract.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from replygate import logs
from replygate.config import Settings, load_settings
from replygate.errors import InboundRefused, NotFound, ReplygateError
from replygate.store.db import make_engine, session_factory, transaction

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """What every command needs, built lazily so ``--help`` touches nothing."""

    config_file: Path | None
    overrides: dict[str, Any]
    _settings: Settings | None = None
    _engine: Engine | None = None
    _factory: sessionmaker[Session] | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(config_file=self.config_file, overrides=self.overrides)
        return self._settings

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
        return self._engine

    @property
    def factory(self) -> sessionmaker[Session]:
        if self._factory is None:
            self._factory = session_factory(self.engine)
        return self._factory

    def messaging(self):
        from replygate.core.messaging import Messaging

        return Messaging(self.factory, self.settings)


pass_app = click.make_pass_decorator(App)


def clean_errors(fn: F) -> F:
    """Turn our errors and database trouble into one line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ReplygateError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except (OperationalError, ProgrammingError) as exc:
            detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            hint = (
                " (run `replygate db upgrade` first)"
                if "no such table" in detail or "does not exist" in detail
                else ""
            )
            raise click.ClickException(f"database error: {detail}{hint}") from exc

    return wrapper  # type: ignore[return-value]


def emit(data: Any, as_json: bool, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        text()


@click.group()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML configuration file (settings under [replygate]).",
)
@click.option("--database-url", help="Overrides REPLYGATE_DATABASE_URL.")
@click.option("--log-json", is_flag=True, default=None, help="Log JSON lines instead of key=value.")
@click.version_option(package_name="replygate")
@click.pass_context
def main(
    ctx: click.Context, config_file: Path | None, database_url: str | None, log_json: bool | None
) -> None:
    """Secure client-portal messaging with reply by email."""
    overrides = {"database_url": database_url, "log_json": log_json}
    app = App(config_file=config_file, overrides=overrides)
    ctx.obj = app
    ctx.call_on_close(lambda: app._engine.dispose() if app._engine else None)
    json_logs = (
        log_json
        if log_json is not None
        else os.environ.get("REPLYGATE_LOG_JSON", "").strip().lower() in ("1", "true", "yes", "on")
    )
    logs.configure(json=json_logs)


# -- config and database ----------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def config_show(app: App, as_json: bool) -> None:
    """Print the effective configuration, secrets masked."""
    data = app.settings.masked()
    emit(data, as_json, lambda: [click.echo(f"{k} = {v}") for k, v in data.items()])


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@pass_app
@clean_errors
def db_upgrade(app: App) -> None:
    """Create or migrate the schema to the newest revision (Alembic)."""
    from replygate.store.db import current_revision, upgrade

    upgrade(app.settings.database_url)
    click.echo(f"database at revision {current_revision(app.engine)}")


# -- people -------------------------------------------------------------------------------


@main.group("users")
def users_group() -> None:
    """Staff, clients and admins."""


@users_group.command("add")
@click.argument("email")
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["admin", "staff", "client"]), required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def users_add(app: App, email: str, name: str, role: str, as_json: bool) -> None:
    """Add a user."""
    from replygate.store import directory

    with transaction(app.factory) as session:
        user = directory.add_user(session, email, name, role)
        data = _user_json(user)
    emit(data, as_json, lambda: click.echo(f"added {role} {data['email']} (id {data['id']})"))


def _user_json(user: Any) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "address_status": user.address_status,
        "bounce_count": user.bounce_count,
    }


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def users_list(app: App, as_json: bool) -> None:
    """List users with the state of their email address."""
    from replygate.store import directory

    with app.factory() as session:
        data = [_user_json(u) for u in directory.list_users(session)]

    def text() -> None:
        for u in data:
            click.echo(
                f"{u['id']:>5}  {u['role']:<6}  {u['email']:<36} {u['name']:<24} "
                f"{u['address_status']}"
            )

    emit(data, as_json, text)


@users_group.command("set-password")
@click.argument("email")
@pass_app
@clean_errors
def users_set_password(app: App, email: str) -> None:
    """Set a portal password (read from stdin when piped, else prompted)."""
    from replygate.core.accounts import set_password

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    with transaction(app.factory) as session:
        set_password(session, email, password)
    click.echo(f"password set for {email.strip().lower()}")


@users_group.command("reset-bounces")
@click.argument("email")
@pass_app
@clean_errors
def users_reset_bounces(app: App, email: str) -> None:
    """Mark an address good again after its bounces were dealt with."""
    from replygate.store import directory

    with transaction(app.factory) as session:
        user = directory.user(session, email)
        user.bounce_count, user.address_status = 0, "ok"
    click.echo(f"{email.strip().lower()}: address ok, notifications resume")


@main.group("circles")
def circles_group() -> None:
    """Circles: named groups of users."""


@circles_group.command("add")
@click.argument("name")
@pass_app
@clean_errors
def circles_add(app: App, name: str) -> None:
    """Create a Circle."""
    from replygate.store import directory

    with transaction(app.factory) as session:
        directory.add_circle(session, name)
    click.echo(f"added Circle {name}")


@circles_group.command("add-member")
@click.argument("name")
@click.argument("email")
@pass_app
@clean_errors
def circles_add_member(app: App, name: str, email: str) -> None:
    """Add a user to a Circle."""
    from replygate.store import directory

    with transaction(app.factory) as session:
        directory.add_member(session, name, email)
    click.echo(f"{email} is a member of {name}")


@circles_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def circles_list(app: App, as_json: bool) -> None:
    """List Circles and their members."""
    from replygate.store import directory

    with app.factory() as session:
        data = [
            {"id": c.id, "name": c.name, "members": [m.email for m in c.members]}
            for c in directory.list_circles(session)
        ]
    emit(
        data,
        as_json,
        lambda: [click.echo(f"{c['name']}: {', '.join(c['members']) or '-'}") for c in data],
    )


# -- settings -----------------------------------------------------------------------------


@main.group("settings")
def settings_group() -> None:
    """Organisation settings."""


@settings_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def settings_show(app: App, as_json: bool) -> None:
    """Show the organisation's settings."""
    from replygate.store import directory

    with transaction(app.factory) as session:
        org = directory.organisation(session, default_name=app.settings.organisation_name)
        data = {
            "name": org.name,
            "convenience_mode": org.convenience_mode,
            "hipaa_acknowledged_by": org.hipaa_acknowledged_by,
            "hipaa_acknowledged_at": org.hipaa_acknowledged_at,
            "sender_policy": org.sender_policy,
        }
    emit(data, as_json, lambda: [click.echo(f"{k}: {v}") for k, v in data.items()])


@settings_group.command("convenience")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option(
    "--acknowledge-hipaa",
    is_flag=True,
    help="Required to switch on: email will carry message content.",
)
@click.option("--by", "acknowledged_by", help="Who acknowledges (recorded with the time).")
@pass_app
@clean_errors
def settings_convenience(
    app: App, state: str, acknowledge_hipaa: bool, acknowledged_by: str | None
) -> None:
    """Switch Convenience Mode (reply by email) on or off."""
    voided = app.messaging().set_convenience_mode(
        on=state == "on", acknowledged_by=acknowledged_by, acknowledge_hipaa=acknowledge_hipaa
    )
    if state == "on":
        click.echo("Convenience Mode is on: notifications carry content and accept replies.")
    else:
        click.echo(f"Convenience Mode is off: {voided} outstanding reply address(es) voided.")


@settings_group.command("sender-policy")
@click.argument("policy", type=click.Choice(["reject", "hold"]))
@pass_app
@clean_errors
def settings_sender_policy(app: App, policy: str) -> None:
    """What to do with a reply whose From is not the token's recipient."""
    from replygate.store import directory

    with transaction(app.factory) as session:
        directory.organisation(
            session, default_name=app.settings.organisation_name
        ).sender_policy = policy
    click.echo(f"sender policy: {policy}")


# -- messages -----------------------------------------------------------------------------


@main.command("send")
@click.option("--from", "sender", required=True, help="Email of the staff author.")
@click.option("--to", "to", multiple=True, required=True, help="EMAIL or circle:NAME (repeat).")
@click.option("--subject", required=True)
@click.option("--body", required=True, help="Message text; '-' reads it from stdin.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def send(
    app: App, sender: str, to: tuple[str, ...], subject: str, body: str, as_json: bool
) -> None:
    """Send a message: one private thread per recipient."""
    if body == "-":
        body = sys.stdin.read()
    result = app.messaging().send(sender=sender, to=list(to), subject=subject, body=body)
    data = {
        "threads": [{"id": t.id, "recipient": t.recipient} for t in result.threads],
        "messages": [{"id": m} for m in result.messages],
    }

    def text() -> None:
        for t, m in zip(result.threads, result.messages, strict=True):
            click.echo(f"thread {t.id} with {t.recipient}: message {m}")

    emit(data, as_json, text)


@main.group("threads")
def threads_group() -> None:
    """Read threads."""


@threads_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def threads_list(app: App, as_json: bool) -> None:
    """List threads, newest activity first."""
    from replygate.store.models import Thread

    with app.factory() as session:
        threads = session.scalars(
            select(Thread).order_by(Thread.last_activity_at.desc(), Thread.id.desc())
        ).all()
        data = [
            {
                "id": t.id,
                "subject": t.subject,
                "participants": [p.user.email for p in t.participants],
                "messages": len(t.messages),
                "last_activity_at": t.last_activity_at.isoformat(),
            }
            for t in threads
        ]

    def text() -> None:
        for t in data:
            click.echo(
                f"{t['id']:>5}  {t['subject'][:40]:<40}  {', '.join(t['participants'])}  "
                f"({t['messages']} messages)"
            )

    emit(data, as_json, text)


@threads_group.command("show")
@click.argument("thread_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def threads_show(app: App, thread_id: int, as_json: bool) -> None:
    """Show a thread with every message."""
    from replygate.store.models import Thread

    with app.factory() as session:
        thread = session.get(Thread, thread_id)
        if thread is None:
            raise NotFound(f"no thread {thread_id}")
        data = {
            "id": thread.id,
            "subject": thread.subject,
            "participants": [p.user.email for p in thread.participants],
            "messages": [
                {
                    "id": m.id,
                    "author": m.author.email,
                    "body": m.body,
                    "source": m.source,
                    "created_at": m.created_at.isoformat(),
                    "attachments": [
                        {
                            "id": a.id,
                            "filename": a.filename,
                            "content_type": a.content_type,
                            "size": a.size,
                        }
                        for a in m.attachments
                    ],
                }
                for m in thread.messages
            ],
        }

    def text() -> None:
        click.echo(f"thread {data['id']}: {data['subject']}")
        click.echo(f"participants: {', '.join(data['participants'])}")
        for m in data["messages"]:
            click.echo(
                f"\n--- message {m['id']} from {m['author']} via {m['source']}, {m['created_at']}"
            )
            click.echo(m["body"])
            for a in m["attachments"]:
                click.echo(
                    f"[attachment {a['id']}: {a['filename']}, {a['content_type']}, "
                    f"{a['size']} bytes]"
                )

    emit(data, as_json, text)


# -- tokens -------------------------------------------------------------------------------


@main.group("tokens")
def tokens_group() -> None:
    """Reply addresses."""


@tokens_group.command("inspect")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def tokens_inspect(app: App, address: str, as_json: bool) -> None:
    """Say what a reply address names and whether it is accepted now."""
    from replygate.core import routing
    from replygate.mail import reply_token
    from replygate.store import tokens
    from replygate.store.models import utcnow

    s = app.settings
    token = reply_token.token_from_address(address, s.reply_domain)
    data: dict[str, Any] = {"address": address, "token": token}
    with transaction(app.factory) as session:
        row = tokens.find(session, token) if token else None
        if row is not None:
            data.update(
                thread=row.thread_id,
                recipient=row.user.email,
                created_at=row.created_at.isoformat(),
                expires_at=row.expires_at.isoformat(),
                revoked_at=row.revoked_at.isoformat() if row.revoked_at else None,
            )
        try:
            routing.resolve(
                session, address, secret=s.secret_key, reply_domain=s.reply_domain, now=utcnow()
            )
            data["accepted"], data["reason"] = True, None
        except InboundRefused as exc:
            data["accepted"], data["reason"] = False, str(exc)
    emit(data, as_json, lambda: [click.echo(f"{k}: {v}") for k, v in data.items()])


@tokens_group.command("revoke")
@click.argument("address")
@pass_app
@clean_errors
def tokens_revoke(app: App, address: str) -> None:
    """Revoke one reply address."""
    from replygate.mail import reply_token
    from replygate.store import tokens
    from replygate.store.models import utcnow

    token = reply_token.token_from_address(address, app.settings.reply_domain)
    if token is None:
        raise NotFound(f"{address} is not a reply address of {app.settings.reply_domain}")
    with transaction(app.factory) as session:
        if not tokens.revoke(session, token, now=utcnow()):
            raise NotFound(f"no live reply address {address}")
    click.echo(f"revoked {address}")


# -- inbound queue ------------------------------------------------------------------------


@main.group("queue")
def queue_group() -> None:
    """Inspect and replay inbound mail."""


def _queue_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "reason": row.reason,
        "mail_from": row.mail_from,
        "rcpt": row.rcpt,
        "message_id": row.message_id,
        "received_at": row.received_at.isoformat(),
        "attempts": row.attempts,
        "thread_id": row.thread_id,
        "size": row.size,
    }


@queue_group.command("list")
@click.option("--status", help="Only mail with this status.")
@click.option("--older-than", "older_than", type=float, help="Received more than DAYS ago.")
@click.option("--newer-than", "newer_than", type=float, help="Received within the last DAYS.")
@click.option("--sender", help="Only mail with this envelope sender.")
@click.option("--thread", "thread_id", type=int, help="Only mail filed into this thread.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def queue_list(
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
    from replygate.store import inbound

    with app.factory() as session:
        rows = inbound.list_mail(
            session,
            status=status,
            limit=limit,
            older_than=_days_ago(older_than),
            newer_than=_days_ago(newer_than),
            sender=sender,
            thread_id=thread_id,
        )
        data = [_queue_json(r) for r in rows]

    def text() -> None:
        if not data:
            click.echo("no inbound mail")
            return
        click.echo(f"{'ID':>6}  {'STATUS':<9} {'RECEIVED':<19}  {'FROM':<28} REASON")
        for r in data:
            click.echo(
                f"{r['id']:>6}  {r['status']:<9} {r['received_at'][:19]:<19}  "
                f"{(r['mail_from'] or '<>')[:28]:<28} {r['reason'] or ''}"
            )

    emit(data, as_json, text)


def _days_ago(days: float | None) -> Any:
    from datetime import timedelta

    from replygate.store.models import utcnow

    return None if days is None else utcnow() - timedelta(days=days)


@queue_group.command("show")
@click.argument("inbound_id", type=int)
@click.option("--raw", is_flag=True, help="Print the original bytes only.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def queue_show(app: App, inbound_id: int, raw: bool, as_json: bool) -> None:
    """Show one inbound mail: envelope, headers, decisions, extracted reply (or --raw)."""
    from replygate.mail.decisions import explain
    from replygate.mail.extract.reply import extract_from_parts
    from replygate.mail.parse import parse_message
    from replygate.store import inbound

    with app.factory() as session:
        row = inbound.get(session, inbound_id)
        if raw:
            if row.raw is None:
                raise NotFound(f"mail {inbound_id} was purged; its raw bytes are gone")
            sys.stdout.buffer.write(row.raw)
            sys.stdout.buffer.flush()
            return
        data: dict[str, Any] = {**_queue_json(row), "decisions": row.decisions or []}
        raw_bytes = row.raw
    data["headers"], data["reply"] = {}, None
    if raw_bytes is not None:
        parsed = parse_message(raw_bytes)
        data["headers"] = {name: value for name, value in parsed.headers if name in SHOWN_HEADERS}
        data["reply"] = extract_from_parts(parsed.text_plain, parsed.text_html).reply

    def text() -> None:
        for line in explain(data, data["decisions"]):
            click.echo(line)
        click.echo("\nHeaders:")
        for name, value in data["headers"].items():
            click.echo(f"  {name}: {value}")
        if data["reply"] is None:
            click.echo("\n(raw bytes purged)")
        else:
            click.echo("\nExtracted reply:")
            click.echo("  " + data["reply"].replace("\n", "\n  "))

    emit(data, as_json, text)


SHOWN_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "auto-submitted",
    "precedence",
    "authentication-results",
    "content-type",
)


@queue_group.command("replay")
@click.argument("ids", type=int, nargs=-1)
@click.option("--failed", is_flag=True, help="Replay every failed mail.")
@pass_app
@clean_errors
def queue_replay(app: App, ids: tuple[int, ...], failed: bool) -> None:
    """Run mail through the engine again (filing stays exactly-once)."""
    from replygate.store import inbound
    from replygate.workers.inbound import InboundWorker

    if not ids and not failed:
        raise click.UsageError("give queue ids or --failed")
    with transaction(app.factory) as session:
        chosen = list(ids) + (inbound.failed_ids(session) if failed else [])
        previous = {i: inbound.get(session, i).status for i in chosen}
        requeued = inbound.requeue(session, chosen)
    engine = InboundWorker(app.factory, app.settings)
    lines: list[str] = []
    with click.progressbar(
        requeued, label="replaying", file=sys.stderr if len(requeued) > 5 else io.StringIO()
    ) as bar:
        for inbound_id in bar:
            if not inbound.claim_one(app.factory, inbound_id):
                lines.append(f"{inbound_id}: taken by a running worker")
                continue
            outcome = engine.process(inbound_id)
            lines.append(
                f"{inbound_id}: {previous[inbound_id]} -> {outcome.status}"
                + (f" ({outcome.reason})" if outcome.reason else "")
            )
    for line in lines:
        click.echo(line)
    if not requeued:
        click.echo("nothing to replay")


@queue_group.command("release")
@click.argument("inbound_id", type=int)
@pass_app
@clean_errors
def queue_release(app: App, inbound_id: int) -> None:
    """File a held mail (an operator vouches for its sender)."""
    from replygate.store import inbound
    from replygate.workers.inbound import InboundWorker

    with transaction(app.factory) as session:
        row = inbound.lock(session, inbound_id)
        if row.status != "held":
            raise ReplygateError(f"mail {inbound_id} is {row.status}, not held")
        row.status, row.claimed_at = "processing", None
        inbound.note(row, {"stage": "operator", "action": "release"})
    outcome = InboundWorker(app.factory, app.settings).process(inbound_id, released=True)
    click.echo(
        f"{inbound_id}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else "")
    )


@queue_group.command("reject")
@click.argument("inbound_id", type=int)
@click.option("--reason", default="rejected by an operator", show_default=True)
@pass_app
@clean_errors
def queue_reject(app: App, inbound_id: int, reason: str) -> None:
    """Drop a held mail without filing it."""
    from replygate.store import inbound

    with transaction(app.factory) as session:
        row = inbound.lock(session, inbound_id)
        if row.status != "held":
            raise ReplygateError(f"mail {inbound_id} is {row.status}, not held")
        inbound.record(row, "rejected", reason, {"stage": "operator", "action": "reject"})
    click.echo(f"{inbound_id}: rejected")


@queue_group.command("explain")
@click.argument("inbound_id", type=int)
@pass_app
@clean_errors
def queue_explain(app: App, inbound_id: int) -> None:
    """Say in plain words what was decided about a mail, and why."""
    from replygate.mail.decisions import explain
    from replygate.store import inbound

    with app.factory() as session:
        row = inbound.get(session, inbound_id)
        lines = explain(_queue_json(row), row.decisions or [])
    for line in lines:
        click.echo(line)


@queue_group.command("stats")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def queue_stats(app: App, as_json: bool) -> None:
    """Count inbound mail by status and reason."""
    from replygate.store import inbound

    with app.factory() as session:
        data = [{"status": st, "reason": r, "count": n} for st, r, n in inbound.stats(session)]
    emit(
        data,
        as_json,
        lambda: [
            click.echo(f"{d['count']:>7}  {d['status']:<9} {d['reason'] or ''}") for d in data
        ],
    )


@queue_group.command("purge")
@click.option(
    "--older-than", "older_than", type=float, default=None, help="DAYS (default: retention)."
)
@pass_app
@clean_errors
def queue_purge(app: App, older_than: float | None) -> None:
    """Delete raw mail past retention; filed messages and queue records stay."""
    from replygate.store import inbound

    days = app.settings.retention_days if older_than is None else older_than
    with transaction(app.factory) as session:
        n = inbound.purge(session, older_than=_days_ago(days))
    click.echo(f"purged the raw bytes of {n} mail(s) received more than {days:g} days ago")


@main.group("outbox")
def outbox_group() -> None:
    """Inspect and retry outgoing notifications."""


@outbox_group.command("list")
@click.option("--status", help="Only notifications with this status.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@clean_errors
def outbox_list(app: App, status: str | None, limit: int, as_json: bool) -> None:
    """List notifications, newest first (never their content)."""
    from replygate.store import outbox

    with app.factory() as session:
        data = [
            {
                "id": r.id,
                "status": r.status,
                "kind": r.kind,
                "recipient": r.recipient,
                "thread_id": r.thread_id,
                "attempts": r.attempts,
                "last_error": r.last_error,
                "created_at": r.created_at.isoformat(),
                "sent_at": r.sent_at.isoformat() if r.sent_at else None,
            }
            for r in outbox.list_outbox(session, status=status, limit=limit)
        ]

    def text() -> None:
        if not data:
            click.echo("no notifications")
        for r in data:
            click.echo(
                f"{r['id']:>6}  {r['status']:<10} {r['kind']:<7} {r['recipient']:<32} "
                f"{r['last_error'] or ''}"
            )

    emit(data, as_json, text)


@outbox_group.command("retry")
@click.argument("ids", type=int, nargs=-1)
@click.option("--failed", is_flag=True, help="Retry every failed notification.")
@pass_app
@clean_errors
def outbox_retry(app: App, ids: tuple[int, ...], failed: bool) -> None:
    """Queue failed notifications again (the outbound worker delivers them)."""
    from replygate.store import outbox
    from replygate.store.models import utcnow

    if not ids and not failed:
        raise click.UsageError("give notification ids or --failed")
    with transaction(app.factory) as session:
        chosen = list(ids) or [
            r.id for r in outbox.list_outbox(session, status="failed", limit=10_000)
        ]
        n = outbox.requeue(session, chosen, now=utcnow())
    click.echo(f"{n} notification(s) queued again")


# -- running ------------------------------------------------------------------------------


def _host_port(value: str | None, default_host: str, default_port: int) -> tuple[str, int]:
    if not value:
        return default_host, default_port
    host, _, port = value.rpartition(":")
    try:
        return host or default_host, int(port)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not HOST:PORT") from exc


@main.command("serve")
@click.option("--smtp", "smtp", metavar="HOST:PORT", help="Where the SMTP gateway listens.")
@click.option("--portal", "portal", metavar="HOST:PORT", help="Where the web portal listens.")
@click.option(
    "--role",
    type=click.Choice(["all", "gateway", "worker", "portal"]),
    default="all",
    show_default=True,
    help="Run everything in one process, or one part of it.",
)
@pass_app
@clean_errors
def serve(app: App, smtp: str | None, portal: str | None, role: str) -> None:
    """Run the gateway, the engine and outbound workers and the portal until Ctrl-C."""
    smtp_addr = _host_port(smtp, app.settings.smtp_host, app.settings.smtp_port)
    portal_addr = _host_port(portal, app.settings.portal_host, app.settings.portal_port)
    from replygate.runtime import run_service

    _run_async(
        run_service(
            app.settings,
            app.factory,
            role=role,
            smtp_addr=smtp_addr,
            portal_addr=portal_addr,
        )
    )


@main.command("worker")
@click.option("--once", is_flag=True, help="Process what is queued now, then exit.")
@pass_app
@clean_errors
def worker(app: App, once: bool) -> None:
    """Run the threading engine and outbound delivery workers."""
    from replygate.runtime import run_service
    from replygate.workers.drain import drain_once

    if once:
        filed, delivered = drain_once(app.settings, app.factory)
        click.echo(f"processed {filed} inbound mail(s), delivered {delivered} notification(s)")
        return
    _run_async(run_service(app.settings, app.factory, role="worker"))


def _run_async(coro: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    asyncio.run(coro)


@main.command("ingest")
@click.option("--rcpt", required=True, help="Envelope recipient (Postfix: ${recipient}).")
@click.option("--sender", default="", help="Envelope sender (Postfix: ${sender}).")
@pass_app
def ingest(app: App, rcpt: str, sender: str) -> None:
    """Accept one message on stdin, for a Postfix pipe transport (sysexits codes)."""
    from replygate.gateway.ingest import ingest as run_ingest

    # Postfix's pipe copies our stderr into the bounce it sends: only the reason goes there.
    logs.configure(json=app.settings.log_json, level=logging.ERROR)
    try:
        raw = sys.stdin.buffer.read()
        code, reason = run_ingest(app.settings, app.factory, rcpt=rcpt, sender=sender, raw=raw)
    except Exception as exc:  # anything unexpected: let the MTA retry, nothing lost
        click.echo(f"temporary failure: {exc}", err=True)
        sys.exit(75)
    if reason:
        click.echo(reason, err=True)
    sys.exit(code)


@main.command("demo")
@pass_app
@clean_errors
def demo(app: App) -> None:
    """Seed a demo organisation with Convenience Mode on and say how to reply by email."""
    from replygate.demo import seed_demo

    for line in seed_demo(app.settings, app.factory):
        click.echo(line)
