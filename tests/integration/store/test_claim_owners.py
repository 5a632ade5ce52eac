"""Claims die with their worker: a claim records its owner process, the owner
marks itself alive while it lives (a file lock on SQLite, an advisory lock on
PostgreSQL), and ``take_back_dead`` puts back in the queue the claims of
owners that are gone, at once, never those of a living one. A claim with no
lease at all (an operator's release from before it had one) is claimable.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from replygate.mail.decisions import TakenBack, from_record
from replygate.store import claim_owners, dialect, inbound, keyring
from replygate.store.db import transaction
from replygate.store.models import InboundMail, InboundStatus, utcnow
from tests.helpers import wait_for

HOLDER = """
import sys, time
from replygate.store import dialect
from replygate.store.db import make_engine
dialect.hold_owner(make_engine(sys.argv[1]), sys.argv[2])
print("held", flush=True)
time.sleep(600)
"""

RELEASER = """
import sys, time
from pathlib import Path
from replygate.core.operations import release_held
from replygate.store import keyring
from replygate.store.db import make_engine, session_factory
keyring.install(keyring.Keyring(Path(sys.argv[3])))  # the note it adds is sealed
release_held(session_factory(make_engine(sys.argv[1])), int(sys.argv[2]))
print("released", flush=True)
time.sleep(600)
"""


def _queue(sessions: sessionmaker[Session], n: int) -> list[int]:
    with transaction(sessions) as session:
        rows = [
            inbound.enqueue(
                session, mail_from="c@client.test", rcpt="r@reply.test", raw=b"x", message_id=None
            )
            for _ in range(n)
        ]
        return [row.id for row in rows]


def _row(sessions: sessionmaker[Session], inbound_id: int) -> InboundMail:
    with sessions() as session:
        row = session.get(InboundMail, inbound_id)
        assert row is not None
        return row


def test_a_gone_owners_claims_are_taken_back_and_a_living_ones_kept(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    first, second = _queue(sessions, 2)
    release = claim_owners.hold_owner(sessions, "here:1:live")
    try:
        (a,) = inbound.claim_mail(sessions, owner="here:1:live")
        (b,) = inbound.claim_mail(sessions, owner="gone:2:dead")
        assert (a.id, b.id) == (first, second)
        assert claim_owners.take_back_dead(sessions) == [second]
        assert _row(sessions, first).status == InboundStatus.PROCESSING
        taken = _row(sessions, second)
        assert (taken.status, taken.claimed_at, taken.claimed_by) == (
            InboundStatus.QUEUED,
            None,
            None,
        )
        record = from_record(taken.decisions[-1])
        assert isinstance(record, TakenBack) and record.owner == "gone:2:dead"
        assert claim_owners.take_back_dead(sessions) == []
    finally:
        release()
    assert claim_owners.take_back_dead(sessions) == [first]  # let go: gone too


def test_a_killed_owner_is_seen_gone_at_once(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    """The OS (SQLite's file lock) or the server (PostgreSQL's advisory lock)
    drops the mark when the process dies, without any lease."""
    (mail,) = _queue(sessions, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url, "other:3:start"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        inbound.claim_mail(sessions, owner="other:3:start")
        with sessions() as session:
            assert dialect.dead_owners(session, {"other:3:start"}) == set()
        assert claim_owners.take_back_dead(sessions) == []
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        wait_for(
            lambda: claim_owners.take_back_dead(sessions) == [mail], what="the claim taken back"
        )
        assert _row(sessions, mail).status == InboundStatus.QUEUED
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_claim_without_a_lease_is_claimable(sessions: sessionmaker[Session]) -> None:
    """``queue release`` used to leave ``processing`` with no claimed_at and no
    owner, which no lease ever ended: such a claim is anyone's."""
    (mail,) = _queue(sessions, 1)
    with transaction(sessions) as session:
        session.execute(
            update(InboundMail)
            .where(InboundMail.id == mail)
            .values(status=InboundStatus.PROCESSING, claimed_at=None)
        )
    assert [m.id for m in inbound.claim_mail(sessions)] == [mail]


def test_a_release_whose_process_dies_is_taken_back(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    """``queue release`` claims the mail for its own process (no lease, an owner):
    while it lives no worker takes it; once it is gone, a worker does."""
    (mail,) = _queue(sessions, 1)
    with transaction(sessions) as session:
        session.execute(
            update(InboundMail).where(InboundMail.id == mail).values(status=InboundStatus.HELD)
        )
    releaser = subprocess.Popen(
        [sys.executable, "-c", RELEASER, database_url, str(mail), str(keyring.current().path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert releaser.stdout is not None and releaser.stdout.readline().strip() == "released"
        row = _row(sessions, mail)
        assert row.status == InboundStatus.PROCESSING and row.claimed_at is None
        assert (row.claimed_by or "").startswith("release:")
        assert inbound.claim_mail(sessions, now=utcnow() + timedelta(days=1)) == []
        assert claim_owners.take_back_dead(sessions) == []
        releaser.send_signal(signal.SIGKILL)  # before it files
        releaser.wait(10)
        wait_for(
            lambda: claim_owners.take_back_dead(sessions) == [mail], what="the release taken back"
        )
        assert [m.id for m in inbound.claim_mail(sessions)] == [mail]
    finally:
        if releaser.poll() is None:
            releaser.kill()
            releaser.wait()
