"""Slowing down hosts that keep naming reply addresses we never issued.

Someone guessing addresses, or a list mailing every address it scraped,
hits unknown tokens again and again. After ``max_failures`` such refusals
from one client IP within ``window`` seconds, that IP is told to come back
later for ``cooldown`` seconds (``450 4.7.1`` at RCPT, ``421 4.7.0`` at
connect). A temporary refusal costs a real MTA nothing, since it retries;
it costs a guesser its pace.

Relays in front of the gateway (a Postfix or Exim that every sender's mail
passes through) are exempt: throttling their one IP would defer everyone.

Pure logic over an injected clock, in memory and per process: several
gateway processes each keep their own count, which only makes the limit
approximate. Single event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable, Iterable

from replygate.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Hosts tracked at once; beyond this the least recently failing are forgotten,
# so a flood from many addresses cannot grow memory without bound.
MAX_HOSTS = 100_000


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"192.0.2.10, 10.0.0.0/8, 2001:db8::/32"`` as networks; ConfigError names a bad one."""
    networks = []
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(f"smtp_trusted_relays: {item!r} is not an IP address") from exc
    return tuple(networks)


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return address


class Throttle:
    """Counts failures per client IP in a sliding window and holds cool-downs."""

    def __init__(
        self,
        max_failures: int,
        window: float,
        cooldown: float,
        *,
        exempt: Iterable[Network] = (),
        clock: Callable[[], float] = time.monotonic,
        max_hosts: int = MAX_HOSTS,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.cooldown = cooldown
        self.exempt = tuple(exempt)
        self.clock = clock
        self.max_hosts = max_hosts
        self._failures: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def is_exempt(self, ip: str) -> bool:
        if not self.exempt:
            return False
        address = _address(ip)
        return address is not None and any(address in net for net in self.exempt)

    def blocked(self, ip: str | None) -> float:
        """Seconds of cool-down ``ip`` has left; 0 when it may go on."""
        if not ip or not self._until:
            return 0.0
        until = self._until.get(ip)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left > 0:
            return left
        del self._until[ip]
        return 0.0

    def failed(self, ip: str | None) -> bool:
        """Count one failure from ``ip``; True when it starts a cool-down."""
        if not ip or not self.enabled or self.is_exempt(ip):
            return False
        now = self.clock()
        times = self._failures.pop(ip, None)  # re-inserted last: the dict stays in LRU order
        if times is None:
            times = deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            self._until[ip] = now + self.cooldown
            self._forget()
            return True
        self._failures[ip] = times
        self._forget()
        return False

    def _forget(self) -> None:
        """Drop the least recently failing hosts past ``max_hosts``, and lapsed cool-downs."""
        while len(self._failures) > self.max_hosts:
            del self._failures[next(iter(self._failures))]
        if len(self._until) > self.max_hosts:
            now = self.clock()
            for ip in [ip for ip, until in self._until.items() if until <= now]:
                del self._until[ip]
            while len(self._until) > self.max_hosts:
                del self._until[next(iter(self._until))]
