"""Several replies of one thread are filed in one batch, in their arrival order;
a worker never takes a later reply of a thread while an earlier one is being
filed or waits for a retry; and a reply that fails puts back the later ones of
its thread while the rest of the batch commits, each notification written."""

from __future__ import annotations

import itertools
from datetime import timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import (
    InboundMail,
    InboundStatus,
    Message,
    OutboxMessage,
    ReplyToken,
    User,
    utcnow,
)
from replygate.workers.inbound import InboundWorker

BREAKS = "EXPLODE"  # a reply whose body holds this word makes the broken step raise


@pytest.fixture
def threads(sessions: sessionmaker[Session], settings: Settings) -> dict[str, tuple[int, str]]:
    """Two clients, each in a thread of their own with the staff: name → (thread, address)."""
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
        directory.add_user(s, "finn@example.com", "Finn Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    sent = messaging.send(
        sender="dana@staff.test",
        to=["cleo@example.com", "finn@example.com"],
        subject="Hello",
        body="How are you?",
    )
    out = {}
    with sessions() as s:
        for thread in sent.threads:
            token = s.scalars(
                select(ReplyToken.token)
                .join(User, User.id == ReplyToken.user_id)
                .where(ReplyToken.thread_id == thread.id, User.email == thread.recipient)
            ).one()
            out[thread.recipient.split("@")[0]] = (
                thread.id,
                f"reply+{token}@{settings.reply_domain}",
            )
    return out


def _reply(sender: str, to: str, n: int, words: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Client <{sender}>"
    msg["To"] = to
    msg["Subject"] = "Re: Hello"
    msg["Message-ID"] = f"<{sender.split('@')[0]}-{n}@mail.example.com>"
    msg.set_content(f"Reply number {n}. {words}\n\nOn Mon, Dana Staff wrote:\n> How are you?\n")
    return msg.as_bytes()


def _queue(
    sessions: sessionmaker[Session],
    threads: dict[str, tuple[int, str]],
    order: list[tuple[str, int]],
    breaking: tuple[str, int] | None = None,
) -> dict[tuple[str, int], int]:
    """Queue replies as the gateway does (the thread recorded at enqueue), in ``order``."""
    ids = {}
    with transaction(sessions) as s:
        for who, n in order:
            thread_id, address = threads[who]
            sender = f"{who}@example.com"
            words = BREAKS if (who, n) == breaking else ""
            row = inbound.enqueue(
                s,
                mail_from=sender,
                rcpt=address,
                raw=_reply(sender, address, n, words),
                message_id=None,
            )
            row.thread_id = thread_id
            ids[(who, n)] = row.id
    return ids


def _bodies(sessions: sessionmaker[Session], thread_id: int) -> list[str]:
    with sessions() as s:
        return [
            message.body.split(".")[0]
            for message in s.scalars(
                select(Message)
                .where(Message.thread_id == thread_id, Message.inbound_id.is_not(None))
                .order_by(Message.id)
            )
        ]


def _staff_notifications(sessions: sessionmaker[Session], thread_id: int) -> list[OutboxMessage]:
    with sessions() as s:
        staff = s.scalars(select(User.id).where(User.email == "dana@staff.test")).one()
        return list(
            s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.thread_id == thread_id, OutboxMessage.user_id == staff)
                .order_by(OutboxMessage.id)
            )
        )


INTERLEAVED = [("cleo", 1), ("finn", 1), ("cleo", 2), ("cleo", 3), ("finn", 2), ("cleo", 4)]


