"""Pin and archive in the portal without JavaScript: plain POST forms with the
session's CSRF token, the inbox filters as links, a safe way back, and the
attacker's requests (no token, another client's thread, an off-site ``next``)
with their safe outcomes."""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.core.messaging import Messaging
from replygate.store.db import transaction
from replygate.store.models import ThreadParticipant
from tests.portal_support import CIRCLE, Client, People, file_email_reply

ROW_RE = re.compile(r'data-thread-row data-thread-id="(\d+)"')


def _rows(c: Client, query: str = "") -> list[int]:
    page = c.get("/inbox" + query)
    assert page.status == 200
    return [int(n) for n in ROW_RE.findall(page.text)]


def _post(c: Client, thread_id: int, change: str, next_url: str = "/inbox") -> str | None:
    token = c.csrf("/inbox")
    reply = c.post(
        f"/threads/{thread_id}/placement", {"csrf": token, "change": change, "next": next_url}
    )
    assert reply.status == 303, reply.text
    return reply.location


def test_pin_archive_and_the_filters_work_as_plain_forms(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
) -> None:
    first, second = (
        messaging.send(sender=people.staff, to=[people.client1], subject=s, body="B").threads[0].id
        for s in ("First", "Second")
    )
    c = client_for()
    c.login(people.staff)
    assert _rows(c) == [second, first]
    page = c.get("/inbox").text
    assert f'action="/threads/{first}/placement"' in page and 'value="pin"' in page

    assert _post(c, first, "pin", "/inbox?show=pinned") == "/inbox?show=pinned"
    assert "Pinned to the top of your inbox." in c.get("/inbox?show=pinned").text
    assert _rows(c) == [first, second]
    assert _rows(c, "?show=pinned") == [first]
    assert 'aria-current="page">Pinned' in c.get("/inbox?show=pinned").text

    _post(c, second, "archive")
    assert _rows(c) == [first]
    assert _rows(c, "?show=archived") == [second]
    assert 'value="unarchive"' in c.get("/inbox?show=archived").text
    # A thread page offers the opposite of its state.
    thread_page = c.get(f"/threads/{second}").text
    assert 'value="unarchive"' in thread_page and 'value="pin"' in thread_page

    file_email_reply(sessions, messaging, thread_id=second, author=people.client1, body="R")
    assert _rows(c, "?show=unread") == [second]
    assert _rows(c) == [first, second]
    assert _rows(c, "?show=archived") == []
    assert _rows(c, "?show=nonsense") == [first, second]  # an unknown filter: the inbox

    _post(c, first, "unpin")
    assert _rows(c) == [second, first]


def test_refused_without_the_forms_token_or_for_anothers_thread(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
) -> None:
    sent = messaging.send(sender=people.staff, to=[f"circle:{CIRCLE}"], subject="S", body="B")
    threads = {t.recipient: t.id for t in sent.threads}
    carol = client_for()
    carol.login(people.client1)
    # A cross-site form: no token.
    forged = carol.post(f"/threads/{threads[people.client1]}/placement", {"change": "archive"})
    assert forged.status == 403
    # Dan names Carol's thread, and one that does not exist: the same answer.
    dan = client_for()
    dan.login(people.client2)
    token = dan.csrf("/inbox")
    theirs = dan.post(
        f"/threads/{threads[people.client1]}/placement", {"csrf": token, "change": "pin"}
    )
    nothing = dan.post("/threads/99999/placement", {"csrf": token, "change": "pin"})
    assert theirs.status == nothing.status == 404
    assert theirs.text == nothing.text
    bad = dan.post(f"/threads/{threads[people.client2]}/placement", {"csrf": token, "change": "x"})
    assert bad.status == 400
    with transaction(sessions) as s:
        states = s.execute(select(ThreadParticipant.pinned, ThreadParticipant.archived)).all()
    assert set(states) == {(False, False)}
    # An off-site way back goes to the inbox instead.
    assert _post(dan, threads[people.client2], "pin", "//evil.example/") == "/inbox"
    assert _post(dan, threads[people.client2], "unpin", "https://evil.example/") == "/inbox"
