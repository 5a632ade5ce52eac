"""Reply extraction on our own fixtures, scored by class.

    python bench/fixture_classes.py [--failures]

A fixture's class is the prefix of its name before the first underscore
(``card_outlook_en.txt`` is a ``card``: a business-card signature); fixtures
without a class prefix count as ``other``. Each fixture is read as
``tests/unit/mail/test_extract.py`` reads it (plain, HTML or a whole
message) and is exact when the reply equals ``NAME.expected.txt``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from replygate.mail.extract.reply import extract_from_parts, extract_reply
from replygate.mail.parse import parse_message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "replies"

# Class prefixes and what they hold; anything else is "other".
CLASSES = {
    "card": "business-card signatures without a delimiter",
    "sentfrom": "sent-from lines of mobile and desktop clients",
    "header": "quote headers and banners",
    "outlookhtml": "Outlook HTML replies",
    "edge": "the person's own text that looks like quote or signature",
}


def reply_of(path: Path) -> str:
    if path.suffix == ".eml":
        parsed = parse_message(path.read_bytes())
        return extract_from_parts(parsed.text_plain, parsed.text_html).reply
    return extract_reply(path.read_text("utf-8"), html=path.suffix == ".html").reply


def class_of(path: Path) -> str:
    prefix = path.name.split("_", 1)[0]
    return prefix if prefix in CLASSES else "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failures", action="store_true", help="list the misses")
    args = parser.parse_args(argv)
    scores: dict[str, list[bool]] = defaultdict(list)
    misses: list[tuple[str, str, str]] = []
    for path in sorted(FIXTURES.iterdir()):
        if path.name.endswith(".expected.txt") or path.suffix not in (".txt", ".html", ".eml"):
            continue
        want = (FIXTURES / f"{path.name.split('.')[0]}.expected.txt").read_text("utf-8")
        got = reply_of(path)
        ok = got == want.strip("\n")
        scores[class_of(path)].append(ok)
        if not ok:
            misses.append((path.name, got, want))
    for name in [*CLASSES, "other"]:
        rows = scores.get(name, [])
        if rows:
            print(f"{name:12} {sum(rows):3}/{len(rows):<3} {CLASSES.get(name, 'the rest')}")
    everything = [ok for rows in scores.values() for ok in rows]
    print(f"{'all':12} {sum(everything):3}/{len(everything):<3}")
    if args.failures:
        for name, got, want in misses:
            print(f"\n--- MISS {name}\n[got]\n{got}\n[expected]\n{want}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
