"""The audit trail: a chain that notices an edited, removed, inserted or reordered row,
stays one chain under concurrent writers, and keeps its anchor through a purge."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core import audit
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import AuditEvent, AuditOutcome, utcnow
from tests.helpers import cli_env

OPERATOR = audit.Actor.operator()


def _write(sessions: sessionmaker[Session], settings: Settings, n: int, **what: object) -> None:
    for i in range(n):
        audit.record_now(
            sessions, settings, OPERATOR, audit.Action.THREAD_VIEWED,
            object_kind=audit.ObjectKind.THREAD, object_id=i, thread_id=i, **what,
        )  # fmt: skip


def _env(settings: Settings) -> dict[str, str]:
    return cli_env(settings)


def test_an_untouched_trail_verifies(sessions, settings) -> None:
    _write(sessions, settings, 5)
    verdict = audit.verify(sessions, settings)
    assert verdict.intact, verdict.problem
    assert (verdict.checked, verdict.head_seq) == (5, 5)


def test_an_edited_row_is_named(sessions, settings) -> None:
    _write(sessions, settings, 5)
    with transaction(sessions) as session:  # the attacker's SQL: pretend someone else read it
        session.execute(text("UPDATE audit_events SET actor = 'nobody' WHERE seq = 3"))
    verdict = audit.verify(sessions, settings)
    assert not verdict.intact
    assert verdict.bad_seq == 3 and "changed" in (verdict.problem or "")


def test_an_edited_detail_is_named(sessions, settings) -> None:
    _write(sessions, settings, 3, outcome=AuditOutcome.DENIED)
    with transaction(sessions) as session:
        session.execute(
            update(AuditEvent).where(AuditEvent.seq == 2).values(outcome=AuditOutcome.OK.value)
        )
    assert audit.verify(sessions, settings).bad_seq == 2


def test_a_removed_row_is_named(sessions, settings) -> None:
    _write(sessions, settings, 5)
    with transaction(sessions) as session:
        session.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    verdict = audit.verify(sessions, settings)
    assert verdict.bad_seq == 3
    assert "row 2 is missing" in (verdict.problem or "")


def test_a_removed_and_renumbered_row_is_found(sessions, settings) -> None:
    """Closing the gap by renumbering breaks the link to the row before."""
    _write(sessions, settings, 4)
    with transaction(sessions) as session:
        session.execute(text("DELETE FROM audit_events WHERE seq = 2"))
        session.execute(text("UPDATE audit_events SET seq = seq - 1 WHERE seq > 2"))
    verdict = audit.verify(sessions, settings)
    assert verdict.bad_seq == 2 and "does not follow" in (verdict.problem or "")


def test_removing_the_first_rows_is_found(sessions, settings) -> None:
    _write(sessions, settings, 3)
    with transaction(sessions) as session:
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 1))
    assert audit.verify(sessions, settings).bad_seq == 2


def test_another_key_does_not_verify(sessions, settings) -> None:
    """A trail rewritten by someone without the key: every mac is theirs, none is ours."""
    import dataclasses

    _write(sessions, settings, 2)
    other = dataclasses.replace(settings, secret_key="another-secret-" + "x" * 40)
    assert audit.verify(sessions, other).bad_seq == 1


def test_concurrent_writers_make_one_chain(sessions, settings) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            _write(sessions, settings, 15)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    verdict = audit.verify(sessions, settings)
    assert verdict.intact, verdict.problem
    assert verdict.checked == 60


def test_purge_keeps_an_anchor_and_the_chain_verifies(sessions, settings) -> None:
    _write(sessions, settings, 4)
    # Two of them six years and a day old, as if written then (re-signed below).
    with transaction(sessions) as session:
        old = utcnow() - timedelta(days=settings.audit_retention_days + 1)
        session.execute(update(AuditEvent).where(AuditEvent.seq <= 2).values(at=old))
    _resign(sessions, settings)
    assert audit.verify(sessions, settings).intact
    assert audit.purge(sessions, settings, OPERATOR) == 2
    with sessions() as session:
        seqs = session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
    assert seqs == [3, 4, 5]
    verdict = audit.verify(sessions, settings)
    assert verdict.intact, verdict.problem
    # Removing the kept rows after the purge is still found.
    with transaction(sessions) as session:
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 3))
    assert not audit.verify(sessions, settings).intact


def test_purge_of_everything_leaves_the_anchor(sessions, settings) -> None:
    _write(sessions, settings, 2)
    with transaction(sessions) as session:
        old = utcnow() - timedelta(days=settings.audit_retention_days + 1)
        session.execute(update(AuditEvent).values(at=old))
    _resign(sessions, settings)
    assert audit.purge(sessions, settings, OPERATOR) == 2
    verdict = audit.verify(sessions, settings)
    assert verdict.intact and verdict.checked == 1


def _resign(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Recompute every mac in order (what the trail would hold had the rows been written so)."""
    from replygate.store import audit as chain

    key = audit.chain_key(settings)
    with transaction(sessions) as session:
        prev = chain.GENESIS
        for row in session.scalars(select(AuditEvent).order_by(AuditEvent.seq)):
            row.prev_mac = prev
            row.mac = chain.chain_mac(key, chain.fields_of(row))
            prev = row.mac


