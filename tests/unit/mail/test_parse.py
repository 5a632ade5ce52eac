"""parse_message: what each mail client's wire form becomes, and that nothing makes it raise."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replygate.mail.decoding import decode_text
from replygate.mail.parse import ParsedMail, parse_message

MIME = Path(__file__).resolve().parents[3] / "fixtures" / "mime"


def load(name: str, *, crlf: bool = False) -> ParsedMail:
    raw = (MIME / name).read_bytes()
    if crlf:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return parse_message(raw)


@pytest.fixture(params=[False, True], ids=["lf", "crlf"])
def crlf(request: pytest.FixtureRequest) -> bool:
    """Every fixture is read as stored (LF, as in a Maildir) and as on the SMTP wire (CRLF)."""
    return request.param


def test_qp_latin1_thunderbird(crlf: bool) -> None:
    """ISO-8859-1 quoted-printable with a windows-1252 apostrophe decodes without C1 junk."""
    mail = load("qp_latin1.eml", crlf=crlf)
    assert mail.subject == "Re: Votre rendez-vous de février"
    assert mail.from_address == "francois.dupont@example.fr"
    assert mail.from_name == "François Dupont"
    assert mail.text_plain is not None
    assert "Merci pour votre réponse, c’est très clair." in mail.text_plain
    assert "\x92" not in mail.text_plain and "\r" not in mail.text_plain
    assert mail.in_reply_to == "<rg.n.Q3bX9kz1@reply.example.com>"
    assert mail.references == ("<rg.n.Q3bX9kz1@reply.example.com>",)
    assert mail.defects == ()


def test_base64_utf8_iphone(crlf: bool) -> None:
    """Base64 UTF-8 body and B-encoded headers, emoji included."""
    mail = load("base64_utf8.eml", crlf=crlf)
    assert mail.from_name == "Jürgen Müller"
    assert mail.subject == "Re: Ihr Termin am Montag"
    assert mail.text_plain == (
        "Danke für die Nachricht! \U0001f44d\n\nIch komme am Montag um 9 Uhr.\n\n"
        "Viele Grüße\nJürgen\n\nVon meinem iPhone gesendet\n"
    )
    assert mail.message_id == "<5E1C8B4D-2F7A-4C39-9D0E-6B3A1F2E7C90@example.de>"
    assert mail.text_html is None


def test_windows1252_undeclared(crlf: bool) -> None:
    """Undeclared 8-bit windows-1252: dashes, curly quotes, euro and ellipsis survive."""
    mail = load("windows1252_undeclared.eml", crlf=crlf)
    assert mail.text_plain == (
        "Thanks — that’s fine. I’ll pay the €120 by Friday.\n“See you soon,” as they say…\n\nJane\n"
    )
    assert "\ufffd" not in mail.text_plain


def test_utf8_undeclared_body_and_raw_headers(crlf: bool) -> None:
    """Undeclared UTF-8 in body, Subject and display name is read as UTF-8."""
    mail = load("utf8_undeclared.eml", crlf=crlf)
    assert mail.subject == "Re: Cita del jueves – confirmación"
    assert mail.from_name == "Inés García"
    assert mail.from_address == "ines.garcia@example.es"
    assert mail.text_plain == "Sí, confirmo la cita del jueves. ¡Muchas gracias!\n\n— Inés\n"


def test_latin1_label_on_utf8_bytes(crlf: bool) -> None:
    """A body labelled iso-8859-1 whose bytes are UTF-8 reads as UTF-8, and says so."""
    mail = load("latin1_label_utf8_bytes.eml", crlf=crlf)
    assert mail.text_plain == "Dziękuję, będę o 14:00. Zażółć gęślą jaźń.\n"
    assert any("bytes are UTF-8" in d for d in mail.defects)


def test_html_only_outlook(crlf: bool) -> None:
    """Outlook's HTML-only reply: no text part, the HTML decoded from windows-1252 QP."""
    mail = load("html_only_outlook.eml", crlf=crlf)
    assert mail.content_type == "text/html"
    assert mail.text_plain is None
    assert mail.text_html is not None
    assert "I don’t think Tuesday works – could we do Wednesday instead?" in mail.text_html
    assert mail.subject == "RE: Your appointment"


def test_multipart_alternative_gmail(crlf: bool) -> None:
    """Gmail sends both forms; each is decoded from QP UTF-8, soft breaks joined."""
    mail = load("multipart_alternative_gmail.eml", crlf=crlf)
    assert mail.content_type == "multipart/alternative"
    assert mail.text_plain is not None and mail.text_html is not None
    assert mail.text_plain.startswith("Yes, Thursday at 2pm works for me. I'll bring the forms.\n")
    assert "9:30\u202fAM" in mail.text_plain
    assert '<div class="gmail_quote">' in mail.text_html
    assert mail.attachments == ()


