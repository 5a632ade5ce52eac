"""The attachment rules one by one: files are what their type and name say, or refused.

Files are given as the parser hands them over (``Attachment`` records, or a
whole message through ``parse_message`` where a forwarded message is the
point), with real bytes from ``tests.sample_files``.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

import pytest

from replygate.errors import (
    AttachmentContentMismatch,
    AttachmentNameRefused,
    AttachmentTooLarge,
    AttachmentTypeRefused,
    TooManyAttachments,
)
from replygate.mail import policy
from replygate.mail.attachments import MAX_FORWARD_DEPTH, extension, files_to_keep
from replygate.mail.mime_walk import only_body
from replygate.mail.parse import Attachment, parse_message
from tests import sample_files

DEFAULT_TYPES = (
    "application/pdf",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/heic",
    "text/plain",
    "text/csv",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.*",
    "application/vnd.oasis.opendocument.*",
    "application/rtf",
    "message/rfc822",
)
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PE = sample_files.pe_executable()


def file(name: str, ctype: str, payload: bytes, *, inline: bool = False) -> Attachment:
    return Attachment(name, ctype, len(payload), payload, inline=inline)


def keep(*files: Attachment, allowed: tuple[str, ...] = DEFAULT_TYPES, **limits: int) -> list[str]:
    kept = files_to_keep(
        files,
        max_file=limits.get("max_file", 10_000_000),
        max_total=limits.get("max_total", 20_000_000),
        allowed=allowed,
        max_count=limits.get("max_count", 20),
    )
    return [a.filename for a in kept]


def forwarded(*files: tuple[str, str, bytes], subject: str = "Your letter") -> bytes:
    """A message as a mail client forwards it, carrying ``files``."""
    msg = EmailMessage()
    msg["From"] = "Council <council@example.gov.uk>"
    msg["To"] = "cleo@client.test"
    msg["Subject"] = subject
    msg.set_content("The letter is attached.\n")
    for name, ctype, payload in files:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=SMTP)


def mail_forwarding(inner: bytes, *, filename: str | None = None) -> list[Attachment]:
    """The attachments of a reply that forwards the message ``inner``."""
    outer = EmailMessage()
    outer["From"] = "cleo@client.test"
    outer["To"] = "reply+x@reply.test"
    outer["Subject"] = "FW: Your letter"
    outer.set_content("See below.\n")
    outer.add_attachment(as_message(inner), filename=filename)
    return list(parse_message(outer.as_bytes(policy=SMTP)).attachments)


def as_message(raw: bytes) -> EmailMessage:
    from email import message_from_bytes
    from email.policy import default

    parsed = message_from_bytes(raw, policy=default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@pytest.mark.parametrize(
    ("name", "ctype", "payload"),
    [
        ("Intake form (signed).pdf", "application/pdf", sample_files.pdf()),
        ("photo.png", "image/png", sample_files.png()),
        ("IMG_0042.JPG", "image/jpeg", sample_files.JPEG),
        ("photo.jpeg", "image/jpeg", sample_files.JPEG),
        ("Letter to Dr Hale.docx", DOCX, sample_files.docx()),
        ("payments.csv", "text/csv", sample_files.CSV),
        ("payments.csv", "text/plain", sample_files.CSV),  # how Gmail often declares CSV
        ("notes.txt", "text/plain", sample_files.TEXT),
        ("notes.md", "text/plain", sample_files.TEXT),  # an extension we do not know
        ("notes.txt", "text/plain", "Grüße, 5 €\n".encode("cp1252")),
        ("notes.txt", "text/plain", "Notes\r\n".encode("utf-16")),
        ("countries.csv", "text/csv", b"MZ,Mozambique\r\nNA,Namibia\r\n"),  # not a program
        ("Scan 2024.03.01", "application/pdf", sample_files.pdf()),  # no real extension
        ("attachment-1.bin", "image/png", sample_files.png()),  # the parser's name for none
        ("\U0001f469\u200d\u2695\ufe0f notes.txt", "text/plain", sample_files.TEXT),  # a ZWJ
    ],
)
def test_genuine_files_pass(name: str, ctype: str, payload: bytes) -> None:
    assert keep(file(name, ctype, payload)) == [name]


@pytest.mark.parametrize(
    ("name", "ctype", "payload", "refusal", "why"),
    [
        ("invoice.pdf.exe", "image/png", PE, AttachmentNameRefused, "ends in .exe"),
        ("invoice.png", "image/png", PE, AttachmentContentMismatch, "is a program"),
        ("x.html", "image/png", sample_files.png(), AttachmentNameRefused, "ends in .html"),
        ("photo.pdf", "image/png", sample_files.png(), AttachmentContentMismatch, "says .pdf"),
        ("form.pdf", "application/pdf", sample_files.png(), AttachmentContentMismatch, "not a PDF"),
        ("form.pdf", "application/pdf", b"", AttachmentContentMismatch, "unrecognised"),
        ("readme.txt", "text/plain", PE, AttachmentContentMismatch, "not text"),
        ("letter.docx", DOCX, sample_files.pdf(), AttachmentContentMismatch, "not a Word"),
        ("setup.exe", "application/x-msdownload", PE, AttachmentTypeRefused, "x-msdownload"),
    ],
)
def test_disguised_files_are_refused(
    name: str, ctype: str, payload: bytes, refusal: type[Exception], why: str
) -> None:
    with pytest.raises(refusal, match=why):
        keep(file(name, ctype, payload))


@pytest.mark.parametrize(
    "ext",
    ["exe", "scr", "bat", "cmd", "com", "js", "vbs", "msi", "ps1", "jar", "lnk", "hta", "html",
     "htm", "svg", "docm", "iso", "EXE", "Exe"],
)  # fmt: skip
def test_names_a_click_runs_are_refused_even_over_genuine_content(ext: str) -> None:
    with pytest.raises(AttachmentNameRefused, match=f"ends in .{ext.lower()}"):
        keep(file(f"invoice.pdf.{ext}", "application/pdf", sample_files.pdf()))


@pytest.mark.parametrize("name", ["invoice.exe.", "invoice.exe . .", "invoice.exe "])
def test_trailing_dots_and_spaces_do_not_hide_the_extension(name: str) -> None:
    """Windows saves ``invoice.exe.`` as ``invoice.exe``."""
    assert extension(name) == "exe"
    with pytest.raises(AttachmentNameRefused):
        keep(file(name, "application/pdf", sample_files.pdf()))


@pytest.mark.parametrize(
    "char",
    ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
     "\u200e", "\u200f", "\u061c"],
)  # fmt: skip
def test_names_with_bidi_controls_are_refused(char: str) -> None:
    """U+202E shows ``invoice_fdp.png`` reversed; no such name is genuine."""
    with pytest.raises(AttachmentNameRefused, match=f"bidi control character .U\\+{ord(char):04X}"):
        keep(file(f"invoice_{char}fdp.png", "image/png", sample_files.png()))


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\t", "\x7f", "\x85", "\u2028", "\u00ad"])
def test_names_with_control_characters_are_refused(char: str) -> None:
    with pytest.raises(AttachmentNameRefused, match="control character"):
        keep(file(f"scan{char}.pdf", "application/pdf", sample_files.pdf()))


def test_too_many_files_are_refused_and_the_limit_itself_passes() -> None:
    files = [file(f"page-{n}.png", "image/png", sample_files.png()) for n in range(21)]
    assert len(keep(*files[:20])) == 20
    with pytest.raises(TooManyAttachments, match="more than 20"):
        keep(*files)
    with pytest.raises(TooManyAttachments, match="more than 3"):
        keep(*files[:4], max_count=3)


def test_the_policy_carries_the_limit_on_files() -> None:
    rules = policy.Policy(
        max_message_size=10_000_000,
        attachment_max_bytes=1_000_000,
        attachments_total_max_bytes=2_000_000,
        attachment_types=DEFAULT_TYPES,
        max_attachments=2,
    )
    files = [file(f"page-{n}.png", "image/png", sample_files.png()) for n in range(3)]
    assert len(policy.files_to_keep(rules, files[:2])) == 2
    with pytest.raises(TooManyAttachments):
        policy.files_to_keep(rules, files)


def test_inline_images_are_dropped_not_checked_or_counted() -> None:
    logo = file("image001.png", "image/png", b"not even a png", inline=True)
    assert keep(logo, file("form.pdf", "application/pdf", sample_files.pdf()), max_count=1) == [
        "form.pdf"
    ]


def test_a_forwarded_message_with_genuine_files_is_kept_whole() -> None:
    files = mail_forwarding(forwarded(("bill.pdf", "application/pdf", sample_files.pdf())))
    assert [(a.filename, a.content_type) for a in files] == [("Your letter.eml", "message/rfc822")]
    assert keep(*files) == ["Your letter.eml"]


@pytest.mark.parametrize(
    ("inner", "refusal", "why"),
    [
        (("setup.exe", "application/x-msdownload", PE), AttachmentTypeRefused, "x-msdownload"),
        (("bill.pdf.exe", "application/pdf", PE), AttachmentNameRefused, "ends in .exe"),
        (("bill.pdf", "application/pdf", PE), AttachmentContentMismatch, "is a program"),
        (("bill.png", "image/png", PE), AttachmentContentMismatch, "is a program"),
    ],
)
def test_a_forwarded_messages_own_files_pass_the_same_rules(
    inner: tuple[str, str, bytes], refusal: type[Exception], why: str
) -> None:
    files = mail_forwarding(forwarded(inner))
    with pytest.raises(refusal, match=f"in a forwarded message.*{why}"):
        keep(*files)


def test_a_forwarded_message_named_as_a_document_is_refused() -> None:
    files = mail_forwarding(forwarded(("setup.exe", "image/png", PE)), filename="scan.pdf")
    with pytest.raises(AttachmentContentMismatch, match=r"says \.pdf"):
        keep(*files)


def test_files_inside_forwarded_messages_count_towards_the_limit() -> None:
    png = sample_files.png()
    files = mail_forwarding(forwarded(*[(f"p{n}.png", "image/png", png) for n in range(3)]))
    assert keep(*files, max_count=4) == ["Your letter.eml"]
    with pytest.raises(TooManyAttachments):
        keep(*files, max_count=3)


def test_forwards_nest_only_so_deep() -> None:
    """A reply forwarding a forward of a forward passes; one more level is refused."""
    raw = forwarded(("bill.pdf", "application/pdf", sample_files.pdf()))

    def wrapped(depth: int) -> list[Attachment]:
        inner = raw
        for _ in range(depth - 1):
            outer = EmailMessage()
            outer["Subject"] = "Fwd"
            outer.set_content("fwd\n")
            outer.add_attachment(as_message(inner))
            inner = outer.as_bytes(policy=SMTP)
        return mail_forwarding(inner)

    assert keep(*wrapped(MAX_FORWARD_DEPTH)) == ["Fwd.eml"]
    with pytest.raises(AttachmentTypeRefused, match="deeper than"):
        keep(*wrapped(MAX_FORWARD_DEPTH + 1))


def test_a_type_on_the_allow_list_that_nothing_can_check_is_refused() -> None:
    with pytest.raises(AttachmentContentMismatch, match="cannot check"):
        keep(file("data.foo", "application/x-foo", b"\x01\x02"), allowed=("application/*",))
    with pytest.raises(AttachmentContentMismatch, match="cannot check"):
        keep(file("scan", "application/octet-stream", sample_files.pdf()), allowed=("*",))


def test_a_wide_allow_list_still_never_lets_a_program_in() -> None:
    """Types ``filetype`` knows are checked by its magic numbers; a program never passes."""
    assert keep(file("a.zip", "application/zip", b"PK\x03\x04" + b"\0" * 40), allowed=("*",))
    with pytest.raises(AttachmentContentMismatch, match="is a program"):
        keep(file("tool.dat", "application/x-msdownload", PE), allowed=("*",))


def test_size_limits_apply_after_the_content_checks() -> None:
    pdf = sample_files.pdf()
    with pytest.raises(AttachmentTooLarge, match="limit per file"):
        keep(file("form.pdf", "application/pdf", pdf), max_file=len(pdf) - 1)
    with pytest.raises(AttachmentTooLarge, match="add up to"):
        keep(
            file("a.pdf", "application/pdf", pdf),
            file("b.pdf", "application/pdf", pdf),
            max_total=2 * len(pdf) - 1,
        )


@pytest.mark.parametrize(
    ("head", "body_only"),
    [
        (b"Content-Type: text/plain; charset=utf-8", True),
        (b"Content-Type: text/html", True),
        (b"Content-Disposition: inline", True),  # mutt marks its one body part so
        (b"", True),  # no Content-Type: text/plain
        (b"Content-Type: text/plain\r\nContent-Disposition: attachment", False),
        (b'Content-Type: text/plain; name="update.cmd"', False),
        (b'Content-Disposition: inline; filename="notes.txt"', False),
        (b"Content-Type: text/csv", False),
        (b'Content-Type: multipart/mixed; boundary="b"', False),
    ],
)
def test_the_gateway_skips_parsing_only_what_the_parser_reads_as_body(
    head: bytes, body_only: bool
) -> None:
    raw = b"From: cleo@client.test\r\nSubject: Re: hi\r\n" + head + b"\r\n\r\nYes.\r\n"
    assert only_body(raw) is body_only
    assert (parse_message(raw).attachments == ()) is body_only