def test_filters_by_user_thread_and_time(sessions, settings) -> None:
    with transaction(sessions) as session:
        cleo = directory.add_user(session, "cleo@example.com", "Cleo", "client")
        staff = directory.add_user(session, "sam@example.com", "Sam", "staff")
        session.flush()
        audit.record(
            session, settings, audit.Actor.user(cleo, address="192.0.2.1", user_agent="Firefox"),
            audit.Action.THREAD_VIEWED, object_kind=audit.ObjectKind.THREAD, object_id=7,
            thread_id=7,
        )  # fmt: skip
        audit.record(
            session, settings, OPERATOR, audit.Action.PASSWORD_SET,
            object_kind=audit.ObjectKind.USER, object_id=staff.id,
        )  # fmt: skip
    assert [e.action for e in audit.events(sessions, user="cleo@example.com")] == ["thread_viewed"]
    assert [e.action for e in audit.events(sessions, user="sam@example.com")] == ["password_set"]
    assert [e.actor for e in audit.events(sessions, thread_id=7)] == ["cleo@example.com"]
    row = audit.events(sessions, thread_id=7)[0]
    assert (row.address, row.user_agent) == ("192.0.2.1", "Firefox")
    assert audit.events(sessions, since=row.at + timedelta(seconds=1)) == []
    with pytest.raises(audit.UnknownUser):
        audit.events(sessions, user="nobody@example.com")


def test_cli_verify_list_and_export(sessions, settings) -> None:
    _write(sessions, settings, 3)
    env = _env(settings)
    runner = CliRunner()
    done = runner.invoke(main, ["audit", "verify"], env=env)
    assert done.exit_code == 0 and "intact: 3 rows" in done.output
    listed = runner.invoke(main, ["audit", "list", "--thread", "1", "--json"], env=env)
    assert [e["object_id"] for e in json.loads(listed.output)] == ["1"]
    assert json.loads(listed.output)[0]["at"].endswith("Z")
    table = runner.invoke(main, ["audit", "list"], env=env)
    assert table.output.splitlines()[0].split()[:3] == ["SEQ", "AT", "ACTOR"]
    jsonl = runner.invoke(main, ["audit", "export", "--format", "jsonl"], env=env)
    assert [json.loads(line)["seq"] for line in jsonl.output.splitlines()] == [1, 2, 3]
    csv_out = runner.invoke(main, ["audit", "export", "--format", "csv"], env=env)
    assert csv_out.output.splitlines()[0].startswith("seq,at,actor_kind,actor,action")
    assert len(csv_out.output.splitlines()) == 1 + 4  # the jsonl export is itself recorded
    # Each export is recorded, and the trail still verifies.
    assert audit.verify(sessions, settings).checked == 5

    with transaction(sessions) as session:
        session.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    broken = runner.invoke(main, ["audit", "verify"], env=env)
    assert broken.exit_code == 1
    assert "broken at row 3" in broken.output and "row 2 is missing" in broken.output
    as_json = runner.invoke(main, ["audit", "verify", "--json"], env=env)
    assert as_json.exit_code == 1 and json.loads(as_json.output)["bad_seq"] == 3


def test_cli_list_of_an_unknown_user_is_one_line(sessions, settings) -> None:
    done = CliRunner().invoke(
        main, ["audit", "list", "--user", "x@example.com"], env=_env(settings)
    )
    assert done.exit_code == 1 and "no user with email x@example.com" in done.output
    bad = CliRunner().invoke(main, ["audit", "list", "--since", "yesterday"], env=_env(settings))
    assert bad.exit_code == 2 and "ISO 8601" in bad.output