def test_attachment_pdf_gmail(crlf: bool) -> None:
    """A PDF attachment keeps its name, type, size and exact bytes; it is not inline."""
    mail = load("attachment_pdf.eml", crlf=crlf)
    assert mail.text_plain == "Here is the signed form.\n\nMaria\n"
    (pdf,) = mail.attachments
    assert pdf.filename == "Intake form (signed).pdf"
    assert pdf.content_type == "application/pdf"
    assert pdf.payload.startswith(b"%PDF-1.4\n") and pdf.payload.endswith(b"%%EOF\n")
    assert pdf.size == len(pdf.payload) == 303
    assert pdf.content_id == "<f_ltxa9k2m0>"
    assert pdf.inline is False  # Gmail gives attachments a Content-ID the HTML never uses


def test_attachment_names_rfc2231_and_rfc2047(crlf: bool) -> None:
    """Thunderbird's RFC 2231 filename and Outlook's RFC 2047 one both decode."""
    mail = load("attachment_rfc2231_name.eml", crlf=crlf)
    names = [a.filename for a in mail.attachments]
    assert names == ["Résumé médical.pdf", "Ordonnance.pdf"]
    assert mail.text_plain == "Voici les deux documents.\n"


def test_inline_signature_logo_outlook(crlf: bool) -> None:
    """The logo the HTML shows by cid: is marked inline, so it is not filed as an attachment."""
    mail = load("inline_signature_logo.eml", crlf=crlf)
    assert mail.content_type == "multipart/related"
    (logo,) = mail.attachments
    assert logo.filename == "image001.png"
    assert logo.content_type == "image/png"
    assert logo.content_id == "<image001.png@01DA79A1.3F5C2E10>"
    assert logo.inline is True
    assert logo.payload.startswith(b"\x89PNG\r\n\x1a\n")
    assert logo.size == 75


def test_forwarded_message_is_an_attachment_not_body(crlf: bool) -> None:
    """An attached message's text never leaks into the reply's body."""
    mail = load("forwarded_rfc822.eml", crlf=crlf)
    assert mail.text_plain == "See the letter below, is this relevant?\n"
    (fwd,) = mail.attachments
    assert fwd.content_type == "message/rfc822"
    assert fwd.filename == "Your council tax bill.eml"
    assert b"This text is not part of the reply." in fwd.payload


def test_malformed_headers_are_defects_not_errors(crlf: bool) -> None:
    """Broken From, Date, Message-ID and header block: recorded, and no exception."""
    mail = load("malformed_headers.eml", crlf=crlf)
    assert mail.from_address == ""
    assert "From holds no readable address" in mail.defects
    assert mail.message_id == "<no-brackets-here@example.com>"
    assert any(d.startswith("Message-ID without angle brackets") for d in mail.defects)
    assert any("MissingHeaderBodySeparatorDefect" in d for d in mail.defects)
    assert mail.text_plain is not None  # what followed the broken header block is kept as text


def test_every_mime_fixture_parses_without_raising() -> None:
    for path in sorted(MIME.glob("*.eml")):
        assert isinstance(parse_message(path.read_bytes()), ParsedMail), path.name


def test_multipart_report_keeps_delivery_status_and_returned_headers() -> None:
    raw = (Path(MIME.parent) / "classify" / "dsn_postfix.eml").read_bytes()
    mail = parse_message(raw)
    assert mail.content_type == "multipart/report"
    assert mail.report_type == "delivery-status"
    (status,) = mail.report_parts
    assert "Final-Recipient: rfc822; client@example.org" in status
    assert "Status: 5.1.1" in status
    assert mail.returned_headers is not None
    assert "Message-ID: <rg.n.Vb7Kq2xP@reply.example.com>" in mail.returned_headers
    # the returned notification is neither body nor attachment
    assert mail.attachments == ()
    assert "##- Please type" not in (mail.text_plain or "")


def test_multiple_from_mailboxes_use_the_first_and_say_so() -> None:
    mail = parse_message(b'From: "bob@x.example" <Evil@Y.example>, o@p.example\n\nhi\n')
    assert mail.from_address == "evil@y.example"
    assert mail.from_name == "bob@x.example"
    assert "From names 2 mailboxes; the first is used" in mail.defects


def test_headers_keep_order_lowercase_names_and_decoded_values() -> None:
    raw = (
        b"Subject: =?utf-8?q?caf=C3=A9?=\n X continued\nX-A: 1\nx-a: 2\n"
        b"References: <a@b>\n <c@d>\n\nbody\n"
    )
    mail = parse_message(raw)
    assert mail.headers[0] == ("subject", "café X continued")
    assert mail.header_all("X-A") == ["1", "2"]
    assert mail.references == ("<a@b>", "<c@d>")


