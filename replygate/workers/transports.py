"""Transports: the I/O seam between the outbound worker and the world.

A transport delivers one claimed outbox row and either returns (delivered)
or raises one of two errors, which decide what the worker does next::

    DeliveryError
    ├── TransientDeliveryError   try again later (4xx, connection trouble, local I/O)
    └── PermanentDeliveryError   never retry this mail (5xx)

Foreign exceptions (aiosmtplib's, ``OSError``) are mapped here, at the
boundary, with ``raise … from exc``; the worker never sees them.

- ``SmtpTransport``: hands the mail to a smarthost with the VERP envelope
  sender, so bounces name the notification.
- ``MaildirTransport``: the embedded default, writes into a local Maildir
  that a mail client, a test or ``mutt -f`` can read.
- ``MemoryTransport``: a fake that records mails and can be told to fail,
  for tests of anything that drives a transport.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiosmtplib

from replygate.store.outbox import Claimed

if TYPE_CHECKING:
    from replygate.config import Settings

DEFAULT_SMTP_TIMEOUT = 30.0


class DeliveryError(Exception):
    """Base of the two outcomes a transport may raise instead of returning."""


class TransientDeliveryError(DeliveryError):
    """Raised when delivery failed but may succeed later: a 4xx reply, a
    refused or dropped connection, a timeout, a smarthost that refuses our
    session (greeting, HELO, AUTH, STARTTLS as configured), or a local write
    error (disk full)."""


class PermanentDeliveryError(DeliveryError):
    """Raised when the receiving side refused the mail for good (a 5xx reply
    to the sender, the recipient or the data); retrying would only repeat it."""


class Transport(Protocol):
    """Delivers one mail, or raises ``TransientDeliveryError``/``PermanentDeliveryError``."""

    name: str

    async def send(self, mail: Claimed) -> None: ...


class MaildirTransport:
    """Deliver into a Maildir (created if missing), as a local MDA would.

    The file gets ``Return-Path`` (the VERP envelope sender) and
    ``Delivered-To`` prepended, and LF line endings as Maildir readers expect.
    Writing happens in a thread so the event loop never waits on the disk.

    Each file is fsynced and renamed into ``new/``, and ``new/`` is fsynced
    before ``send`` returns, so a row marked ``sent`` never points at a file a
    power cut could take back (``mailbox.Maildir.add`` has no fsyncs). The
    directory's fsync is shared: deliveries renamed while one runs wait for the
    next, which covers them all, so a batch costs one per mail and a few more.
    """

    name = "maildir"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._new_synced = _GroupSync(self._sync_new)

    async def send(self, mail: Claimed) -> None:
        await asyncio.to_thread(self._write, mail)
        try:
            await self._new_synced()
        except OSError as exc:
            raise TransientDeliveryError(f"cannot write to Maildir {self.path}: {exc}") from exc

    def _write(self, mail: Claimed) -> None:
        trace = f"Return-Path: <{mail.envelope_from}>\nDelivered-To: {mail.recipient}\n"
        data = trace.encode("utf-8") + mail.raw.replace(b"\r\n", b"\n")
        try:
            # Made by hand, not by Maildir(create=True), which fails when two
            # deliveries create the folder at the same moment.
            for sub in ("tmp", "new", "cur"):
                (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            self._write_into_new(data)
        except OSError as exc:
            raise TransientDeliveryError(f"cannot write to Maildir {self.path}: {exc}") from exc

    def _write_into_new(self, data: bytes) -> None:
        """The Maildir protocol: write into tmp/, fsync, rename into new/."""
        name = f"{time.time_ns()}.P{os.getpid()}Q{secrets.token_hex(8)}.{socket.gethostname()}"
        tmp, new = self.path / "tmp" / name, self.path / "new" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, new)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _sync_new(self) -> None:
        """Make the renames into new/ so far durable."""
        dir_fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class _GroupSync:
    """One blocking ``sync`` (run in a thread) shared by everyone who asks meanwhile.

    A caller waits for a sync that starts after it asked, so everything it did
    before asking is covered; callers that ask while one runs share the next.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._next: asyncio.Future[None] | None = None  # the sync the next callers share
        self._runner: asyncio.Task[None] | None = None  # runs syncs while anyone waits

    async def __call__(self) -> None:
        loop = asyncio.get_running_loop()
        if self._next is None or self._next.get_loop() is not loop:
            self._next = loop.create_future()
        waiting = self._next
        if self._runner is None or self._runner.get_loop() is not loop:
            self._runner = loop.create_task(self._run())
        # Shielded: one caller cancelled must not cancel the sync the others wait for.
        await asyncio.shield(waiting)

    async def _run(self) -> None:
        try:
            while self._next is not None:
                current, self._next = self._next, None
                try:
                    await asyncio.to_thread(self._sync)
                except Exception as exc:
                    current.set_exception(exc)
                    current.exception()  # retrieved here: no caller may be left to ask
                else:
                    current.set_result(None)
        finally:
            if self._runner is asyncio.current_task():
                self._runner = None


