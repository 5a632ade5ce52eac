"""Mail as it really arrives, end to end through the engine: one case per
fixture under fixtures/classify and fixtures/mime, asserting the decision,
its reason, and for filed replies the exact text and attachments."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.mail.parse import parse_message
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Message, OutboxMessage, ReplyToken
from replygate.workers.inbound import InboundWorker
from tests.conftest import FIXTURES

# fixture: (status, words in the reason, filed text or None, attachment names)
CASES: dict[str, tuple[str, str, str | None, list[str]]] = {
    "classify/auto_submitted.eml": ("ignored", "Auto-Submitted", None, []),
    "classify/auto_submitted_no.eml": ("filed", "", "Yes please.", []),
    "classify/dsn_delayed.eml": ("ignored", "delayed (4.4.7)", None, []),
    "classify/dsn_exchange.eml": ("ignored", "failed (5.1.10)", None, []),
    "classify/dsn_postfix.eml": ("ignored", "failed (5.1.1)", None, []),
    "classify/exim_failed_recipients.eml": ("ignored", "X-Failed-Recipients", None, []),
    "classify/null_sender_bounce.eml": ("ignored", "null reverse-path", None, []),
    "classify/ooo_de.eml": ("ignored", "German", None, []),
    "classify/ooo_es.eml": ("ignored", "Spanish", None, []),
    "classify/ooo_subject_en.eml": ("ignored", "Out of Office", None, []),
    "classify/ooo_subject_fr.eml": ("ignored", "French", None, []),
    "classify/our_message_id_loop.eml": ("ignored", "is one of ours", None, []),
    "classify/our_notification_loop.eml": ("ignored", "X-Replygate-Loop", None, []),
    "classify/outlook_vacation.eml": ("ignored", "X-Auto-Response-Suppress", None, []),
    "classify/plain_reply.eml": ("filed", "", "Thank you, Thursday is fine.", []),
    "classify/precedence_bulk.eml": ("ignored", "Precedence: bulk", None, []),
    "classify/reply_subject_mentions_ooo.eml": (
        "filed",
        "",
        "No, I'm around all week. Automatic reply settings are off.",
        [],
    ),
    "classify/sieve_vacation_null_sender.eml": ("ignored", "auto-replied", None, []),
    "classify/x_autoreply.eml": ("ignored", "X-Autoreply", None, []),
    "classify/x_autorespond.eml": ("ignored", "X-Autorespond", None, []),
    "mime/attachment_pdf.eml": (
        "filed",
        "",
        "Here is the signed form.\n\nMaria",
        ["Intake form (signed).pdf"],
    ),
    "mime/attachment_rfc2231_name.eml": (
        "filed",
        "",
        "Voici les deux documents.",
        ["Résumé médical.pdf", "Ordonnance.pdf"],
    ),
    "mime/base64_utf8.eml": (
        "filed",
        "",
        "Danke für die Nachricht! 👍\n\nIch komme am Montag um 9 Uhr.\n\nViele Grüße\nJürgen",
        [],
    ),
    "mime/forwarded_rfc822.eml": (
        "filed",
        "",
        "See the letter below, is this relevant?",
        ["Your council tax bill.eml"],
    ),
    "mime/inline_signature_logo.eml": (
        "filed",
        "",
        "Thanks, see you then.\n\nKind regards,\nAlex Chen | Office Manager",
        [],
    ),
    "mime/malformed_headers.eml": ("rejected", "is not", None, []),
    "mime/html_only_outlook.eml": (
        "filed",
        "",
        "Hi Sarah,\n\nI don’t think Tuesday works – could we do Wednesday instead?"
        "\n\nThanks,\n\nTom",
        [],
    ),
    "mime/latin1_label_utf8_bytes.eml": (
        "filed",
        "",
        "Dziękuję, będę o 14:00. Zażółć gęślą jaźń.",
        [],
    ),
    "mime/multipart_alternative_gmail.eml": (
        "filed",
        "",
        "Yes, Thursday at 2pm works for me. I'll bring the forms.\n\nBest,\nPriya",
        [],
    ),
    "mime/qp_latin1.eml": (
        "filed",
        "",
        "Bonjour Madame Lefèvre,\n\nMerci pour votre réponse, c’est très clair.\n"
        "Je passerai au cabinet jeudi à 10h.\n\nCordialement,\nFrançois",
        [],
    ),
    "mime/utf8_undeclared.eml": (
        "filed",
        "",
        "Sí, confirmo la cita del jueves. ¡Muchas gracias!\n\n— Inés",
        [],
    ),
    "mime/windows1252_undeclared.eml": (
        "filed",
        "",
        "Thanks — that’s fine. I’ll pay the €120 by Friday.\n“See you soon,” as they say…\n\nJane",
        [],
    ),
}
NULL_SENDER = {
    "dsn_delayed",
    "dsn_exchange",
    "dsn_postfix",
    "exim_failed_recipients",
    "null_sender_bounce",
    "sieve_vacation_null_sender",
}


def test_every_fixture_has_a_case() -> None:
    on_disk = {
        f"{p.parent.name}/{p.name}"
        for folder in ("classify", "mime")
        for p in (FIXTURES / folder).glob("*.eml")
    }
    assert on_disk == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_inbound_case(name: str, sessions: sessionmaker[Session], settings: Settings) -> None:
    status, reason_words, text, files = CASES[name]
    settings = dataclasses.replace(settings, reply_domain="reply.example.com")
    raw = (FIXTURES / name).read_bytes()
    # A From that does not parse still gets a recipient: the token names them, not the mail.
    sender = parse_message(raw).from_address or "someone@example.com"
    with transaction(sessions) as s:
        directory.add_user(s, "staff@practice.test", "Sarah Martin", "staff")
        directory.add_user(s, sender, "Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="staff@practice.test", to=[sender], subject="Hello", body="Hello")
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    mail_from = "" if Path(name).stem in NULL_SENDER else sender
    with transaction(sessions) as s:
        queue_id = inbound.enqueue(
            s,
            mail_from=mail_from,
            rcpt=f"reply+{token}@reply.example.com",
            raw=raw,
            message_id=None,
        ).id
    InboundWorker(sessions, settings).drain()

    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row.status == status, row.reason
        assert reason_words in (row.reason or "")
        filed = s.scalars(select(Message).where(Message.source == "email")).all()
        notifications = s.scalars(select(OutboxMessage)).all()
        if text is None:
            assert filed == [] and len(notifications) == 1  # nothing filed, nobody notified
        else:
            (message,) = filed
            assert message.body == text
            assert [a.filename for a in message.attachments] == files
            assert len(notifications) == 2  # the staff member hears of the reply
