"""Reply-extraction accuracy on the shared corpus, ours beside the libraries.

    python bench/reply_accuracy.py --corpus ../shared/corpus/reply [--failures]

Reads ``manifest.json`` from the corpus directory (never copied into the
repository) and scores each case with the manifest's ``match`` rule. What is
compared follows the case's ``expected_represents``: ``unquoted`` (quote gone,
signature kept) for ``reply_without_quote``, ``reply`` otherwise. Prints exact
matches and mean line-F1 per source and per language for replygate, talon,
talon followed by its brute-force signature pass, and email-reply-parser, then
replygate's extraction time per case and its throughput.

The libraries compared come with ``pip install -e '.[bench]'`` and talon with
``pip install --no-deps -r requirements/talon.txt`` (``make install`` does
both); replygate itself needs neither. A library that is missing is skipped.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import importlib.util
import json
import os
import statistics
import sys
import time
import types
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from replygate.mail.extract import reply as ours
from replygate.mail.parse import parse_message

# A variant maps (input text or bytes, input kind) to (reply, unquoted).
Variant = Callable[[bytes, str], tuple[str, str]]


def _normalise(text: str) -> list[str]:
    """The manifest's ``exact`` rule: LF, NFC, no trailing blanks, no outer blank lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _squash(text: str) -> str:
    return "".join(unicodedata.normalize("NFC", text).split())


def matches(got: str, expected: str, rule: str) -> bool:
    if rule == "ignore_whitespace":
        return _squash(got) == _squash(expected)
    return _normalise(got) == _normalise(expected)


def line_f1(got: str, expected: str, rule: str) -> float:
    """F1 over the multiset of non-blank lines (whitespace-free under ``ignore_whitespace``)."""

    def bag(text: str) -> Counter[str]:
        lines = _normalise(text)
        if rule == "ignore_whitespace":
            lines = [_squash(line) for line in lines]
        return Counter(line for line in lines if line.strip())

    g, e = bag(got), bag(expected)
    if not g and not e:
        return 1.0
    common = sum((g & e).values())
    if not common:
        return 0.0
    precision, recall = common / sum(g.values()), common / sum(e.values())
    return 2 * precision * recall / (precision + recall)