def test_replies_of_one_thread_are_filed_in_one_batch_in_arrival_order(
    sessions: sessionmaker[Session], settings: Settings, threads: dict[str, tuple[int, str]]
) -> None:
    """One claim takes every reply of both threads; each thread's are filed in the
    order they arrived, and each notification names the one before it."""
    _queue(sessions, threads, INTERLEAVED)
    assert InboundWorker(sessions, settings).run_once(limit=20) == len(INTERLEAVED)
    cleo, finn = threads["cleo"][0], threads["finn"][0]
    assert _bodies(sessions, cleo) == [f"Reply number {n}" for n in (1, 2, 3, 4)]
    assert _bodies(sessions, finn) == ["Reply number 1", "Reply number 2"]
    for thread_id, count in ((cleo, 4), (finn, 2)):
        notes = _staff_notifications(sessions, thread_id)
        assert len(notes) == count
        for before, after in itertools.pairwise(notes):
            assert f"In-Reply-To: {before.header_message_id}".encode() in after.raw
    with sessions() as s:
        statuses = set(s.scalars(select(InboundMail.status)))
    assert statuses == {InboundStatus.FILED}


def test_a_claim_takes_no_later_reply_of_a_thread_whose_earlier_one_is_being_filed(
    sessions: sessionmaker[Session], threads: dict[str, tuple[int, str]]
) -> None:
    """A batch cut by its limit leaves the thread's later replies to a later claim:
    another worker takes the other thread meanwhile, never them."""
    ids = _queue(sessions, threads, INTERLEAVED)
    first = inbound.claim_mail(sessions, limit=1, owner=None)
    assert [m.id for m in first] == [ids[("cleo", 1)]]
    second = inbound.claim_mail(sessions, limit=10, owner=None)
    assert [m.id for m in second] == [ids[("finn", 1)], ids[("finn", 2)]]  # cleo waits
    assert inbound.claim_mail(sessions, limit=10, owner=None) == []


def test_a_claim_capped_at_one_thread_takes_its_whole_run_and_leaves_the_other_thread(
    sessions: sessionmaker[Session], threads: dict[str, tuple[int, str]]
) -> None:
    """With ``threads=1`` a claim takes every queued reply of the oldest thread, in
    order, past the other thread's; a second worker then has the other thread."""
    ids = _queue(sessions, threads, INTERLEAVED)
    first = inbound.claim_mail(sessions, limit=10, threads=1, owner=None)
    assert [m.id for m in first] == [ids[("cleo", n)] for n in (1, 2, 3, 4)]
    second = inbound.claim_mail(sessions, limit=10, threads=1, owner=None)
    assert [m.id for m in second] == [ids[("finn", 1)], ids[("finn", 2)]]


def test_mail_of_no_thread_takes_no_threads_place_in_a_claim(
    sessions: sessionmaker[Session], threads: dict[str, tuple[int, str]]
) -> None:
    """Mail the gateway recorded no thread for waits for no other mail: a claim capped
    at one thread takes all of it beside that thread's run."""
    ids = _queue(sessions, threads, INTERLEAVED)
    with transaction(sessions) as s:
        for row in s.scalars(select(InboundMail).where(InboundMail.rcpt == threads["finn"][1])):
            row.thread_id = None
    claimed = inbound.claim_mail(sessions, limit=10, threads=1, owner=None)
    assert [m.id for m in claimed] == sorted(ids.values())


def test_a_claim_holds_at_most_its_byte_budget_and_always_one_mail(
    sessions: sessionmaker[Session], threads: dict[str, tuple[int, str]]
) -> None:
    """The raw bytes of a claim stay within ``max_bytes``, cut in id order so each thread
    keeps a run; a mail larger than the budget is still claimed, alone."""
    ids = _queue(sessions, threads, INTERLEAVED)
    with sessions() as s:
        sizes = dict(s.execute(select(InboundMail.id, InboundMail.size)).all())
    first = inbound.claim_mail(sessions, limit=10, max_bytes=1, owner=None)
    assert [m.id for m in first] == [ids[("cleo", 1)]]
    assert first[0].raw.startswith(b"From: Client <cleo@example.com>")
    finn = [ids[("finn", 1)], ids[("finn", 2)]]  # cleo's later replies wait for the first
    second = inbound.claim_mail(
        sessions, limit=10, max_bytes=sizes[finn[0]] + sizes[finn[1]] - 1, owner=None
    )
    assert [m.id for m in second] == finn[:1]
    assert len(second[0].raw) == sizes[finn[0]]
    assert inbound.claim_mail(sessions, limit=10, owner=None) == []  # each thread waits


