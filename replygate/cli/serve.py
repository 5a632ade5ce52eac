"""``replygate serve``, ``worker``, ``ingest`` and ``demo``: running the service."""

from __future__ import annotations

import logging
import sys
from collections.abc import Coroutine
from typing import Any

import click

from replygate import logs
from replygate.cli import App, clean_errors, pass_app
from replygate.cli.output import plural
from replygate.errors import ServiceFailed, StartupError
from replygate.mail.markers import TOKEN_LENGTH


class StartFailed(click.ClickException):
    """A start-up failure: one line on stderr, ``replygate: <sentence>``, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"replygate: {self.format_message()}", err=True, file=file)


def _check_schema(app: App, migrate: bool) -> None:
    """Refuse to start on a database without the newest schema (``--migrate`` first
    brings it there), instead of failing on every query of every loop, or with a key
    file that opens none of what is stored."""
    from replygate.store import keyring
    from replygate.store.db import schema_problem, upgrade

    if migrate:
        keyring.load(app.settings)  # a migration may seal stored values
        upgrade(app.settings.database_url)
    problem = schema_problem(app.engine)
    if problem is not None:
        raise StartFailed(problem)
    from replygate.core import keys
    from replygate.store.db import session_factory

    keyring.load(app.settings)
    keys.check_key_file(session_factory(app.engine))  # before a wrong key seals anything


def _start(app: App, migrate: bool, coro: Coroutine[Any, Any, None]) -> None:
    try:
        _check_schema(app, migrate)
        _run_async(coro)
    except (StartupError, ServiceFailed) as exc:
        raise StartFailed(str(exc)) from exc
    finally:
        coro.close()  # never awaited when the check refused to start


def _host_port(value: str | None, default_host: str, default_port: int) -> tuple[str, int]:
    if not value:
        return default_host, default_port
    host, _, port = value.rpartition(":")
    try:
        return host or default_host, int(port)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not HOST:PORT") from exc


def _run_async(coro: Coroutine[Any, Any, None]) -> None:
    import asyncio

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    asyncio.run(coro)


@click.command("serve")
@click.option("--smtp", "smtp", metavar="HOST:PORT", help="Where the SMTP gateway listens.")
@click.option("--portal", "portal", metavar="HOST:PORT", help="Where the web portal listens.")
@click.option(
    "--role",
    type=click.Choice(["all", "gateway", "worker", "portal"]),
    default="all",
    show_default=True,
    help="Run everything in one process, or one part of it.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    help="Share the SMTP port with other gateway processes of this deployment "
    "(SO_REUSEPORT; each must be started with it). Without it a port in use is an error.",
)
@click.option("--migrate", is_flag=True, help="Bring the database schema up to date first.")
@click.option(
    "--metrics",
    "metrics",
    metavar="HOST:PORT",
    help="Serve /metrics (Prometheus), /healthz and /readyz there. Off by default.",
)
@click.option(
    "--one-process",
    is_flag=True,
    help="With --role all: keep the engine in this process even on a machine of "
    "several cores (by default it runs in a child process of its own there).",
)
@pass_app
@clean_errors
def serve(
    app: App,
    smtp: str | None,
    portal: str | None,
    role: str,
    reuse_port: bool,
    migrate: bool,
    metrics: str | None,
    one_process: bool,
) -> None:
    """Run the gateway, the engine and outbound workers and the portal until Ctrl-C.

    On a machine of two cores or more the engine and outbound worker run in a
    child process of their own; Ctrl-C stops both. Any start-up failure (a
    port in use, a schema behind this release) is one line on stderr and exit
    status 1, and so is the engine process dying while the service runs.
    """
    smtp_addr = _host_port(smtp, app.settings.smtp_host, app.settings.smtp_port)
    portal_addr = _host_port(portal, app.settings.portal_host, app.settings.portal_port)
    from replygate.runtime import engine_beside, run_service

    service = run_service(
        app.settings,
        app.factory,
        role=role,
        smtp_addr=smtp_addr,
        portal_addr=portal_addr,
        reuse_port=reuse_port,
        metrics_addr=_metrics_addr(metrics),
        split=engine_beside(role, one_process=one_process),
    )
    _start(app, migrate, service)


def _metrics_addr(value: str | None) -> tuple[str, int] | None:
    """``--metrics HOST:PORT`` (``:PORT`` alone listens on 127.0.0.1)."""
    if not value:
        return None
    return _host_port(value, "127.0.0.1", 0)


@click.command("worker")
@click.option("--once", is_flag=True, help="Process what is queued now, then exit.")
@click.option(
    "--metrics",
    "metrics",
    metavar="HOST:PORT",
    help="Serve /metrics (Prometheus), /healthz and /readyz there. Off by default.",
)
@pass_app
@clean_errors
def worker(app: App, once: bool, metrics: str | None) -> None:
    """Run the threading engine and outbound delivery workers."""
    from replygate.runtime import run_service
    from replygate.workers.drain import drain_once

    if once:
        _check_schema(app, migrate=False)
        filed, delivered = drain_once(app.settings, app.factory)
        click.echo(
            f"processed {plural(filed, 'inbound mail')}, "
            f"delivered {plural(delivered, 'notification')}"
        )
        return
    service = run_service(
        app.settings, app.factory, role="worker", metrics_addr=_metrics_addr(metrics)
    )
    _start(app, False, service)


@click.command("ingest")
@click.option("--rcpt", required=True, help="Envelope recipient (Postfix: ${recipient}).")
@click.option("--sender", default="", help="Envelope sender (Postfix: ${sender}).")
@click.option(
    "--client-ip",
    default="",
    help="The sending client's address, for SPF (Postfix: ${client_address}).",
)
@click.option(
    "--helo", default="", help="The sending client's HELO name (Postfix: ${client_helo})."
)
@pass_app
def ingest(app: App, rcpt: str, sender: str, client_ip: str, helo: str) -> None:
    """Accept one message on stdin, for a Postfix pipe transport (sysexits codes)."""
    from replygate.gateway.ingest import ingest as run_ingest

    # Postfix's pipe copies our stderr into the bounce it sends: only the reason goes there.
    logs.configure(
        json=app.settings.log_json, level=logging.ERROR, redact=app.redact, plain_below=TOKEN_LENGTH
    )
    try:
        raw = sys.stdin.buffer.read()
        code, reason = run_ingest(
            app.settings,
            app.factory,
            rcpt=rcpt,
            sender=sender,
            raw=raw,
            client_ip=client_ip or None,
            helo=helo or None,
        )
    except Exception as exc:  # anything unexpected: let the MTA retry, nothing lost
        click.echo(f"temporary failure: {exc}", err=True)
        sys.exit(75)
    if reason:
        click.echo(reason, err=True)
    sys.exit(code)


@click.command("demo")
@pass_app
@clean_errors
def demo(app: App) -> None:
    """Seed a demo organisation with Convenience Mode on and say how to reply by email."""
    from replygate.demo import seed_demo

    for line in seed_demo(app.settings, app.factory):
        click.echo(line)


commands = (serve, worker, ingest, demo)
