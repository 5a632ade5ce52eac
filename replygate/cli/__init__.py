"""The ``replygate`` command: the root group, and what every command group shares.

The group builds one ``App`` (settings, database) and every subcommand
receives it through ``pass_app``. Each command group lives in a module of its
own and only parses, calls ``replygate.core`` and prints. Errors are one
clear line and exit status 1, never a traceback. Every listing has
``--json``; those shapes are a contract.

Text for a terminal goes through ``say`` (or ``lines``): what mail brought
(a subject, a body, a header) may hold escape sequences that retitle, clear
or reprogram an operator's terminal, so control characters are shown as
escapes instead. ``--json`` and ``--raw`` stay exact.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from replygate import logs
from replygate.config import Settings, load_settings
from replygate.errors import ReplygateError
from replygate.mail.redaction import redact
from replygate.store.db import make_engine, session_factory

F = TypeVar("F", bound=Callable[..., Any])

# What a terminal acts on rather than shows: C0 controls but TAB and LF, DEL, the
# C1 controls (CSI U+009B, OSC U+009D: 8-bit escape sequences), line and
# paragraph separators, and the bidi controls that reorder what is shown.
_TERMINAL_CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)


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
            self._engine = make_engine(
                self.settings.database_url,
                sqlite_max_bytes=self.settings.sqlite_max_size_mb * 1024 * 1024,
            )
        return self._engine

    @property
    def factory(self) -> sessionmaker[Session]:
        if self._factory is None:
            self._factory = session_factory(self.engine)
        return self._factory

    def redact(self, text: str) -> str:
        """``text`` fit for a log: tokens fingerprinted with the secret once settings are
        loaded, hidden before (writing a log line never loads them)."""
        return redact(self._settings.secret_key if self._settings is not None else None, text)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


pass_app = click.make_pass_decorator(App)


def clean_errors(fn: F) -> F:
    """Turn our errors and database trouble into one line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ReplygateError, ValueError) as exc:
            raise click.ClickException(terminal_safe(str(exc))) from exc
        except (OperationalError, ProgrammingError) as exc:
            detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            hint = (
                " (run `replygate db upgrade` first)"
                if "no such table" in detail or "does not exist" in detail
                else ""
            )
            raise click.ClickException(f"database error: {detail}{hint}") from exc

    return wrapper  # type: ignore[return-value]


def shown(app: App, command: str, kind: str, object_id: int, thread_id: int | None = None) -> None:
    """Record in the audit trail that ``command`` is about to show the operator mail content."""
    from replygate.core import audit

    audit.record_now(
        app.factory, app.settings, audit.Actor.operator(), audit.Action.PHI_SHOWN,
        object_kind=audit.ObjectKind(kind), object_id=object_id, thread_id=thread_id,
        detail={"command": command},
    )  # fmt: skip


def terminal_safe(text: str) -> str:
    """``text`` with each control character a terminal acts on written as an escape (``\\x1b``)."""
    return _TERMINAL_CONTROLS.sub(_escaped, text)


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def say(text: str = "") -> None:
    """Print one line of text that may hold what mail brought, made ``terminal_safe``."""
    click.echo(terminal_safe(text))


def emit(data: Any, as_json: bool, text: Callable[[], None]) -> None:
    """Print ``data`` as JSON (dataclasses as objects, anything else as its str) or as text."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_jsonable))
    else:
        text()


def lines(texts: Iterable[str]) -> Callable[[], None]:
    """The ``text`` for ``emit`` that prints each of ``texts`` on a line of its own."""

    def text() -> None:
        for line in texts:
            say(line)

    return text


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


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
    ctx.call_on_close(app.close)
    from replygate.core import audit

    audit.operator_at_work()  # what a command does, an operator did (``serve`` acts as itself)
    json_logs = (
        log_json
        if log_json is not None
        else os.environ.get("REPLYGATE_LOG_JSON", "").strip().lower() in ("1", "true", "yes", "on")
    )
    logs.configure(json=json_logs, redact=app.redact)


def _add_command_groups() -> None:
    """Attach each group's module; they import ``pass_app`` and friends from here."""
    from replygate.cli import (
        audit,
        circles,
        configuration,
        database,
        dkim,
        inbound_queue,
        outbox,
        send,
        serve,
        settings,
        threads,
        tokens,
        users,
    )

    for module in (configuration, database, users, circles, settings, threads, tokens, audit, dkim):
        main.add_command(module.group)
    main.add_command(send.send)
    main.add_command(inbound_queue.group)
    main.add_command(outbox.group)
    for command in serve.commands:
        main.add_command(command)


_add_command_groups()
