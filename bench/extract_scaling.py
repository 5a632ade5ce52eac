"""Cost of parse + extraction as hostile mail grows: time, peak memory, 1 MB / 10 KB ratio.

    python bench/extract_scaling.py [--sizes 10,100,1000] [--shape NAME ...] [--timeout 120]

Each shape is one that fuzzing the pipeline found to cost more than linear
time or memory, or to lose the reply. For every size (in KB) the mail is
built, run once through ``parse_message`` and ``extract_from_parts`` (the
worker's path) under ``tracemalloc``, and its wall time and peak traced
memory printed: the whole run, and extraction alone above the parsed mail it
starts from, both as multiples of the input. ``ratio`` is the 1 MB time over
the 10 KB time: linear cost gives about 100, and anything much above ~150 is
superlinear. ``ok`` says whether the reply's first words were filed. A shape
whose run exceeds ``--timeout`` seconds (checked after the fact) is reported
and the larger sizes skipped.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replygate.mail.extract.reply import extract_from_parts
from replygate.mail.parse import parse_message

REPLY = "Yes, Thursday at ten works for me."
HEAD = (
    "From: Ann <ann@example.org>\r\nTo: reply+t@reply.example.org\r\n"
    "Message-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n"
)


def _pad(unit: str, size: int) -> str:
    return unit * max(1, size // len(unit))


def supercite(size: int) -> bytes:
    """Quoted and unquoted lines alternating (Supercite ``AB>``), after the reply."""
    lines = _pad("AB> quoted\r\nanswer\r\n", size)
    body = f"{REPLY}\r\n\r\n{lines}"
    return (HEAD + "Subject: re\r\nContent-Type: text/plain\r\n\r\n" + body).encode()


def encoded_subject(size: int) -> bytes:
    """A Subject that is nothing but RFC 2047 encoded words."""
    subject = _pad(" =?utf-8?q?caf=C3=A9?=", size)
    return (HEAD + f"Subject:{subject}\r\nContent-Type: text/plain\r\n\r\n{REPLY}\r\n").encode()


def nested_blockquote(size: int) -> bytes:
    """HTML quoting short lines two hundred ``<blockquote>`` levels deep."""
    quote = "<blockquote>" * 200 + _pad("a<br>\r\n", size) + "</blockquote>" * 200
    html = f"<html><body><p>{REPLY}</p>{quote}</body></html>"
    return (HEAD + "Subject: re\r\nContent-Type: text/html\r\n\r\n" + html).encode()


def deep_nesting(size: int) -> bytes:
    """The reply, then an attachment nested one ``multipart/mixed`` per ~60 bytes."""
    depth = max(1, size // 60)
    parts = [f"--b0\r\nContent-Type: text/plain\r\n\r\n{REPLY}\r\n"]
    for i in range(1, depth + 1):
        parts.append(f'--b{i - 1}\r\nContent-Type: multipart/mixed; boundary="b{i}"\r\n\r\n')
    parts.append(f"--b{depth}\r\nContent-Type: text/plain\r\n\r\ndeep\r\n")
    parts.extend(f"--b{i}--\r\n" for i in range(depth, -1, -1))
    return (
        HEAD
        + 'Subject: re\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n'
        + "".join(parts)
    ).encode()


def nested_rfc822(size: int) -> bytes:
    """The reply, then a forwarded message inside a message, one level per ~40 bytes."""
    depth = max(1, size // 40)
    inner = "Content-Type: message/rfc822\r\n\r\n" * depth + "Subject: x\r\n\r\nx\r\n"
    return (
        HEAD + 'Subject: re\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        f"--b\r\nContent-Type: text/plain\r\n\r\n{REPLY}\r\n--b\r\n{inner}--b--\r\n"
    ).encode()


def nontext_charset(size: int) -> bytes:
    """A body labelled ``rot13`` (a codec, not a charset) holding non-ASCII bytes."""
    body = REPLY + "\r\n" + _pad("caf\xe9 cr\xe8me\r\n", size)
    return (
        HEAD + "Subject: =?rot13?q?caf=E9?=\r\nContent-Type: text/plain; charset=rot13\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + body.encode("latin-1")


def base64_sloppy(size: int) -> bytes:
    """Base64 declared with a trailing space, one character past a group of four."""
    text = REPLY + "\n" + _pad("more of the same answer\n", size)
    coded = base64.encodebytes(text.encode()).decode().replace("\n", "\r\n")
    return (
        HEAD + "Subject: re\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64 \r\n\r\n" + coded.rstrip() + "Q\r\n"
    ).encode()


def utf16_no_bom(size: int) -> bytes:
    """A UTF-16LE plain part, no byte-order mark, beside an HTML part in UTF-16LE too."""
    text = REPLY + "\r\n" + _pad("and a second line of it\r\n", size // 2)
    return (
        HEAD + 'Subject: re\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-16\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(text.encode("utf-16-le")).decode().replace("\n", "\r\n")
        + "--b--\r\n"
    ).encode()


SHAPES: dict[str, Callable[[int], bytes]] = {
    "supercite": supercite,
    "encoded_subject": encoded_subject,
    "nested_blockquote": nested_blockquote,
    "deep_nesting": deep_nesting,
    "nested_rfc822": nested_rfc822,
    "nontext_charset": nontext_charset,
    "base64_sloppy": base64_sloppy,
    "utf16_no_bom": utf16_no_bom,
}


def run(raw: bytes) -> tuple[float, float, float, bool]:
    """Seconds, peak traced MB of the whole, peak MB of extraction alone (above the
    parsed mail it starts from), and whether the reply was filed."""
    tracemalloc.start()
    started = time.perf_counter()
    parsed = parse_message(raw)
    peak = tracemalloc.get_traced_memory()[1]
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    parts = extract_from_parts(parsed.text_plain, parsed.text_html)
    elapsed = time.perf_counter() - started
    extract_peak = tracemalloc.get_traced_memory()[1] - held
    tracemalloc.stop()
    return (
        elapsed,
        max(peak, held + extract_peak) / 1e6,
        extract_peak / 1e6,
        parts.reply.startswith(REPLY[:20]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="sizes in KB, comma-separated")
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES), help="default: all")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'shape':<18} {'KB':>5} {'s':>8} {'peak MB':>8} {'x input':>7} {'extract x':>9}  ok")
    for name in args.shape or list(SHAPES):
        times: dict[int, float] = {}
        run(SHAPES[name](min(sizes) * 1000))  # warm up: imports, compiled patterns
        for kb in sizes:
            raw = SHAPES[name](kb * 1000)
            elapsed, peak, extract_peak, ok = run(raw)
            times[kb] = elapsed
            print(
                f"{name:<18} {kb:>5} {elapsed:>8.3f} {peak:>8.1f} "
                f"{peak * 1e6 / len(raw):>7.1f} {extract_peak * 1e6 / len(raw):>9.1f}  "
                f"{'yes' if ok else 'NO'}",
                flush=True,
            )
            if elapsed > args.timeout:
                print(f"{name:<18} stopped: over {args.timeout:.0f} s")
                break
        if min(sizes) in times and max(sizes) in times:
            ratio = times[max(sizes)] / max(times[min(sizes)], 1e-6)
            print(f"{name:<18} ratio {max(sizes)} KB / {min(sizes)} KB: {ratio:.0f}x")


if __name__ == "__main__":
    main()
