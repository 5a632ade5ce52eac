"""Is the reply from the person its reply address was issued to?

Pure. The one reader of the From header is here (``read_from``), and two
questions, answered separately because they fail differently:

- ``same_sender``: does the From address name the token's recipient? Proper
  address parsing, so a display name that *looks* like the right address
  (``"client@example.org" <attacker@example.net>``) never passes.
- ``dmarc_failed``: did an MTA we trust (by its RFC 8601 ``authserv-id``)
  find that the From domain failed DMARC? Results stamped by anyone else are
  ignored: any sender can write an ``Authentication-Results`` header.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from email import errors, policy
from email.headerregistry import Address

# One header_factory per process: building it is the slow part of headerregistry.
_HEADER_FACTORY = policy.default.header_factory
# Defects of an encoded word's charset (unknown, or a codec such as rot13): they are
# about how the display name decodes, never about which address the header names.
_NAME_DEFECTS = (errors.CharsetError, errors.UndecodableBytesDefect)
# No mailbox a person writes is longer; the header parser's time grows with the
# square of a value's encoded words (a 224 KB From: 16 s), so longer ones are not parsed.
MAX_FROM_LENGTH = 4096


@functools.lru_cache(maxsize=4096)
def _addr_spec(value: str) -> tuple[str, str] | None:
    """(local part, domain) of the single mailbox in ``value``, or ``None``.

    Remembered: the header parser costs far more than the rest of a sender
    check, and a burst of replies repeats the same few addresses.

    ``value`` may be a bare address or a whole From header value with display
    name, comments and RFC 2047 words. Groups, several mailboxes, anything
    the parser had to repair (a defect: obsolete route syntax, text after the
    address) and anything without both a local part and a domain give
    ``None``: an ambiguous From never matches. The defects of an encoded
    word's charset are the exception: they concern the display name only.
    A value longer than ``MAX_FROM_LENGTH`` is no mailbox either.
    """
    text = (value or "").strip()
    if not text or len(text) > MAX_FROM_LENGTH or "\r" in text or "\n" in text:
        return None
    try:
        header = _HEADER_FACTORY("from", text)
        addresses: tuple[Address, ...] = header.addresses
        grouped = any(group.display_name is not None for group in header.groups)
    except Exception:
        return None
    if grouped or any(not isinstance(d, _NAME_DEFECTS) for d in header.defects):
        # Defects are where parsers part ways: "<a@x>@y", "a@x <b@y>" and route
        # syntax each read as a@x here and as something else elsewhere.
        return None
    if len(addresses) != 1:
        return None
    local, domain = addresses[0].username, addresses[0].domain
    if not local or not domain:
        return None
    return local, domain


@dataclass(frozen=True)
class FromHeader:
    """What the From header names: one mailbox (``address``, ``domain``), or ``problem``."""

    value: str | None
    address: str | None = None
    domain: str | None = None
    problem: str | None = None


def read_from(from_values: Sequence[str]) -> FromHeader:
    """The single mailbox of a message's From header fields, strictly.

    Remembered per tuple of values (``_read_from``): every reply is read at
    DATA and again by the worker, and a burst repeats senders.

    Rules:
    - exactly one From field (none, or several, is a problem);
    - its value parses to exactly one mailbox with a local part and a domain
      (``_addr_spec``): groups, lists and bare words are a problem.
    Raw values are expected (encoded words still encoded), so a display name
    that decodes to something address-like is never read as an address.
    """
    return _read_from(tuple(from_values))


@functools.lru_cache(maxsize=4096)
def _read_from(from_values: tuple[str, ...]) -> FromHeader:
    if len(from_values) != 1:
        found = "no From header" if not from_values else "several From headers"
        return FromHeader(None, problem=f"the message has {found}")
    value = from_values[0]
    spec = _addr_spec(value)
    if spec is None:
        return FromHeader(value, problem=f"From {value!r} is not one mailbox")
    local, domain = spec
    return FromHeader(value, address=f"{local}@{domain}", domain=domain)


def _domain_key(domain: str) -> str:
    """Domains compare case-insensitively, as IDNA A-labels, without a trailing dot."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _local_key(local: str, *, strip_tag: bool) -> str:
    """Local parts compare case-insensitively (RFC 5321 allows otherwise; no provider does)."""
    if strip_tag and "+" in local:
        local = local.split("+", 1)[0]
    return local.casefold()


@functools.lru_cache(maxsize=4096)
def same_sender(
    from_header_or_address: str, issued_to: str, *, allow_plus_tags: bool = False
) -> bool:
    """True when ``from_header_or_address`` names exactly the mailbox ``issued_to``.

    Remembered, as ``read_from`` is: the IDNA step of comparing domains is not cheap.

    Rules:
    - both sides parse to exactly one mailbox with a local part and a domain;
    - domains equal case-insensitively (and in IDNA form);
    - local parts equal case-insensitively;
    - a ``+tag`` is ignored on both sides only when ``allow_plus_tags`` is set.
    Never raises: what cannot be parsed does not match.
    """
    ours = _addr_spec(issued_to)
    theirs = _addr_spec(from_header_or_address)
    if ours is None or theirs is None:
        return False
    if _domain_key(ours[1]) != _domain_key(theirs[1]):
        return False
    return _local_key(ours[0], strip_tag=allow_plus_tags) == _local_key(
        theirs[0], strip_tag=allow_plus_tags
    )


