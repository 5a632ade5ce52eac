"""DNS for the mail checks: one dnspython resolver with a cache and a deadline per lookup.

The checks' libraries each ask DNS their own way; this module answers all
three from the same resolver, so every lookup has the same timeout, goes to
the configured servers (``dns_nameservers``; tests point it at a server on
loopback) and lands in the same cache:

- ``txt``: dkimpy's ``dnsfunc`` (DKIM keys, ARC keys), the first TXT record;
- ``dmarc_txt``: authheaders' ``dnsfunc`` (DMARC records), the first TXT
  record as text;
- ``spf``: pyspf's ``DNSLookup`` shape. pyspf reads one module global for it,
  so ``spf_lookups`` sets, for the calling thread's context only, which
  resolver answers (``install_spf_hook`` points the global at it once).

A lookup the servers cannot answer in time raises ``DnsUnavailable`` (the
check's result is then ``temperror``); a name that does not exist, or has no
such record, is an empty answer.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf

from replygate.errors import ConfigError

CACHE_SIZE = 10_000


class DnsUnavailable(Exception):
    """Raised when no server answered a lookup within its time (a temporary error)."""


def _nameserver(entry: str) -> dns.nameserver.Nameserver:
    """``"127.0.0.1:5353"``, ``"[::1]:53"`` or ``"192.0.2.53"`` as a dnspython nameserver."""
    host, port = entry, 53
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif entry.count(":") == 1:
        host, _, text = entry.partition(":")
        port = int(text)
    ipaddress.ip_address(host)
    return dns.nameserver.Do53Nameserver(host, port)


class DnsLookups:
    """The resolver of one process's mail checks (thread-safe: dnspython's cache locks)."""

    def __init__(self, nameservers: str = "", *, timeout: float = 3.0) -> None:
        if nameservers.strip():
            resolver = dns.resolver.Resolver(configure=False)
            try:
                resolver.nameservers = [
                    _nameserver(e.strip()) for e in nameservers.split(",") if e.strip()
                ]
            except ValueError as exc:
                raise ConfigError(f"dns_nameservers: {nameservers!r} is not ip[:port], …") from exc
        else:
            try:
                resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise ConfigError(
                    "no DNS resolver in /etc/resolv.conf: set dns_nameservers, "
                    "or mail_auth = trust or off"
                ) from exc
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
        self.resolver = resolver
        self.timeout = timeout

    def _answer(self, name: str | bytes, rdtype: str) -> dns.resolver.Answer | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        try:
            answer = self.resolver.resolve(
                text, rdtype, search=False, raise_on_no_answer=False, lifetime=self.timeout
            )
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsUnavailable(f"DNS did not answer for {text} {rdtype}: {exc}") from exc
        except dns.exception.DNSException:
            return None  # a name DNS cannot hold (too long, an empty label): nothing there
        return answer if answer.rrset is not None else None

    def txt(self, name: str | bytes, timeout: float | None = None) -> bytes | None:
        """The first TXT record of ``name``, its strings joined (dkimpy's ``dnsfunc``)."""
        answer = self._answer(name, "TXT")
        if answer is None:
            return None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    def dmarc_txt(self, name: str) -> str | None:
        """The DMARC record at ``name`` as text, else its first TXT (authheaders' ``dnsfunc``)."""
        answer = self._answer(name, "TXT")
        if answer is None:
            return None
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        for text in texts:
            if text.startswith("v=DMARC1"):
                return text
        return texts[0] if texts else None

    def spf(self, name: str, qtype: str, strict: Any = True, timeout: float = 0) -> list[Any]:
        """pyspf's ``DNSLookup``: ``[((name, qtype), value), ...]``; ``spf.TempError`` when
        DNS does not answer."""
        try:
            answer = self._answer(name, qtype)
        except DnsUnavailable as exc:
            raise spf.TempError(f"DNS {exc}") from exc
        if answer is None:
            return []
        found: list[Any] = []
        for rdata in answer:
            if qtype in ("A", "AAAA"):
                found.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                found.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                found.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                found.append(((name, qtype), rdata.strings))
        return found


# Which resolver pyspf's lookups go to, per thread context (``spf_lookups``).
_SPF_LOOKUPS: contextvars.ContextVar[DnsLookups | None] = contextvars.ContextVar(
    "replygate_spf_lookups", default=None
)
_PYSPF_DEFAULT = spf.DNSLookup


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 0) -> list[Any]:
    lookups = _SPF_LOOKUPS.get()
    if lookups is None:
        return list(_PYSPF_DEFAULT(name, qtype, strict, timeout))
    return lookups.spf(name, qtype, strict, timeout)


def install_spf_hook() -> None:
    """Point pyspf's one DNS function at ``_spf_lookup`` (the process's only global change)."""
    spf.DNSLookup = _spf_lookup


@contextlib.contextmanager
def spf_lookups(lookups: DnsLookups) -> Iterator[None]:
    """Within the block, pyspf asks ``lookups`` (this thread's context only)."""
    install_spf_hook()
    token = _SPF_LOOKUPS.set(lookups)
    try:
        yield
    finally:
        _SPF_LOOKUPS.reset(token)
