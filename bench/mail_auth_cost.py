"""CPU time of the gateway's own mail checks per message (``mail_auth = verify``).

    python bench/mail_auth_cost.py [--messages 300]

In one process, against the tests' DNS server on loopback (its answers then
come from the resolver's cache, as in a burst of replies from one domain):
``Authenticator.prepare`` on a 4 KB reply, unsigned and DKIM-signed, SPF and
DMARC passing. CPU time (``time.process_time``), so other load on the
machine moves it little.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replygate.config import load_settings
from replygate.gateway.authentication import Authenticator
from tests.dns_server import LoopbackDns
from tests.mail_auth_support import dkim_sign, publish_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    dns = LoopbackDns()
    try:
        dns.zone.txt("client.test", "v=spf1 ip4:127.0.0.1 -all")
        dns.zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
        settings = load_settings(
            env={},
            overrides={
                "database_url": "sqlite:///unused.db",
                "secret_key": "bench-" + "k" * 40,
                "reply_domain": "reply.test",
                "dns_nameservers": dns.address,
                "smtp_trusted_relays": "192.0.2.0/24",
            },
        )
        checks = Authenticator(settings)
        body = "Tuesday at 10 works for me. " * 140 + "\r\n"
        raw = (
            "From: Cleo <cleo@client.test>\r\nTo: reply+x@reply.test\r\nSubject: Re: Hi\r\n"
            "Message-ID: <a@client.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
            + body
        ).encode()
        signed = dkim_sign(raw, "client.test", publish_key(dns.zone, "client.test"))
        for name, message in (("unsigned", raw), ("DKIM-signed", signed)):
            kw = {
                "client_ip": "127.0.0.1",
                "helo": "mx.client.test",
                "mail_from": "cleo@client.test",
            }
            checks.prepare(message, **kw)  # the cache filled, as after the first reply
            started = time.process_time()
            for _ in range(args.messages):
                found = checks.prepare(message, **kw)
            per = (time.process_time() - started) / args.messages * 1000
            assert found.decision is not None and found.decision.dmarc == "pass"
            print(f"{name}: {len(message)} bytes, {per:.2f} ms CPU per message")
    finally:
        dns.stop()


if __name__ == "__main__":
    main()
