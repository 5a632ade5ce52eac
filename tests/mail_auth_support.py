"""Builders for the mail-authentication tests: keys, DNS records, signed and sealed mail.

Keys are made with ``cryptography``, records published on the loopback DNS
server (``tests/dns_server.py``), mail signed with dkimpy as a sending domain
and sealed with dkimpy's ``arc_sign`` as a forwarder would.
"""

from __future__ import annotations

import base64
import functools

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.dns_server import Zone

SIGNED = [b"from", b"to", b"subject", b"message-id", b"mime-version", b"content-type"]


@functools.cache
def rsa_key(name: str) -> tuple[bytes, str]:
    """(PKCS#1 PEM private key, its DKIM TXT record) for a test domain, made once per run."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def publish_key(zone: Zone, domain: str, selector: str = "s1") -> bytes:
    """Publish ``domain``'s test key under ``selector``; returns the private key."""
    pem, record = rsa_key(domain)
    zone.txt(f"{selector}._domainkey.{domain}", record)
    return pem


def dkim_sign(raw: bytes, domain: str, key: bytes, selector: str = "s1") -> bytes:
    """``raw`` with a DKIM-Signature of ``domain``'s, as its outbound MTA adds it."""
    signature = dkim.sign(raw, selector.encode(), domain.encode(), key, include_headers=SIGNED)
    return bytes(signature) + raw


def forward_and_seal(raw: bytes, forwarder: str, key: bytes, *, saw: str) -> bytes:
    """What a mailing list does: record what it found (``saw``, RFC 8601 results), tag
    the subject (breaking the author's DKIM signature), then add its ARC set."""
    results = f"Authentication-Results: {forwarder}; {saw}\r\n".encode()
    tagged = raw.replace(b"Subject: ", b"Subject: [clinic list] ", 1)
    message = results + tagged
    seal = dkim.arc_sign(
        message, b"arc", forwarder.encode(), key, forwarder.encode(), timestamp=None
    )
    return b"".join(seal) + message