def _plain_of(raw: bytes) -> tuple[str, bool]:
    """The text/plain part of a message (HTML when none), as the libraries are fed."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return "", False
    try:
        content = part.get_content()
    except (LookupError, ValueError):
        content = part.get_payload(decode=True).decode("utf-8", "replace")
    return content, part.get_content_subtype() == "html"


def _text(raw: bytes, kind: str) -> tuple[str, bool]:
    if kind == "eml":
        return _plain_of(raw)
    return raw.decode("utf-8", "replace"), kind == "html"


def run_ours(raw: bytes, kind: str) -> tuple[str, str]:
    if kind == "eml":
        # The engine's own path: the production parser, then the better rendering.
        parsed = parse_message(raw)
        parts = ours.extract_from_parts(parsed.text_plain, parsed.text_html)
    else:
        parts = ours.extract_reply(raw.decode("utf-8", "replace"), html=kind == "html")
    return parts.reply, parts.unquoted


def _talon(raw: bytes, kind: str) -> str:
    from talon import quotations

    text, is_html = _text(raw, kind)
    try:
        out = quotations.extract_from_html(text) if is_html else quotations.extract_from_plain(text)
    except Exception:  # a library failing on a case scores as an empty answer
        return ""
    return ours.html_to_text(out) if is_html else out


def run_talon(raw: bytes, kind: str) -> tuple[str, str]:
    out = _talon(raw, kind)
    return out, out


def _talon_bruteforce(text: str) -> str:
    """talon's brute-force signature split, without its ML classifier.

    ``talon.signature/__init__`` imports scikit-learn, which talon installed
    with ``--no-deps`` lacks; registering the package as a bare namespace lets
    ``bruteforce`` load.
    """
    import talon

    if "talon.signature" not in sys.modules:
        stub = types.ModuleType("talon.signature")
        stub.__path__ = [os.path.join(os.path.dirname(talon.__file__), "signature")]
        sys.modules["talon.signature"] = stub
    from talon.signature import bruteforce

    return bruteforce.extract_signature(text)[0]


def run_talon_bruteforce(raw: bytes, kind: str) -> tuple[str, str]:
    out = _talon(raw, kind)
    return _talon_bruteforce(out), out


def run_email_reply_parser(raw: bytes, kind: str) -> tuple[str, str]:
    from email_reply_parser import EmailReplyParser

    text, is_html = _text(raw, kind)
    if is_html:
        text = ours.html_to_text(text)
    out = EmailReplyParser.parse_reply(text)
    return out, out


VARIANTS: dict[str, Variant] = {
    "replygate": run_ours,
    "talon": run_talon,
    "talon+bruteforce": run_talon_bruteforce,
    "email-reply-parser": run_email_reply_parser,
}

# The library each variant needs, besides replygate.
NEEDS = {
    "talon": "talon",
    "talon+bruteforce": "talon",
    "email-reply-parser": "email_reply_parser",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--failures", action="store_true", help="list replygate's misses")
    args = parser.parse_args(argv)
    # html5lib (inside talon) warns on Outlook's namespaced tags; noise for a report.
    warnings.filterwarnings("ignore", module="html5lib")
    manifest = json.loads((args.corpus / "manifest.json").read_text("utf-8"))
    cases = manifest["cases"]
    inputs = {c["id"]: (args.corpus / c["input_path"]).read_bytes() for c in cases}
    expected = {c["id"]: (args.corpus / c["expected_path"]).read_text("utf-8") for c in cases}

    timings: list[float] = []
    misses: list[tuple[str, str, str]] = []
    for name, variant in VARIANTS.items():
        if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
            print(f"== {name}: skipped, {NEEDS[name]} is not installed")
            continue
        by_source: dict[str, list[tuple[bool, float]]] = defaultdict(list)
        by_lang: dict[str, list[tuple[bool, float]]] = defaultdict(list)
        for case in cases:
            start = time.perf_counter()
            reply, unquoted = variant(inputs[case["id"]], case["input_kind"])
            if name == "replygate":
                timings.append(time.perf_counter() - start)
            got = unquoted if case["expected_represents"] == "reply_without_quote" else reply
            ok = matches(got, expected[case["id"]], case["match"])
            f1 = line_f1(got, expected[case["id"]], case["match"])
            by_source[case["source"]].append((ok, f1))
            by_lang[case["language"]].append((ok, f1))
            if name == "replygate" and not ok:
                misses.append((case["id"], got, expected[case["id"]]))
        everything = [r for rows in by_source.values() for r in rows]
        print(f"== {name}: {_figures(everything)}")
        for title, groups in (("source", by_source), ("language", by_lang)):
            cells = ", ".join(f"{key} {_figures(rows)}" for key, rows in sorted(groups.items()))
            print(f"   per {title}: {cells}")

    ordered = sorted(timings)
    print(
        f"== replygate time per case: median {statistics.median(ordered) * 1000:.2f} ms, "
        f"worst {ordered[-1] * 1000:.2f} ms, {len(ordered) / sum(ordered):.0f} messages/s"
    )
    if args.failures:
        for case_id, got, want in misses:
            print(f"\n--- MISS {case_id}\n[got]\n{got}\n[expected]\n{want}")
    return 0


def _figures(rows: list[tuple[bool, float]]) -> str:
    exact = sum(ok for ok, _ in rows)
    f1 = sum(f for _, f in rows) / len(rows)
    return f"{exact}/{len(rows)} exact ({100 * exact / len(rows):.0f}%), line-F1 {f1:.3f}"


if __name__ == "__main__":
    sys.exit(main())
