"""A real DNS server on loopback (dnslib), answering from a zone the tests write.

DNS is the edge of the world: no test asks the machine's resolver. The suite
starts one server (``tests/conftest.py``: ``dns_server``), points every
setting and subprocess at it (``REPLYGATE_DNS_NAMESERVERS``), and each test
that needs records writes them through ``dns_zone``; anything not written
does not exist (NXDOMAIN). UDP and TCP on the same port, as resolvers expect.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

from dnslib import QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class Zone(BaseResolver):
    """Records by (name, type): TXT strings and A addresses; thread-safe."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.Lock()
        self.queries: list[tuple[str, str]] = []
        self.delay: dict[str, threading.Event] = {}  # names whose answers wait for the event

    @staticmethod
    def _key(name: str) -> str:
        return name.lower().rstrip(".") + "."

    def txt(self, name: str, *texts: str) -> None:
        """Publish TXT records at ``name`` (each may be longer than 255 octets)."""
        with self._lock:
            self._records.setdefault((self._key(name), "TXT"), []).extend(texts)

    def a(self, name: str, *addresses: str) -> None:
        with self._lock:
            self._records.setdefault((self._key(name), "A"), []).extend(addresses)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self.queries.clear()
            self.delay.clear()

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self.queries.append((name, qtype))
            found = list(self._records.get((name, qtype), []))
            exists = any(key[0] == name for key in self._records)
            hold = self.delay.get(name.rstrip("."))
        if hold is not None:
            hold.wait(timeout=30)
        for value in found:
            if qtype == "TXT":
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
                reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
            elif qtype == "A":
                reply.add_answer(RR(name, QTYPE.A, rdata=A(value), ttl=60))
        if not found and not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class LoopbackDns:
    """The zone served on 127.0.0.1 over UDP and TCP; ``address`` is ``ip:port``."""

    def __init__(self) -> None:
        self.zone = Zone()
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        for _ in range(20):
            try:
                port = _free_udp_and_tcp_port()
                self.udp = DNSServer(self.zone, port=port, address="127.0.0.1", logger=quiet)
                self.tcp = DNSServer(
                    self.zone, port=port, address="127.0.0.1", tcp=True, logger=quiet
                )
            except OSError:
                continue
            break
        else:  # pragma: no cover - a machine with no free port
            raise RuntimeError("no free port for the loopback DNS server")
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.udp.start_thread()
        self.tcp.start_thread()

    def stop(self) -> None:
        self.udp.stop()
        self.tcp.stop()

    def names_asked(self) -> Iterable[str]:
        return [name for name, _ in self.zone.queries]


def _free_udp_and_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = int(udp.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", port))
    return port
