"""Mail authentication as the MX: SPF, DKIM, ARC and DMARC, checked by the gateway.

With ``mail_auth = verify`` (the default when no trusted relay is named) the
gateway checks each message before the acceptance policy reads it, with
well-kept libraries and one resolver (``dns_lookups``):

- SPF (pyspf) for the envelope sender, or ``postmaster@<HELO>`` for a bounce,
  from the connecting client's address; not checked when there is no such
  address to check (the pipe ingress without ``--client-ip``, or a client in
  ``smtp_trusted_relays``, which relays mail it received from elsewhere);
- DKIM (dkimpy): every signature, up to ``MAX_SIGNATURES``;
- ARC (dkimpy): the chain's validation;
- DMARC (authheaders, publicsuffix2 for organisational domains): alignment of
  the From domain (read as the acceptance policy reads it,
  ``sender.read_from``) with SPF or with a passing DKIM signature, and the
  domain's published policy. A DMARC failure becomes a pass only when the
  ARC chain validates, its latest seal is by a forwarder named in
  ``arc_trusted_sealers`` and that forwarder recorded DMARC passing for the
  same domain. Behind a relay, where SPF could not be checked, a failure that
  aligned SPF might have avoided is ``none`` rather than ``fail``.

The results become our Authentication-Results field (``mail.auth_results``),
stamped first on the stored mail under ``own_authserv_id``, after every field
from outside claiming that id is removed; the acceptance policy then reads
ours as it reads a trusted relay's. In every mode such claims are removed.

The checks block on DNS: the SMTP handler runs them in a thread, bounded by
``mail_auth_timeout_seconds`` (then ``AuthenticationUnavailable``, 451 4.4.3).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from typing import NamedTuple

import authheaders
import authheaders.dmarc_lookup
import dkim
import spf
from authheaders.dmarc_lookup import DMARCException
from authres import DKIMAuthenticationResult, SPFAuthenticationResult
from publicsuffix2 import PublicSuffixList

from replygate.config import Settings
from replygate.errors import AuthenticationUnavailable
from replygate.gateway.dns_lookups import DnsLookups, DnsUnavailable, spf_lookups
from replygate.gateway.throttle import parse_networks
from replygate.mail import auth_results, sender
from replygate.mail.auth_results import DkimOutcome, MailAuthentication
from replygate.mail.decisions import Authenticated
from replygate.mail.headers import header_end, read_headers

MAX_SIGNATURES = 5  # DKIM signatures verified per message: each costs a lookup and a hash
# Threads for the checks, apart from asyncio's default pool: a DNS server that is slow
# to answer must not hold up the RCPT lookups and commits that pool runs.
CHECK_THREADS = 16


class Prepared(NamedTuple):
    """The bytes to check and store, and what the gateway's own checks found (if any).

    A named tuple: made for every mail at DATA, at a third of a frozen dataclass's cost.
    """

    raw: bytes
    decision: Authenticated | None = None


class Authenticator:
    """Runs the checks of one gateway process; shares one resolver and its cache."""

    def __init__(self, settings: Settings, lookups: DnsLookups | None = None) -> None:
        self.settings = settings
        self.mode = settings.mail_auth_mode
        self.authserv_id = settings.own_authserv_id
        self.relays = parse_networks(settings.smtp_trusted_relays)
        self.sealers = settings.arc_sealers
        self.lookups = lookups or (
            DnsLookups(settings.dns_nameservers, timeout=settings.dns_timeout_seconds)
            if self.mode == "verify"
            else None
        )
        self._pool: ThreadPoolExecutor | None = None

    # -- the two ways in -------------------------------------------------------------------

    def prepare(
        self,
        raw: bytes,
        *,
        client_ip: str | None,
        helo: str | None,
        mail_from: str,
        head: bytes | None = None,
    ) -> Prepared:
        """Strip outside claims to our authserv-id and, under ``verify``, check and stamp.

        Blocking (DNS): for the pipe ingress, or a worker thread. ``head`` is
        the header block lower-cased, if read already (``headers.lowered_head``).
        """
        raw = auth_results.strip_claims(raw, self.authserv_id, head)
        if self.mode != "verify":
            return Prepared(raw)
        found = self.check(raw, client_ip=client_ip, helo=helo, mail_from=mail_from)
        return self._stamped(raw, found)

    def strip_claims(self, raw: bytes, head: bytes | None = None) -> bytes:
        """``raw`` without outside claims to our authserv-id: what ``prepare`` gives
        unless ``mail_auth`` is ``verify`` (``head`` as ``prepare`` takes it)."""
        return auth_results.strip_claims(raw, self.authserv_id, head)

    async def prepare_async(
        self,
        raw: bytes,
        *,
        client_ip: str | None,
        helo: str | None,
        mail_from: str,
        head: bytes | None = None,
    ) -> Prepared:
        """``prepare`` for the event loop: the checks in a thread, within the time budget."""
        if self.mode != "verify":
            return Prepared(auth_results.strip_claims(raw, self.authserv_id, head))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="mail-auth")
        work = functools.partial(
            self.prepare, raw, client_ip=client_ip, helo=helo, mail_from=mail_from, head=head
        )
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(self._pool, work),
                timeout=self.settings.mail_auth_timeout_seconds,
            )
        except TimeoutError as exc:
            raise AuthenticationUnavailable(
                f"SPF, DKIM and DMARC checks took over {self.settings.mail_auth_timeout_seconds} s"
            ) from exc

    def close(self) -> None:
        """Let the check threads go (those still waiting on DNS finish on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _stamped(self, raw: bytes, found: MailAuthentication) -> Prepared:
        value = found.header_value(self.authserv_id)
        decision = Authenticated(
            authserv_id=self.authserv_id,
            spf=found.spf,
            dkim=",".join(d.result for d in found.dkim) or "none",
            arc=found.arc,
            dmarc=found.dmarc,
            policy=found.dmarc_policy or None,
            header=value.replace("\r\n\t", " "),
        )
        return Prepared(auth_results.stamp(raw, value), decision)

    # -- the checks ------------------------------------------------------------------------

    def check(
        self, raw: bytes, *, client_ip: str | None, helo: str | None, mail_from: str
    ) -> MailAuthentication:
        """SPF, DKIM, ARC and DMARC for one message (blocking)."""
        assert self.lookups is not None
        helo = (helo or "").strip() or None
        relayed = client_ip is None or self._is_relay(client_ip)
        identity = mail_from or (f"postmaster@{helo}" if helo else "")
        spf_result: str
        spf_reason: str | None
        if relayed:
            spf_result, spf_reason = "none", "not checked: no client address of the sender's own"
        else:
            spf_result, spf_reason = self._spf(client_ip or "", identity, helo or "")
        # dkimpy parses the whole message for each check: not for mail with nothing to check.
        block = raw[: header_end(raw)].lower()
        signatures = self._dkim(raw) if b"dkim-signature" in block else []
        arc, arc_reason, arc_rows = self._arc(raw) if b"arc-seal" in block else ("none", None, [])
        from_domain = sender.read_from(read_headers(raw).from_values).domain
        dmarc, policy, reason = self._dmarc(from_domain, spf_result, identity, signatures)
        notes: list[str] = []
        if dmarc == "fail" and arc == "pass":
            sealer = self._vouching_sealer(arc_rows, from_domain)
            if sealer is not None:
                dmarc = "pass"
                notes.append(f"ARC: {sealer}, a trusted forwarder, saw DMARC pass")
        if dmarc == "fail" and relayed and self._spf_alignable(identity, from_domain):
            # An aligned SPF pass, had it been checkable here, would have passed DMARC.
            dmarc = "none"
            notes.append("SPF not checkable behind a relay; no aligned DKIM pass")
        return MailAuthentication(
            spf=spf_result,
            spf_reason=spf_reason,
            mail_from=identity or None,
            helo=helo,
            dkim=tuple(signatures),
            arc=arc,
            arc_reason=arc_reason,
            dmarc=dmarc,
            dmarc_policy=policy,
            dmarc_reason=reason,
            from_domain=from_domain,
            notes=tuple(notes),
        )

    def _is_relay(self, ip: str) -> bool:
        try:
            address = ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.relays)

    def _spf(self, ip: str, identity: str, helo: str) -> tuple[str, str | None]:
        assert self.lookups is not None
        if not identity:
            return "none", "no envelope sender and no HELO name"
        try:
            with spf_lookups(self.lookups):
                query = spf.query(
                    i=ip,
                    s=identity,
                    h=helo or identity.rpartition("@")[2],
                    timeout=self.lookups.timeout,
                )
                result, _code, explanation = query.check()
        except Exception as exc:  # pyspf raises on what it cannot parse: no verdict
            return "permerror", f"{type(exc).__name__}"
        return str(result), str(explanation) if explanation else None

    def _dkim(self, raw: bytes) -> list[DkimOutcome]:
        assert self.lookups is not None
        try:
            verifier = dkim.DKIM(raw, timeout=int(self.lookups.timeout) or 1)
        except Exception:
            return []
        count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
        found = []
        for idx in range(min(count, MAX_SIGNATURES)):
            result, reason = "fail", None
            try:
                result = "pass" if verifier.verify(idx, dnsfunc=self.lookups.txt) else "fail"
            except DnsUnavailable:
                result, reason = "temperror", "DNS did not answer"
            except dkim.ValidationError as exc:  # a hash that does not match: tampered
                result, reason = "fail", str(exc).split(" (")[0]
            except dkim.DKIMException as exc:
                result, reason = "permerror", type(exc).__name__
            except Exception as exc:  # a signature dkimpy cannot even read
                result, reason = "permerror", type(exc).__name__
            fields = getattr(verifier, "signature_fields", {}) or {}
            found.append(
                DkimOutcome(
                    result,
                    domain=_text(fields.get(b"d")),
                    selector=_text(fields.get(b"s")),
                    reason=reason,
                )
            )
        return found

    def _arc(self, raw: bytes) -> tuple[str, str | None, list[dict[str, object]]]:
        assert self.lookups is not None
        try:
            cv, rows, reason = dkim.ARC(raw).verify(dnsfunc=self.lookups.txt)
        except DnsUnavailable:
            return "temperror", "DNS did not answer", []
        except Exception as exc:
            return "fail", type(exc).__name__, []
        if cv is None:
            return "fail", str(reason), list(rows)
        result = cv.decode("ascii") if isinstance(cv, bytes) else str(cv)
        return result, None if result in ("pass", "none") else str(reason), list(rows)

    def _dmarc(
        self, from_domain: str | None, spf_result: str, identity: str, signatures: list[DkimOutcome]
    ) -> tuple[str, str | None, str | None]:
        """(result, the domain's policy, why) for the From domain."""
        assert self.lookups is not None
        if not from_domain:
            return "permerror", None, "From is not one mailbox"
        domain = from_domain.lower().rstrip(".")
        spf_seen = SPFAuthenticationResult(
            result=spf_result, smtp_mailfrom=identity or None, smtp_helo=None
        )
        passing = [s for s in signatures if s.result == "pass" and s.domain]
        aligned = [s for s in passing if _org(s.domain or "") == _org(domain)]
        best = aligned[0] if aligned else passing[0] if passing else None
        dkim_seen = DKIMAuthenticationResult(result="pass", header_d=best.domain) if best else None
        try:
            result, _comment, _domain, policy = authheaders.dmarc_per_from(
                domain, spf_result=spf_seen, dkim_result=dkim_seen, dnsfunc=self.lookups.dmarc_txt
            )
        except DnsUnavailable:
            return "temperror", None, "DNS did not answer"
        except DMARCException as exc:
            return "permerror", None, str(exc)
        return str(result), str(policy) if policy else None, None

    def _spf_alignable(self, identity: str, from_domain: str | None) -> bool:
        """Whether a pass for ``identity``'s domain would have aligned with From (relaxed)."""
        if not identity or not from_domain:
            return False
        return _org(identity.rpartition("@")[2]) == _org(from_domain)

    def _vouching_sealer(
        self, rows: list[dict[str, object]], from_domain: str | None
    ) -> str | None:
        """The latest sealer, when it is trusted and its ARC-Authentication-Results says
        DMARC passed for ``from_domain``."""
        if not rows or not from_domain or not self.sealers:
            return None
        latest = rows[0]  # dkimpy lists the highest instance first
        sealer = _text(latest.get("as-domain"))
        if sealer is None or sealer.lower().rstrip(".") not in self.sealers:
            return None
        aar = _text(latest.get("aar-value")) or ""
        # "i=2; lists.example.org; dmarc=pass header.from=…": the instance tag comes first.
        _, _, value = aar.partition(";")
        authserv, _ = sender.parse_authentication_result(value)
        found = sender.dmarc_result([value], {authserv}, from_domain)
        return sealer if found == "pass" else None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value) if value is not None else None


@functools.cache
def _suffixes() -> PublicSuffixList:
    """authheaders' own copy of the Public Suffix List, parsed once."""
    ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
    with importlib.resources.as_file(ref) as location, open(location, encoding="utf-8") as fh:
        return PublicSuffixList(fh)


@functools.lru_cache(maxsize=8192)
def _org(domain: str) -> str:
    """The organisational domain of ``domain`` (RFC 7489 3.2), as authheaders finds it.

    For a top-level domain the list does not name (``.test``, an internal one),
    publicsuffix2 answers the TLD itself, which made every such domain one
    organisation; the list's default rule (``*``) makes it the last two labels.
    """
    name = domain.lower().rstrip(".")
    found = str(_suffixes().get_public_suffix(name))
    if "." not in found and "." in name:
        return ".".join(name.split(".")[-2:])
    return found


# authheaders parses the whole list again on every call (tens of milliseconds, several
# times per message); both of its names for the function answer from the parsed one.
authheaders.dmarc_lookup.get_org_domain = _org
authheaders.get_org_domain = _org
