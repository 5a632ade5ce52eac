"""Nothing to learn from compose: a client cannot map the practice's other
clients or its Circles by what the compose form answers.

The attacker is a client with a portal login posting /compose, as the form
would, with addresses and Circle names of their choosing. Whatever exists,
everything they may not write to gets one answer: the same status, the same
page, after the same database statements (no early return that skips a
lookup another answer makes). Clients write to staff, and to a Circle only
when it is open to clients (``clients_may_write``), reaching its staff.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import Thread, ThreadParticipant, User
from tests.portal_support import CIRCLE, Client, People, Reply
from tests.portal_support import client_for as client_for  # a fixture
from tests.portal_support import live_portal as live_portal  # a fixture
from tests.portal_support import password_hash as password_hash  # a fixture
from tests.portal_support import people as people  # a fixture

STAFF_CIRCLE = "Clinicians"  # staff members only, closed to clients (the default)
OPEN_CIRCLE = "Front desk"  # open to clients; a staff member and a client in it


@pytest.fixture
def circles(sessions: sessionmaker[Session], people: People) -> None:
    with transaction(sessions) as s:
        directory.add_circle(s, STAFF_CIRCLE)
        directory.add_member(s, STAFF_CIRCLE, people.staff)
        directory.add_circle(s, OPEN_CIRCLE).clients_may_write = True
        directory.add_member(s, OPEN_CIRCLE, people.admin)
        directory.add_member(s, OPEN_CIRCLE, people.client2)


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the portal runs, in order (it shares this engine)."""
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def compose(client: Client, token: str, to: str) -> Reply:
    return client.post(
        "/compose", {"csrf": token, "to": to, "subject": "Hello", "body": "Who is there?"}
    )


def test_everything_a_client_may_not_write_to_answers_alike(
    client_for: Callable[[], Client],
    people: People,
    circles: None,
    sessions: sessionmaker[Session],
    statements: list[str],
) -> None:
    """Another client, nobody, a closed Circle, no Circle: one status, page and query plan."""
    attacker = client_for()
    assert attacker.login(people.client1).status == 303
    token = attacker.csrf("/compose")
    probes = {
        "an existing client": people.client2,
        "no such address": "nobody@example.test",
        "a staff-only Circle": f"circle:{STAFF_CIRCLE}",
        "a Circle of clients": f"circle:{CIRCLE}",
        "no such Circle": "circle:No such group",
    }
    answers: dict[str, tuple[int, str, list[str]]] = {}
    for what, to in probes.items():
        statements.clear()
        reply = compose(attacker, token, to)
        answers[what] = (reply.status, reply.text, list(statements))
    first = answers["no such address"]
    for what, answer in answers.items():
        assert answer[0] == first[0], what
        assert answer[1] == first[1], what
        assert len(answer[2]) == len(first[2]), what
    assert first[0] == 400
    assert "Clients can write only to staff and to Circles open to clients." in first[1]
    assert any("FROM users" in statement for statement in first[2])  # the lookup ran
    with transaction(sessions) as s:
        assert s.scalar(select(func.count(Thread.id))) == 0


def test_a_list_of_recipients_is_refused_whole(
    client_for: Callable[[], Client],
    people: People,
    circles: None,
    sessions: sessionmaker[Session],
) -> None:
    """Staff plus a closed Circle is refused as a probe alone is: nothing is sent to anyone."""
    attacker = client_for()
    attacker.login(people.client1)
    token = attacker.csrf("/compose")
    to = [people.staff, f"circle:{STAFF_CIRCLE}"]
    mixed = attacker.post("/compose", {"csrf": token, "to": to, "subject": "S", "body": "B"})
    alone = compose(attacker, token, "nobody@example.test")
    assert mixed.status == alone.status == 400
    with transaction(sessions) as s:
        assert s.scalar(select(func.count(Thread.id))) == 0


def test_a_circle_open_to_clients_reaches_its_staff(
    client_for: Callable[[], Client],
    people: People,
    circles: None,
    sessions: sessionmaker[Session],
) -> None:
    """The open Circle is offered and works; a closed one is not even listed."""
    client = client_for()
    client.login(people.client1)
    page = client.get("/compose").text
    assert f'value="circle:{OPEN_CIRCLE}"' in page
    assert STAFF_CIRCLE not in page and CIRCLE not in page
    assert people.client2 not in page
    token = client.csrf("/compose")
    sent = compose(client, token, f"circle:{OPEN_CIRCLE}")
    assert sent.status == 303
    with transaction(sessions) as s:
        reached = set(
            s.scalars(
                select(User.email)
                .join(ThreadParticipant, ThreadParticipant.user_id == User.id)
                .where(User.email != people.client1)
            )
        )
    assert reached == {people.admin}  # its staff; never the other client in it
    assert compose(client, token, people.staff).status == 303  # staff, as always
