"""The portal's core calls (``Workspace``) without HTTP: who a session names,
privacy of threads and files, canned responses and the organisation's name."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import accounts
from replygate.core.messaging import Messaging
from replygate.core.workspace import SignedIn, Workspace
from replygate.errors import Invalid, NotFound
from replygate.store.db import transaction
from replygate.store.models import MessageAttachment
from tests.portal_support import (
    CIRCLE,
    PASSWORD,
    People,
    file_email_reply,
    messaging,
    password_hash,
    people,
)

__all__ = ["messaging", "password_hash", "people"]  # fixtures


@pytest.fixture
def workspace(settings: Settings, sessions: sessionmaker[Session]) -> Workspace:
    return Workspace(sessions, settings)


def _signed_in(workspace: Workspace, email: str) -> SignedIn:
    outcome = workspace.log_in(email, PASSWORD, address="192.0.2.1")
    assert outcome.user_id is not None
    found = workspace.signed_in(outcome.session_id)
    assert found is not None
    return found


def test_a_login_starts_a_session_and_a_new_password_voids_it(
    workspace: Workspace, people: People, sessions: sessionmaker[Session]
) -> None:
    """The session id from ``log_in`` names the user until their password changes."""
    outcome = workspace.log_in(people.client1, PASSWORD, address="192.0.2.1")
    assert outcome.user_id is not None and not outcome.throttled
    found = workspace.signed_in(outcome.session_id)
    assert found is not None
    assert found.viewer.email == people.client1 and found.unread == 0
    assert workspace.signed_in("0" * 32) is None
    with transaction(sessions) as s:
        accounts.set_password(s, people.client1, "another long password")
    assert workspace.signed_in(outcome.session_id) is None


def test_wrong_passwords_give_no_session_then_a_throttle(
    workspace: Workspace, people: People
) -> None:
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT):
        refused = workspace.log_in(people.client1, "wrong password!", address="192.0.2.1")
        assert refused.user_id is None and refused.session_id == "" and not refused.throttled
    throttled = workspace.log_in(people.client1, PASSWORD, address="192.0.2.1")
    assert throttled.user_id is None and throttled.throttled and throttled.retry_after > 0


def test_threads_and_files_exist_only_for_their_participants(
    workspace: Workspace, people: People, messaging: Messaging, sessions: sessionmaker[Session]
) -> None:
    """Another client of the same Circle gets ``NotFound``, as for no thread at all."""
    sent = messaging.send(sender=people.staff, to=[f"circle:{CIRCLE}"], subject="S", body="B")
    threads = {t.recipient: t.id for t in sent.threads}
    message_id = file_email_reply(
        sessions, messaging, thread_id=threads[people.client1], author=people.client1, body="R"
    )
    with transaction(sessions) as s:
        row = MessageAttachment(
            message_id=message_id,
            filename="a.pdf",
            content_type="application/pdf",
            size=1,
            data=b"x",
        )
        s.add(row)
        s.flush()
        attachment_id = row.id
    carol = _signed_in(workspace, people.client1).viewer
    dan = _signed_in(workspace, people.client2).viewer
    staff = _signed_in(workspace, people.staff)
    assert staff.unread == 1
    view = workspace.read_thread(threads[people.client1], carol)
    assert [m.body for m in view.messages] == ["B", "R"]
    assert workspace.attachment(attachment_id, carol).data == b"x"
    with pytest.raises(NotFound):
        workspace.read_thread(threads[people.client1], dan)
    with pytest.raises(NotFound):
        workspace.attachment(attachment_id, dan)
    workspace.read_thread(threads[people.client1], staff.viewer)
    assert _signed_in(workspace, people.staff).unread == 0  # reading marked it read


def test_clients_may_write_to_staff_only(workspace: Workspace, people: People) -> None:
    carol = _signed_in(workspace, people.client1).viewer
    circles, persons = workspace.recipients(carol)
    assert circles == [] and {p.value for p in persons} == {people.admin, people.staff}
    sam = _signed_in(workspace, people.staff).viewer
    circles, persons = workspace.recipients(sam)
    assert [c.label for c in circles] == [f"{CIRCLE} · Circle of 2"]
    assert people.staff not in {p.value for p in persons}


def test_canned_responses_have_unique_one_line_names(workspace: Workspace, people: People) -> None:
    author = _signed_in(workspace, people.staff).viewer.id
    first = workspace.save_canned(
        canned_id=None, name="  Wel\n come ", subject="", body="Hello", author_id=author
    )
    assert workspace.canned_response(first).name == "Wel come"
    with pytest.raises(Invalid):
        workspace.save_canned(
            canned_id=None, name="Wel come", subject="", body="x", author_id=author
        )
    with pytest.raises(Invalid):
        workspace.save_canned(canned_id=None, name="Other", subject="", body=" ", author_id=author)
    with pytest.raises(NotFound):
        workspace.save_canned(canned_id=999, name="Other", subject="", body="x", author_id=author)
    workspace.delete_canned(first)
    assert workspace.canned_responses() == []
    with pytest.raises(NotFound):
        workspace.delete_canned(first)


def test_the_organisation_needs_a_name(workspace: Workspace) -> None:
    with pytest.raises(Invalid):
        workspace.rename_organisation(" \n ")
    workspace.rename_organisation("  Harbour   Clinic ")
    assert workspace.organisation().name == "Harbour Clinic"
    assert workspace.organisation().convenience_mode is False