def test_a_claim_skips_the_later_replies_behind_another_workers_claim_in_flight(
    sessions: sessionmaker[Session], settings: Settings, threads: dict[str, tuple[int, str]]
) -> None:
    """PostgreSQL: while another worker's claim holds a thread's oldest reply locked
    (still ``queued`` to everyone else), SKIP LOCKED passes over it; the later
    replies of that thread must not be taken either."""
    if settings.is_sqlite:
        pytest.skip("SQLite serialises claims whole; no claim is ever in flight beside another")
    ids = _queue(sessions, threads, INTERLEAVED)
    with sessions() as other, other.begin():
        other.execute(
            select(InboundMail.id).where(InboundMail.id == ids[("cleo", 1)]).with_for_update()
        ).all()
        claimed = inbound.claim_mail(sessions, limit=10, owner=None)
        assert [m.id for m in claimed] == [ids[("finn", 1)], ids[("finn", 2)]]


@pytest.mark.parametrize(
    "broken",
    [
        # Before the batch's transaction: the mail's preparation raises.
        "replygate.core.filing.extract_from_parts",
        # Inside it: the batch rolls back, and each mail is filed on its own.
        "replygate.core.notifying.compose",
    ],
)
def test_a_reply_that_fails_puts_back_the_later_ones_of_its_thread_and_the_rest_commit(
    sessions: sessionmaker[Session],
    settings: Settings,
    threads: dict[str, tuple[int, str]],
    monkeypatch: pytest.MonkeyPatch,
    broken: str,
) -> None:
    ids = _queue(sessions, threads, INTERLEAVED, breaking=("cleo", 2))
    module, _, name = broken.rpartition(".")
    real = getattr(__import__(module, fromlist=[name]), name)

    def breaks_on_the_word(*args: object, **kwargs: object) -> object:
        if any(BREAKS in str(a) for a in [*args, *kwargs.values()]):
            raise RuntimeError("the step broke on this mail")
        return real(*args, **kwargs)

    monkeypatch.setattr(broken, breaks_on_the_word)
    worker = InboundWorker(sessions, settings)
    assert worker.run_once(limit=20) == len(INTERLEAVED)
    cleo, finn = threads["cleo"][0], threads["finn"][0]
    assert _bodies(sessions, cleo) == ["Reply number 1"]
    assert _bodies(sessions, finn) == ["Reply number 1", "Reply number 2"]
    assert len(_staff_notifications(sessions, finn)) == 2
    with sessions() as s:
        failed = s.get(InboundMail, ids[("cleo", 2)])
        assert failed is not None and failed.status == InboundStatus.QUEUED
        assert failed.reason is not None and "the step broke on this mail" in failed.reason
        for n in (3, 4):  # back in the queue, undecided, no attempt counted
            later = s.get(InboundMail, ids[("cleo", n)])
            assert later is not None and later.status == InboundStatus.QUEUED
            assert later.attempts == 0 and later.claimed_by is None
    assert worker.run_once(limit=20) == 0  # cleo 3 and 4 wait for cleo 2's retry
    monkeypatch.undo()
    retried = inbound.claim_mail(sessions, limit=20, now=utcnow() + timedelta(minutes=5))
    assert [m.id for m in retried] == [ids[("cleo", n)] for n in (2, 3, 4)]
    outcomes = worker.filing.write_batch(
        retried,
        [worker.filing.prepare(m.raw, mail_from=m.mail_from, rcpt=m.rcpt) for m in retried],
    )
    assert {o.status for o in outcomes} == {InboundStatus.FILED}
    assert _bodies(sessions, cleo) == [f"Reply number {n}" for n in (1, 2, 3, 4)]
    assert len(_staff_notifications(sessions, cleo)) == 4