@pytest.mark.parametrize(
    ("data", "label", "expected"),
    [
        (b"plain ascii", "iso-2022-jp", "plain ascii"),
        ("caf\u00e9 \u201cok\u201d".encode("cp1252"), "iso-8859-1", "café “ok”"),
        ("caf\u00e9".encode(), "iso-8859-1", "café"),
        ("caf\u00e9 \u20ac".encode("cp1252"), None, "café €"),
        ("caf\u00e9".encode("latin-1"), "utf-8", "café"),
        ("caf\u00e9".encode("latin-1"), "x-no-such-charset", "café"),
        ("\uc548\ub155".encode("cp949"), "ks_c_5601-1987", "안녕"),
        (b"\x81\x8d", None, "\x81\x8d"),
    ],
)
def test_decode_text(data: bytes, label: str | None, expected: str) -> None:
    assert decode_text(data, label)[0] == expected


def test_undeclared_cyrillic_is_detected() -> None:
    text = "Здравствуйте! Спасибо за ваше сообщение, я приду в четверг утром."
    decoded, note = decode_text(text.encode("cp1251"), None)
    assert decoded == text
    assert note is not None and "detected" in note


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    mail = parse_message(raw)
    assert isinstance(mail, ParsedMail)
    for text in (mail.text_plain, mail.text_html, mail.subject, mail.from_name):
        if text is not None:
            text.encode("utf-8")  # real text, no lone surrogates


_HEADER_LINES = st.sampled_from(
    [
        b"From: A <a@example.org>",
        b'From: "unclosed <x@y',
        b"Subject: =?utf-8?b?////?=",
        b"Subject: =?x-bogus?q?a?=",
        b"Content-Type: multipart/mixed; boundary=b",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b",
        b"Content-Type: text/plain; charset=utf-7",
        b"Content-Type: text/plain; charset=\xff\xfe",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Content-Disposition: attachment; filename*=x''%ff%fe",
        b"Message-ID: <<>>",
        b"\xc3\x28: bad name",
        b"--b",
        b"--b--",
        b"Content-Type: message/rfc822",
        b"Content-Type: message/delivery-status",
        b"",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_HEADER_LINES, st.binary(max_size=40)), max_size=40))
def test_parse_never_raises_on_mime_shaped_garbage(lines: list[bytes]) -> None:
    """Closer to real abuse than random bytes: MIME keywords in random order."""
    assert isinstance(parse_message(b"\r\n".join(lines)), ParsedMail)


def test_deeply_nested_multipart_does_not_raise() -> None:
    depth = 3000
    raw = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    mail = parse_message(b"Subject: nested\r\n" + raw + b"Content-Type: text/plain\r\n\r\nx\r\n")
    assert mail.subject == "nested"
    assert mail.defects


def _two_hundred_kb_message() -> bytes:
    text = ("Merci pour votre réponse, à jeudi. " * 30 + "\n") * 40
    html = "<p>Merci pour votre r&eacute;ponse, &agrave; jeudi.</p>\n" * 700
    pdf = os.urandom(90_000)
    return (
        b"From: =?utf-8?q?Ren=C3=A9e?= <renee@example.org>\r\nTo: reply+abc@reply.example.com\r\n"
        b"Subject: Re: test\r\nMessage-ID: <x@example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
        b'Content-Type: multipart/alternative; boundary="a"\r\n\r\n--a\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + text.encode()
        + b"\r\n--a\r\nContent-Type: text/html; charset=utf-8\r\n"
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(html.encode())
        + b"--a--\r\n--m\r\nContent-Type: application/pdf\r\n"
        + b"Content-Disposition: attachment; filename=a.pdf\r\n"
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(pdf)
        + b"--m--\r\n"
    )


def test_parse_is_fast_on_a_200_kb_message() -> None:
    """A guard against accidental quadratic work, generous enough for a slow CI machine."""
    raw = _two_hundred_kb_message()
    assert 180_000 < len(raw) < 240_000
    parse_message(raw)
    runs = 10
    started = time.perf_counter()
    for _ in range(runs):
        mail = parse_message(raw)
    per_message = (time.perf_counter() - started) / runs
    assert mail.attachments[0].size == 90_000
    assert per_message < 0.25, f"{per_message * 1000:.1f} ms per 200 KB message"


@pytest.mark.parametrize(
    "path",
    sorted((MIME.parent).rglob("*.eml")),
    ids=lambda p: str(p.relative_to(MIME.parent)),
)
def test_the_lean_reader_reads_as_the_whole_of_mail_parser(
    path: Path, crlf: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipping mail-parser's body decoding and summary dicts changes no reading:
    every fixture parses to the same record as with mail-parser's whole work."""
    import mailparser

    from replygate.mail import parse

    raw = path.read_bytes()
    if crlf:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    lean = parse_message(raw)
    monkeypatch.setattr(parse, "_READER", mailparser.MailParser)
    assert lean == parse_message(raw)
