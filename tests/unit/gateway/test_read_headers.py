"""The header fast path (``headers._plain_header_fields``) gives what the email package gives."""

from __future__ import annotations

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from replygate.mail import headers as headers_module


def _by_email_package(raw: bytes) -> headers_module.Headers:
    fast = headers_module._plain_header_fields
    try:
        headers_module._plain_header_fields = lambda block: None  # type: ignore[assignment]
        return headers_module.read_headers(raw)
    finally:
        headers_module._plain_header_fields = fast  # type: ignore[assignment]


LINES = [
    b"From: Cleo <cleo@client.test>",
    b"from:cleo@client.test",
    b"FROM:  \tcleo@client.test  ",
    b"From : cleo@client.test",
    b"From cleo@client.test Mon Jan 1",
    b"Message-ID: <a@b>",
    b"Message-Id:",
    b"Content-Type: multipart/mixed;",
    b'\tboundary="x"',
    b"  folded",
    b"Subject: hi",
    b":no name",
    b"no colon here",
    b"X-8bit: caf\xc3\xa9",
    b"X-Bare: a\rb",
    b"X-Lf: a\nb",
    b"X-Ctl: a\x0bb\x1cc",
    b"Content-Type: TEXT/Plain; charset=utf-8",
    b"",
]


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.sampled_from(LINES), max_size=8),
    body=st.sampled_from([b"", b"\r\n", b"\r\nbody\r\n", b"\n\nx"]),
)
def test_fast_header_path_matches_email_package(lines: list[bytes], body: bytes) -> None:
    raw = b"\r\n".join(lines) + body
    assert headers_module.read_headers(raw) == _by_email_package(raw)


def test_plain_block_takes_the_fast_path() -> None:
    raw = b"From: Cleo <cleo@client.test>\r\nMessage-ID: <a@b>\r\nSubject: x\r\n\r\nhello\r\n"
    assert headers_module._plain_header_fields(raw[: raw.index(b"\r\n\r\n") + 4]) is not None
    headers = headers_module.read_headers(raw)
    assert headers.from_values == ("Cleo <cleo@client.test>",)
    assert headers.message_id == "<a@b>"
    assert headers.content_type == "text/plain"
