"""Logs hold no secret: no reply token, no reply or bounce address, no subject,
body or attachment name, whatever an attacker sends and whatever fails.

A reply token plus a forged From is enough to post as the client where the
sender check is weak, so a token in a log shipped to a log service is a
password in the clear. The attacks: replies over real SMTP to live, expired,
revoked, never-issued and forged reply addresses, to a live token at another
domain, to a forged bounce address, with a file named ``secret-diagnosis.pdf``
(allowed, and refused for its type), from a forged From; the same through the
pipe ingress; a reply-domain change while mail is queued; the store failing
with the address in its error (a traceback); an unmigrated database whose SQL
error would carry the token among its parameters. Logs are written by the
real chain (``logs.configure`` with JSON, as ``--log-json`` sets it up),
stdlib logging through its formatter, and every byte is scanned.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import smtplib
import sys
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
from pathlib import Path

import pytest
import structlog
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from replygate import logs
from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.gateway.ingest import ingest
from replygate.gateway.server import GatewayThread
from replygate.mail import reply_token
from replygate.mail.redaction import redact
from replygate.store import directory, inbound_writer
from replygate.store.db import make_engine, session_factory, transaction
from replygate.store.models import InboundMail, ReplyToken
from replygate.workers.drain import drain_once
from replygate.workers.inbound import InboundWorker
from tests.integration.gateway.conftest import add_reply_address

FILE_NAME = "secret-diagnosis.pdf"
SUBJECT_MARK = "Ospreysubjectmark"
BODY_MARK = "Capybarabodymark"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


class Logs:
    """Everything the process logs, as written: structlog's JSON lines and stdlib's lines."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.stream = io.TextIOWrapper(self.out, write_through=True)

    def text(self) -> str:
        return self.out.getvalue().decode("utf-8", "replace")


@pytest.fixture
def captured(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Logs]:
    """The logging of a ``--log-json`` process, writing to a buffer instead of stderr."""
    saved = structlog.get_config()
    captured = Logs()
    redact_logs = functools.partial(redact, settings.secret_key)
    monkeypatch.setattr(sys, "stderr", captured.stream)
    logs.configure(json=True, redact=redact_logs)
    # Under pytest the root logger has handlers, so configure() leaves stdlib alone:
    # attach the handler it installs in a process of its own.
    handler = logging.StreamHandler(captured.stream)
    handler.setFormatter(logs.RedactingFormatter(redact_logs))
    logging.getLogger().addHandler(handler)
    yield captured
    logging.getLogger().removeHandler(handler)
    structlog.configure(**saved)
    captured.stream.detach()


@dataclasses.dataclass(frozen=True)
class Clinic:
    """Dana (staff) wrote to Cleo (client) in Convenience Mode: Cleo's live reply address,
    and expired and revoked ones for the same thread."""

    live: str
    expired: str
    revoked: str
    thread_id: int


@pytest.fixture
def clinic(settings: Settings, sessions: sessionmaker[Session]) -> Clinic:
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        cleo = directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
        cleo_id = cleo.id
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Hi?")
    with sessions() as s:
        row = s.scalars(select(ReplyToken)).one()
        live, thread_id = reply_token.reply_address(row.token, settings.reply_domain), row.thread_id
    expired = add_reply_address(
        sessions, settings, thread_id=thread_id, user_id=cleo_id, expires_in=timedelta(days=-1)
    )
    revoked = add_reply_address(
        sessions, settings, thread_id=thread_id, user_id=cleo_id, revoked=True
    )
    return Clinic(live, expired, revoked, thread_id)


def reply(to: str, *, from_: str = "Cleo <cleo@example.com>", file_type: str = "") -> bytes:
    """A reply as a mail client writes it: marked subject and body, and a file if asked."""
    msg = EmailMessage()
    msg["From"] = from_
    msg["To"] = to
    msg["Subject"] = f"Re: Hi {SUBJECT_MARK}"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content(f"Here are my results, {BODY_MARK}.\n")
    if file_type:
        maintype, subtype = file_type.split("/")
        msg.add_attachment(PDF, maintype=maintype, subtype=subtype, filename=FILE_NAME)
    return msg.as_bytes(policy=SMTP)


