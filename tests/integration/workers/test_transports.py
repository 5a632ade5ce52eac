"""Transports: Maildir writes, and SMTP replies mapped to transient or permanent."""

from __future__ import annotations

import asyncio
import dataclasses
import mailbox
import os
import stat
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from replygate.config import Settings
from replygate.mail.compose import compose
from replygate.mail.verp import bounce_address
from replygate.store.outbox import Claimed
from replygate.workers.transports import (
    MaildirTransport,
    MemoryTransport,
    PermanentDeliveryError,
    SmtpTransport,
    TransientDeliveryError,
    transport_from_settings,
)
from tests.helpers import BOUNCE_KEY
from tests.integration.workers.support import Smarthost, free_port, notification

VERP = bounce_address("n0001abc", "reply.test", BOUNCE_KEY)  # notification 1's envelope sender


def claimed(n: int = 1) -> Claimed:
    mail = compose(notification(n))
    return Claimed(
        id=n,
        kind="content",
        recipient=mail.recipient,
        envelope_from=mail.envelope_from,
        header_message_id=mail.message_id,
        raw=mail.raw,
        attempts=1,
    )


def smtp(host: Smarthost) -> SmtpTransport:
    return SmtpTransport(host.host, host.port, starttls=False, timeout=5)


def test_maildir_delivery_creates_the_folder_and_adds_trace_headers(tmp_path: Path) -> None:
    path = tmp_path / "var" / "outbox"
    mail = claimed()
    asyncio.run(MaildirTransport(path).send(mail))

    box = mailbox.Maildir(path, create=False)
    [key] = box.keys()
    data = box.get_bytes(key)
    assert b"\r" not in data
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["Return-Path"] == f"<{VERP}>"
    assert msg["Delivered-To"] == "client1@example.com"
    assert msg["Message-ID"] == mail.header_message_id
    assert data.endswith(mail.raw.replace(b"\r\n", b"\n"))


def test_maildir_write_error_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the Maildir should be")
    with pytest.raises(TransientDeliveryError):
        asyncio.run(MaildirTransport(blocker).send(claimed()))


def test_smtp_delivery_uses_the_verp_sender(smarthost: Smarthost) -> None:
    mail = claimed()
    asyncio.run(smtp(smarthost).send(mail))
    [got] = smarthost.handler.received
    assert got.mail_from == VERP
    assert got.rcpt_tos == ["client1@example.com"]
    assert got.content.replace(b"\r\n", b"\n").rstrip() == mail.raw.replace(b"\r\n", b"\n").rstrip()


@pytest.mark.parametrize(
    "stage, reply, error",
    [
        ("rcpt", "451 4.3.0 Mailbox busy, try later", TransientDeliveryError),
        ("rcpt", "550 5.1.1 No such user", PermanentDeliveryError),
        ("data", "452 4.3.1 Insufficient system storage", TransientDeliveryError),
        ("data", "554 5.7.1 Message refused", PermanentDeliveryError),
    ],
)
def test_smtp_replies_map_to_transient_or_permanent(
    smarthost: Smarthost, stage: str, reply: str, error: type[Exception]
) -> None:
    setattr(smarthost.handler, f"{stage}_reply", reply)
    with pytest.raises(error) as caught:
        asyncio.run(smtp(smarthost).send(claimed()))
    assert reply.split()[0] in str(caught.value)
    assert smarthost.handler.received == []


def test_smarthost_down_is_transient() -> None:
    transport = SmtpTransport("127.0.0.1", free_port(), starttls=False, timeout=5)
    with pytest.raises(TransientDeliveryError, match="unavailable"):
        asyncio.run(transport.send(claimed()))


def test_starttls_required_but_not_offered_is_transient(smarthost: Smarthost) -> None:
    transport = SmtpTransport(smarthost.host, smarthost.port, starttls=True, timeout=5)
    with pytest.raises(TransientDeliveryError):
        asyncio.run(transport.send(claimed()))


def test_memory_transport_records_or_fails() -> None:
    transport = MemoryTransport(fail=lambda m: PermanentDeliveryError("no") if m.id == 2 else None)
    asyncio.run(transport.send(claimed(1)))
    with pytest.raises(PermanentDeliveryError):
        asyncio.run(transport.send(claimed(2)))
    assert [m.id for m in transport.sent] == [1]


def test_transport_from_settings(settings: Settings) -> None:
    maildir = transport_from_settings(settings)
    assert isinstance(maildir, MaildirTransport)
    assert maildir.path == settings.outbox_maildir
    smart = transport_from_settings(
        dataclasses.replace(
            settings,
            smarthost_host="smtp.example.com",
            smarthost_port=587,
            smarthost_username="u",
            smarthost_password="hunter2",
        )
    )
    assert isinstance(smart, SmtpTransport)
    assert (smart.host, smart.port, smart.starttls, smart.implicit_tls) == (
        "smtp.example.com",
        587,
        True,
        False,
    )
    assert "hunter2" not in repr(smart)
    tls = transport_from_settings(
        dataclasses.replace(settings, smarthost_host="smtp.example.com", smarthost_port=465)
    )
    assert isinstance(tls, SmtpTransport)
    assert (tls.starttls, tls.implicit_tls) == (False, True)


def test_concurrent_first_deliveries_create_the_maildir_once(tmp_path: Path) -> None:
    """Many deliveries racing to create a fresh Maildir all succeed."""
    path = tmp_path / "fresh" / "outbox"
    transport = MaildirTransport(path)

    async def burst() -> None:
        await asyncio.gather(*(transport.send(claimed(n)) for n in range(1, 21)))

    asyncio.run(burst())
    assert len(mailbox.Maildir(path, create=False)) == 20


def test_concurrent_deliveries_share_the_fsync_of_new_yet_each_waits_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is fsynced, and ``send`` returns only after an fsync of ``new/``
    that followed its rename; deliveries at the same moment share those fsyncs."""
    transport = MaildirTransport(tmp_path / "outbox")
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", str(fd)))

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_rename(src, dst)
        events.append(("renamed", message_from_bytes(Path(dst).read_bytes())["Message-ID"]))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)

    async def one(n: int) -> None:
        mail = claimed(n)
        await transport.send(mail)
        events.append(("returned", mail.header_message_id))

    async def burst() -> None:
        await asyncio.gather(*(one(n) for n in range(1, 31)))

    asyncio.run(burst())
    asyncio.run(one(31))  # another event loop, the same transport
    kinds = [kind for kind, _ in events]
    assert kinds.count("file") == 31
    assert 1 <= kinds.count("dir") < 31
    assert kinds.count("returned") == 31
    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    assert len(box) == 31
    at = {(kind, mid): i for i, (kind, mid) in enumerate(events) if kind != "file"}
    dirs = [i for i, (kind, _) in enumerate(events) if kind == "dir"]
    for kind, mid in events:
        if kind == "returned":
            renamed, returned = at[("renamed", mid)], at[("returned", mid)]
            assert any(renamed < d < returned for d in dirs), mid