# -- RFC 8601 Authentication-Results -----------------------------------------------------------

# A word of a result: bare characters and quoted strings, e.g. header.s="sel;1".
_TOKEN = re.compile(r'(?:[^\s"]|"(?:\\.|[^"\\])*")+')


def _strip_comments(value: str) -> str:
    """Remove (possibly nested) CFWS comments, leaving quoted strings alone."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            if ch == '"':
                quoted = False
            out.append(ch)
            continue
        if ch == '"' and depth == 0:
            quoted = True
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _split_semicolons(value: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_authentication_result(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """One header: (authserv-id, [(method, result, {ptype.property: value})]).

    ``mx.example.com 1; spf=pass smtp.mailfrom=a.example; dmarc=fail header.from=a.example``
    gives ``("mx.example.com", [("spf", "pass", {...}), ("dmarc", "fail", {...})])``.
    Methods and results are lower-cased; a method's ``/version`` is dropped;
    ``none`` (no checks made) gives an empty list.
    """
    pieces = _split_semicolons(_strip_comments(value or ""))
    head = pieces[0].split()
    authserv_id = head[0].lower() if head else ""
    results: list[tuple[str, str, dict[str, str]]] = []
    for piece in pieces[1:]:
        tokens = _TOKEN.findall(piece.strip())
        if not tokens or tokens[0].lower() == "none":
            continue
        method, sep, result = tokens[0].partition("=")
        if not sep:
            continue
        method = method.split("/", 1)[0].strip().lower()
        props: dict[str, str] = {}
        for token in tokens[1:]:
            key, sep, val = token.partition("=")
            if sep:
                props[key.strip().lower()] = _unquote(val.strip())
        results.append((method, _unquote(result.strip()).lower(), props))
    return authserv_id, results


_Results = list[tuple[str, str, dict[str, str]]]


def _trusted(values: list[str], trusted_authserv_ids: AbstractSet[str]) -> Iterator[_Results]:
    """The parsed results of each header stamped by a trusted authserv-id, top first."""
    trusted = {t.strip().lower() for t in trusted_authserv_ids if t and t.strip()}
    for value in values:
        authserv_id, results = parse_authentication_result(value)
        if authserv_id and authserv_id in trusted:
            yield results


def parse_authentication_results(
    values: list[str], trusted_authserv_ids: set[str]
) -> dict[str, str]:
    """What trusted ``Authentication-Results`` headers say, flattened.

    Rules:
    - only headers whose authserv-id is in ``trusted_authserv_ids``
      (case-insensitive) count; the others are forged or foreign;
    - headers are read top first (the nearest MTA), and the first word on a
      key wins;
    - each method gives ``method -> result`` (``"dmarc": "fail"``), each
      property ``ptype.property -> value`` (``"header.from": "example.com"``),
      and the same property qualified by its method (``"dmarc.header.from"``),
      since DKIM and DMARC both speak of ``header.*``.
    """
    merged: dict[str, str] = {}
    for results in _trusted(values, trusted_authserv_ids):
        for method, result, props in results:
            merged.setdefault(method, result)
            for key, val in props.items():
                merged.setdefault(key, val)
                merged.setdefault(f"{method}.{key}", val)
    return merged


def dmarc_result(
    values: list[str], trusted_authserv_ids: AbstractSet[str], from_domain: str | None
) -> str | None:
    """What trusted ``Authentication-Results`` say of DMARC for the From domain.

    Rules:
    - only trusted headers (as in ``parse_authentication_results``), top first;
    - a result counts only when its ``header.from`` is ``from_domain``
      (case-insensitive, IDNA): a pass for another domain says nothing of
      this mail; a ``fail`` that names no domain, or when the From domain is
      unknown, still counts as a failure;
    - any counted ``fail`` gives ``"fail"`` (whatever the policy, ``p=none``
      too), else a counted ``pass`` gives ``"pass"``, else ``None``.
    """
    wanted = _domain_key(from_domain) if from_domain else None
    passed = False
    for results in _trusted(values, trusted_authserv_ids):
        for method, result, props in results:
            if method != "dmarc":
                continue
            named = props.get("header.from")
            same = wanted is not None and named is not None and _domain_key(named) == wanted
            if result == "fail" and (same or not named or wanted is None):
                return "fail"
            if result == "pass" and same:
                passed = True
    return "pass" if passed else None


def dmarc_failed(
    values: list[str], trusted_authserv_ids: AbstractSet[str], from_domain: str | None = None
) -> bool:
    """True when a trusted ``Authentication-Results`` says DMARC failed for the From domain.

    Rules:
    - only trusted headers (as in ``parse_authentication_results``);
    - any ``dmarc=fail`` result counts, whatever the policy (``p=none`` too:
      we would rather refuse a reply than file a forgery);
    - when ``from_domain`` is given and the result names ``header.from``, the
      two must be the same domain (case-insensitive) for it to count.
    """
    return dmarc_result(values, trusted_authserv_ids, from_domain) == "fail"