def send(port: int, rcpt: str, raw: bytes, *, mail_from: str = "cleo@example.com") -> int:
    """One SMTP transaction as the attacker runs it; the code of the last reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("mx.example.com")
        smtp.mail(mail_from)
        code, _ = smtp.rcpt(rcpt)
        if code != 250:
            return code
        code, _ = smtp.data(raw)
        return code


def secrets_of(sessions: sessionmaker[Session], *extra: str) -> list[str]:
    """Every token issued (Dana's, made for her notification, too), every address, the marks."""
    with sessions() as s:
        issued = list(s.scalars(select(ReplyToken.token)))
    return [*issued, *extra, FILE_NAME, SUBJECT_MARK, BODY_MARK]


def assert_none_in(log_text: str, secrets: list[str]) -> None:
    folded = log_text.lower()
    leaked = [secret for secret in secrets if secret.lower() in folded]
    assert not leaked, f"in the logs: {leaked}"


def test_replies_to_every_kind_of_reply_address_leave_no_secret_in_the_logs(
    settings: Settings, sessions: sessionmaker[Session], clinic: Clinic, captured: Logs
) -> None:
    domain = settings.reply_domain
    live_token = clinic.live.removeprefix("reply+").partition("@")[0]
    never_issued = reply_token.reply_address(reply_token.new_token(settings.secret_key), domain)
    forged = f"reply+{'q' * reply_token.TOKEN_LENGTH}@{domain}"
    other_domain = f"reply+{live_token}@old-reply.test"
    forged_bounce = f"bounces+n0001abc-{'a' * 16}@{domain}"

    gateway = GatewayThread(settings, sessions, host="127.0.0.1", port=0)
    gateway.start()
    try:
        port = gateway.port
        assert send(port, clinic.live, reply(clinic.live, file_type="application/pdf")) == 250
        refused_type = reply(clinic.live, file_type="application/x-msdownload")
        assert send(port, clinic.live, refused_type) >= 500
        forged_from = reply(clinic.live, from_="Cleo <cleo@evil.test>")
        assert send(port, clinic.live, forged_from, mail_from="cleo@evil.test") >= 500
        for address in (clinic.expired, clinic.revoked, never_issued, forged, other_domain):
            assert send(port, address, reply(address)) >= 500
        send(port, forged_bounce, reply(forged_bounce), mail_from="")
        for address in (clinic.live, clinic.expired):
            raw = reply(address)
            ingest(settings, sessions, rcpt=address, sender="cleo@example.com", raw=raw)
        filed, delivered = drain_once(settings, sessions)
        assert filed >= 2 and delivered >= 2  # Cleo's replies, and Dana told of them
        # The reply domain moves while a reply is queued: the worker refuses the old address.
        assert send(port, clinic.live, reply(clinic.live)) == 250
    finally:
        gateway.stop()
    moved = dataclasses.replace(settings, reply_domain="new-reply.test")
    assert InboundWorker(sessions, moved).drain() == 1
    with sessions() as s:
        last = s.scalars(select(InboundMail).order_by(InboundMail.id.desc())).first()
        assert last is not None and last.status == "rejected"
        assert "is not a reply address" in (last.reason or "")  # the queue keeps why

    log_text = captured.text()
    addresses = [clinic.live, clinic.expired, clinic.revoked, never_issued, forged]
    addresses += [other_domain, forged_bounce]
    assert_none_in(log_text, secrets_of(sessions, *addresses, "q" * reply_token.TOKEN_LENGTH))
    # What the operator matches with ``tokens inspect``: the fingerprint.
    shown = f"reply+fp:{reply_token.fingerprint(settings.secret_key, live_token)}@{domain}"
    assert shown in log_text
    assert '"event":"inbound.rcpt"' in log_text and '"event":"inbound.processed"' in log_text


def test_a_traceback_names_the_reply_address_only_by_its_fingerprint(
    settings: Settings,
    sessions: sessionmaker[Session],
    clinic: Clinic,
    captured: Logs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store fails with the address in its message: the logged traceback hides it."""

    def failing_submit(self: object, rows: list[dict[str, object]]) -> list[int]:
        raise RuntimeError(f"cannot queue the mail for {clinic.live}")

    monkeypatch.setattr(inbound_writer.InboundWriter, "submit_async", failing_submit)
    gateway = GatewayThread(settings, sessions, host="127.0.0.1", port=0)
    gateway.start()
    try:
        assert send(gateway.port, clinic.live, reply(clinic.live)) == 451
    finally:
        gateway.stop()
    log_text = captured.text()
    assert "Traceback (most recent call last)" in log_text
    assert_none_in(log_text, secrets_of(sessions, clinic.live))
    live_token = clinic.live.removeprefix("reply+").partition("@")[0]
    fingerprint = reply_token.fingerprint(settings.secret_key, live_token)
    assert f"cannot queue the mail for reply+fp:{fingerprint}@" in log_text


def test_an_unmigrated_database_does_not_log_the_token_it_was_asked_for(
    settings: Settings,
    sessions: sessionmaker[Session],
    clinic: Clinic,
    captured: Logs,
    tmp_path: Path,
) -> None:
    """The pipe ingress pointed at a database without tables: the SQL error that is
    logged would carry the token and the raw mail among its parameters."""
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        result = ingest(
            settings,
            session_factory(engine),
            rcpt=clinic.live,
            sender="cleo@example.com",
            raw=reply(clinic.live),
        )
    finally:
        engine.dispose()
    assert result.code == 75  # the MTA keeps the mail and retries
    log_text = captured.text()
    assert "no such table" in log_text
    assert_none_in(log_text, secrets_of(sessions, clinic.live))


def test_sql_errors_show_no_bound_value(database_url: str) -> None:
    """Whatever the backend, an SQL error's text names the statement, not its values."""
    token = reply_token.new_token("k" * 64)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as failed:
            conn.execute(text("SELECT token FROM no_such_table WHERE token = :t"), {"t": token})
    finally:
        engine.dispose()
    assert token not in str(failed.value)
