"""DKIM signatures on our notifications (dkimpy), added as each mail is handed over.

With ``dkim_key_path`` set, the outbound worker's transport is wrapped in a
``SigningTransport``: every delivery attempt signs the outbox row's bytes
with ``d=`` ``dkim_signing_domain`` and ``s=`` ``dkim_selector``. The outbox
keeps the composed mail as it was (what ``outbox`` commands show); a retry
signs the same bytes again, with the same Message-ID, and a key rotated
while mail waits applies to that mail too. Signing costs about a millisecond
and needs no DNS.

Signed: the fields a receiver shows or threads on (``SIGNED_HEADERS``),
each also listed once more than it occurs, so none can be added after us.
``generate_key`` and ``dns_record`` serve ``replygate dkim keygen``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from replygate.config import Settings
from replygate.errors import ConfigError
from replygate.store.outbox import Claimed
from replygate.workers.transports import Transport

SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"auto-submitted",
)


class DkimSigner:
    """Signs mail with one key, read once."""

    def __init__(self, key: bytes, *, selector: str, domain: str) -> None:
        self.key = key
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner:
        """The signer ``settings`` name; ``ConfigError`` in one line when the key is unusable."""
        path = Path(settings.dkim_key_path)
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"dkim_key_path: cannot read {path}: {exc.strerror}") from exc
        signer = cls(key, selector=settings.dkim_selector, domain=settings.dkim_signing_domain)
        try:
            signer.sign(b"From: a@b.example\r\nSubject: check\r\n\r\nkey check\r\n")
        except dkim.DKIMException as exc:
            raise ConfigError(f"dkim_key_path: {path} is not a usable private key: {exc}") from exc
        return signer

    def sign(self, raw: bytes) -> bytes:
        """``raw`` with its DKIM-Signature field first."""
        present = _present(raw)
        headers = [h for h in SIGNED_HEADERS for _ in range(present.count(h) + 1)]
        signature = dkim.sign(raw, self.selector, self.domain, self.key, include_headers=headers)
        return bytes(signature) + raw


def _present(raw: bytes) -> list[bytes]:
    """The lower-cased names of the header fields of ``raw``, in order."""
    end = raw.find(b"\r\n\r\n")
    block = raw if end == -1 else raw[:end]
    names = []
    for line in block.split(b"\r\n"):
        if line and line[:1] not in (b" ", b"\t") and b":" in line:
            names.append(line.split(b":", 1)[0].strip().lower())
    return names


class SigningTransport:
    """A transport that DKIM-signs each mail, then hands it to ``inner``."""

    def __init__(self, inner: Transport, signer: DkimSigner) -> None:
        self.inner = inner
        self.signer = signer
        self.name = inner.name

    async def send(self, mail: Claimed) -> None:
        await self.inner.send(dataclasses.replace(mail, raw=self.signer.sign(mail.raw)))


def generate_key(path: Path, *, bits: int = 2048) -> bytes:
    """Write a new RSA private key to ``path`` (mode 0600, never over an existing file);
    returns its public key, DER-encoded."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def dns_record(public_der: bytes) -> str:
    """The TXT record's text for a public key: ``v=DKIM1; k=rsa; p=…``."""
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(public_der).decode("ascii")


def zone_line(selector: str, domain: str, public_der: bytes) -> str:
    """The record as a zone file line, split into strings of at most 255 octets."""
    text = dns_record(public_der)
    chunks = " ".join(f'"{text[i : i + 250]}"' for i in range(0, len(text), 250))
    return f"{selector}._domainkey.{domain}. 3600 IN TXT ( {chunks} )"
