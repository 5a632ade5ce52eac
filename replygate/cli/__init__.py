"""The ``replygate`` command: the root group, and what every command group shares.

The group builds one ``App`` (settings, database) and every subcommand
receives it through ``pass_app``. Each command group lives in a module of its
own and only parses, calls ``replygate.core`` and prints, in the one style of
``output`` (tables with a header row, ``Z`` times, words for booleans and
empties, ``--json`` on every listing; those shapes are a contract). Errors are
one clear line and exit status 1, never a traceback; usage errors exit 2.

Starting fast matters (an operator's every command, a Postfix pipe's every
mail): a group's module is imported only when it is run or its help shown
(``COMMANDS``), and imports the core, SQLAlchemy and the rest inside its
commands, so ``--help`` and a listing load only what they use
(``tests/integration/test_cli_startup.py``, ``bench/cli_startup.py``).
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from replygate import logs
from replygate.cli.output import emit, json_option, lines, say, terminal_safe
from replygate.config import Settings, load_settings
from replygate.errors import ReplygateError
from replygate.mail.markers import TOKEN_LENGTH

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "COMMANDS",
    "App",
    "clean_errors",
    "emit",
    "json_option",
    "lines",
    "main",
    "pass_app",
    "say",
    "terminal_safe",
]

F = TypeVar("F", bound=Callable[..., Any])

# Every command under ``replygate``: its name and where it lives (``module:attribute``).
COMMANDS: dict[str, str] = {
    "config": "replygate.cli.configuration:group",
    "db": "replygate.cli.database:group",
    "users": "replygate.cli.users:group",
    "circles": "replygate.cli.circles:group",
    "settings": "replygate.cli.settings:group",
    "threads": "replygate.cli.threads:group",
    "tokens": "replygate.cli.tokens:group",
    "audit": "replygate.cli.audit:group",
    "keys": "replygate.cli.keys:group",
    "dkim": "replygate.cli.dkim:group",
    "send": "replygate.cli.send:send",
    "queue": "replygate.cli.inbound_queue:group",
    "outbox": "replygate.cli.outbox:group",
    "serve": "replygate.cli.serve:serve",
    "worker": "replygate.cli.serve:worker",
    "ingest": "replygate.cli.serve:ingest",
    "demo": "replygate.cli.serve:demo",
}


@dataclass
class App:
    """What every command needs, built lazily so ``--help`` touches nothing."""

    config_file: Path | None
    overrides: dict[str, Any]
    _settings: Settings | None = None
    _engine: Engine | None = None
    _read_engine: Engine | None = None
    _factory: sessionmaker[Session] | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(config_file=self.config_file, overrides=self.overrides)
        return self._settings

    @property
    def engine(self) -> Engine:
        from replygate.store.db import make_engine

        if self._engine is None:
            self._engine = make_engine(
                self.settings.database_url,
                sqlite_max_bytes=self.settings.sqlite_max_size_mb * 1024 * 1024,
            )
        return self._engine

    @property
    def read_engine(self) -> Engine:
        """An engine for a listing read with SQLAlchemy Core: on SQLite it reads a snapshot
        and never waits for the write lock; it loads no ORM (``db.make_read_engine``).
        The keyring is loaded with it, as for every use of the database."""
        from replygate.store import keyring
        from replygate.store.db import make_read_engine

        if self._read_engine is None:
            keyring.load(self.settings)
            self._read_engine = make_read_engine(self.settings.database_url, pool_size=1)
        return self._read_engine

    @property
    def factory(self) -> sessionmaker[Session]:
        if self._factory is None:
            from replygate.core import audit
            from replygate.store import keyring
            from replygate.store.db import session_factory

            # What a command does, an operator did (``serve`` acts as itself). Marked
            # with the first use of the database, which every audited act needs, so
            # that ``--help`` loads no audit trail.
            audit.operator_at_work()
            keyring.load(self.settings)
            self._factory = session_factory(self.engine)
        return self._factory

    def redact(self, text: str) -> str:
        """``text`` fit for a log: tokens fingerprinted with the secret once settings are
        loaded, hidden before (writing a log line never loads them)."""
        secret = self._settings.secret_key if self._settings is not None else None
        return _redaction()(secret, text)

    def close(self) -> None:
        for engine in (self._engine, self._read_engine):
            if engine is not None:
                engine.dispose()


@functools.cache
def _redaction() -> Callable[[str | None, str], str]:
    """``redaction.redact``, imported at the first log line instead of at start-up
    (and not again for each string of each line)."""
    from replygate.mail.redaction import redact

    return redact


pass_app = click.make_pass_decorator(App)


def clean_errors(fn: F) -> F:
    """Turn our errors and database trouble into one line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ReplygateError, ValueError) as exc:
            raise click.ClickException(terminal_safe(str(exc))) from exc
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            orig = getattr(exc, "orig", None)
            detail = str(orig).strip().splitlines()[0] if orig else str(exc)
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


def _is_database_error(exc: Exception) -> bool:
    """A database's refusal (no such table, cannot connect), told apart without importing
    SQLAlchemy: a command that never loaded it cannot have raised one of its errors."""
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.OperationalError | errors.ProgrammingError)


class LazyGroup(click.Group):
    """A group whose commands (``COMMANDS``) are imported when first asked for."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command), self.lazy[cmd_name]
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS)
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
    json_logs = (
        log_json
        if log_json is not None
        else os.environ.get("REPLYGATE_LOG_JSON", "").strip().lower() in ("1", "true", "yes", "on")
    )
    logs.configure(json=json_logs, redact=app.redact, plain_below=TOKEN_LENGTH)
    _end_without_teardown()


def _end_without_teardown() -> None:
    """Let the process end without collecting, one by one, what its imports built.

    At exit Python frees every module's classes and functions as garbage
    (SQLAlchemy's alone are tens of thousands of objects), a fifth of a
    listing's start (``bench/cli_startup.py``); frozen (``gc.freeze``) they are
    left for the operating system to take back at once. It runs among the
    ``atexit`` handlers, after the command has closed its engines; the
    handlers still run, logging's flush included. Registered once however
    often ``main`` runs in one process.
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
