"""Our notifications are DKIM-signed with the key ``replygate dkim keygen`` wrote.

The operator's steps, for real: keygen writes the key (mode 0600) and prints
the TXT record, which is published on the loopback DNS server; a message is
sent, the outbound worker delivers its notification, and the delivered file
verifies with dkimpy against that DNS server, as a receiver would check it.
"""

from __future__ import annotations

import dataclasses
import mailbox
import re
import stat
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.errors import ConfigError
from replygate.gateway.dns_lookups import DnsLookups
from replygate.store import directory
from replygate.store.db import transaction
from replygate.workers.drain import drain_once
from replygate.workers.signing import DkimSigner
from tests.dns_server import LoopbackDns, Zone
from tests.helpers import cli_env


def _env(settings: Settings) -> dict[str, str]:
    return cli_env(settings)


def _keygen(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(main, ["dkim", "keygen", *args], env=_env(settings))
    assert result.exit_code == 0, result.output
    return result.output


def _published(output: str) -> tuple[str, str]:
    """(name, text) of the zone line keygen printed."""
    (line,) = [line for line in output.splitlines() if "IN TXT" in line]
    name = line.split()[0].rstrip(".")
    return name, "".join(re.findall(r'"([^"]*)"', line))


def _delivered(settings: Settings) -> list[bytes]:
    box = mailbox.Maildir(settings.outbox_maildir, create=False)
    return [box.get_bytes(key) for key in box.iterkeys()]


@pytest.fixture
def signing(settings: Settings, dns_zone: Zone, tmp_path: Path) -> Settings:
    key = tmp_path / "keys" / "s2026.pem"
    output = _keygen(settings, "s2026", "--key", str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    name, text = _published(output)
    assert name == "s2026._domainkey.reply.test"
    assert text.startswith("v=DKIM1; k=rsa; p=")
    dns_zone.txt(name, text)
    return dataclasses.replace(settings, dkim_key_path=str(key), dkim_selector="s2026")


def _send(sessions: sessionmaker[Session], settings: Settings) -> None:
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    Messaging(sessions, settings).send(
        sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Your results are in."
    )


def test_a_delivered_notification_verifies_against_dns(
    signing: Settings, sessions: sessionmaker[Session], dns_server: LoopbackDns
) -> None:
    _send(sessions, signing)
    assert drain_once(signing, sessions)[1] == 1
    (raw,) = _delivered(signing)
    lookups = DnsLookups(dns_server.address, timeout=2.0)
    assert b"DKIM-Signature: v=1; a=rsa-sha256" in raw
    assert b"d=reply.test" in raw and b"s=s2026" in raw
    assert dkim.verify(raw, dnsfunc=lookups.txt)
    # Anything changed on the way, or a header added after us, no longer verifies.
    assert not dkim.verify(raw.replace(b"Subject:", b"Subject: [changed]", 1), dnsfunc=lookups.txt)
    assert not dkim.verify(b"Cc: eve@evil.test\n" + raw, dnsfunc=lookups.txt)


def test_without_a_key_notifications_go_unsigned(
    settings: Settings, sessions: sessionmaker[Session], dns_zone: Zone
) -> None:
    _send(sessions, settings)
    assert drain_once(settings, sessions)[1] == 1
    (raw,) = _delivered(settings)
    assert b"DKIM-Signature" not in raw


def test_keygen_never_overwrites_a_key(settings: Settings, tmp_path: Path) -> None:
    key = tmp_path / "s1.pem"
    _keygen(settings, "s1", "--key", str(key))
    before = key.read_bytes()
    result = CliRunner().invoke(
        main, ["dkim", "keygen", "s1", "--key", str(key)], env=_env(settings)
    )
    assert result.exit_code == 1 and "exists already" in result.output
    assert key.read_bytes() == before


def test_an_unreadable_key_is_one_clear_error(settings: Settings, tmp_path: Path) -> None:
    broken = dataclasses.replace(
        settings, dkim_key_path=str(tmp_path / "missing.pem"), dkim_selector="s1"
    )
    with pytest.raises(ConfigError, match="cannot read"):
        DkimSigner.from_settings(broken)
    (tmp_path / "junk.pem").write_text("not a key")
    junk = dataclasses.replace(broken, dkim_key_path=str(tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match="not a usable private key"):
        DkimSigner.from_settings(junk)
