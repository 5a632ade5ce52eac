"""``replygate keys``: the keys that seal stored messages, and what each one sealed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from replygate.cli import App, clean_errors, emit, pass_app, say
from replygate.cli.output import json_option, shown, table


@click.group("keys")
def group() -> None:
    """Encryption keys."""


@group.command("status")
@json_option
@pass_app
@clean_errors
def status(app: App, as_json: bool) -> None:
    """Show the active key, the versions in the key file and the rows each version sealed."""
    from replygate.core import keys

    found = keys.status(app.factory)

    def text() -> None:
        say(f"key file: {found.key_file}")
        say(f"active version: {found.active}")
        say(f"versions in the file: {shown(found.versions)}")
        if found.missing:
            say(f"versions stored values use but the file lacks: {shown(found.missing)}")
        table(
            ("table", "column", "version", "rows"),
            (
                (c.table, c.column, int(version), rows)
                for c in found.columns
                for version, rows in c.rows.items()
            ),
            empty="nothing sealed yet",
        )()

    emit(found, as_json, text)


@group.command("init")
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the new key file (mode 0600).",
)
@clean_errors
def init(path: Path) -> None:
    """Write a new key file with one key, for REPLYGATE_ENCRYPTION_KEYS_FILE."""
    from replygate.store.keyring import Keyring

    if path.exists():
        raise click.ClickException(f"{path} exists; a key file is never overwritten")
    Keyring.create(path)
    say(f"wrote {path} (mode 0600): back it up apart from the database")


@group.command("rotate")
@click.option("--resume", is_flag=True, help="Finish an interrupted rotation; no new key.")
@click.option("--batch", default=200, show_default=True, help="Values re-sealed per transaction.")
@pass_app
@clean_errors
def rotate(app: App, resume: bool, batch: int) -> None:
    """Make a new key active and re-seal every stored value with it (safe while serve runs)."""
    from replygate.core import keys

    factory = app.factory
    total = keys.to_reseal(factory, new_key=not resume)
    with click.progressbar(length=max(total, 1), label="re-sealing", file=sys.stderr) as bar:
        done = keys.rotate(
            factory, app.settings, new_key=not resume, batch=batch, progress=bar.update
        )
    summary = f"key version {done.version} is active; re-sealed {done.resealed} stored values"
    if done.broken:
        named = ", ".join(done.broken[:10]) + (", ..." if len(done.broken) > 10 else "")
        raise click.ClickException(
            f"{summary}; {len(done.broken)} do not open and keep their old key ({named}): "
            "restore them from a backup or delete them, then run `replygate keys rotate --resume`"
        )
    say(summary)


@group.command("retire")
@click.argument("version", type=int)
@pass_app
@clean_errors
def retire(app: App, version: int) -> None:
    """Remove key VERSION from the key file, once no stored value uses it."""
    from replygate.core import keys

    keys.retire(app.factory, app.settings, version)
    say(f"key version {version} is retired")
