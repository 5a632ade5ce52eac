"""``replygate dkim keygen SELECTOR``: a key to sign notifications with, and its DNS record."""

from __future__ import annotations

from pathlib import Path

import click

from replygate.cli import App, clean_errors, pass_app, say
from replygate.errors import ConfigError


@click.group("dkim")
def group() -> None:
    """DKIM signing of notifications."""


@group.command("keygen")
@click.argument("selector")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (default: <var_dir>/dkim/SELECTOR.pem).",
)
@click.option("--domain", help="The signing domain (default: that of notification_from).")
@click.option(
    "--bits",
    type=click.IntRange(1024, 4096),
    default=2048,
    show_default=True,
    help="Size of the RSA key.",
)
@pass_app
@clean_errors
def keygen(app: App, selector: str, key_path: Path | None, domain: str | None, bits: int) -> None:
    """Write a new private key (mode 0600) and print the TXT record to publish."""
    from replygate.workers.signing import generate_key, zone_line

    if not selector.replace("-", "").isalnum() or not selector.isascii():
        raise ConfigError(f"a selector is letters, digits and hyphens, not {selector!r}")
    domain = (domain or app.settings.dkim_signing_domain).strip().lower()
    path = key_path or app.settings.var_dir / "dkim" / f"{selector}.pem"
    try:
        public = generate_key(path, bits=bits)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists already; choose a new selector or remove it") from exc
    say(f"Private key written to {path} (mode 0600). Publish this record, then set")
    say(f"REPLYGATE_DKIM_KEY_PATH={path} and REPLYGATE_DKIM_SELECTOR={selector}:")
    say()
    say(zone_line(selector, domain, public))