class SmtpTransport:
    """Hand mail to an SMTP smarthost, one connection per mail.

    ``starttls``: True requires STARTTLS, False never uses it, None uses it
    when offered. ``implicit_tls`` speaks TLS from the first byte (port 465).
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int = 25,
        starttls: bool | None = True,
        username: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_SMTP_TIMEOUT,
        *,
        implicit_tls: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.starttls = starttls
        self.username = username or None
        self.password = password or None
        self.timeout = timeout
        self.implicit_tls = implicit_tls

    def __repr__(self) -> str:  # never show the password
        return f"SmtpTransport(host={self.host!r}, port={self.port!r})"

    async def send(self, mail: Claimed) -> None:
        try:
            await aiosmtplib.send(
                mail.raw,
                sender=mail.envelope_from,
                recipients=[mail.recipient],
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                start_tls=False if self.implicit_tls else self.starttls,
                use_tls=self.implicit_tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusals = exc.recipients
            code = refusals[0].code if refusals else 451
            message = "; ".join(f"{r.code} {r.message}" for r in refusals) or str(exc)
            raise _by_code(code, f"recipient refused: {message}") from exc
        except (
            aiosmtplib.SMTPAuthenticationError,
            aiosmtplib.SMTPConnectResponseError,
            aiosmtplib.SMTPHeloError,
        ) as exc:
            # A refusal of us (credentials, greeting, HELO), not of this mail:
            # the operator can fix it before the attempts run out.
            raise TransientDeliveryError(
                f"smarthost {self.host}:{self.port} refused the session: {exc.code} {exc.message}"
            ) from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            raise _by_code(exc.code, f"sender refused: {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _by_code(exc.code, f"smarthost replied {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientDeliveryError(
                f"smarthost {self.host}:{self.port} unavailable: {exc}"
            ) from exc


class MemoryTransport:
    """A fake transport: records what it is given, or raises what ``fail`` returns.

    ``fail(mail)`` may return an exception to raise for that mail, or None.
    """

    name = "memory"

    def __init__(self, fail: Callable[[Claimed], Exception | None] | None = None) -> None:
        self.sent: list[Claimed] = []
        self.fail = fail

    async def send(self, mail: Claimed) -> None:
        if self.fail is not None and (error := self.fail(mail)) is not None:
            raise error
        self.sent.append(mail)


def transport_from_settings(settings: Settings) -> Transport:
    """The smarthost when one is configured, else the Maildir outbox; DKIM-signing
    when ``dkim_key_path`` names a key (``signing``)."""
    transport = _plain_transport(settings)
    if not settings.dkim_key_path:
        return transport
    from replygate.workers.signing import DkimSigner, SigningTransport  # it imports this module

    return SigningTransport(transport, DkimSigner.from_settings(settings))


def _plain_transport(settings: Settings) -> Transport:
    if settings.smarthost_host:
        return SmtpTransport(
            settings.smarthost_host,
            settings.smarthost_port,
            starttls=settings.smarthost_starttls and settings.smarthost_port != 465,
            username=settings.smarthost_username,
            password=settings.smarthost_password,
            implicit_tls=settings.smarthost_port == 465,
        )
    return MaildirTransport(settings.outbox_maildir)


def _by_code(code: int, message: str) -> DeliveryError:
    if 500 <= code < 600:
        return PermanentDeliveryError(message)
    return TransientDeliveryError(message)
