"""SQLite writers in one process take turns instead of meeting SQLite's busy handler."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sqlalchemy import create_engine, event, text

from replygate.store.db import session_factory, transaction


def test_a_second_writer_waits_for_its_turn(tmp_path: Path) -> None:
    """With SQLite's busy timeout at 0, a second writer that reached SQLite's lock
    would fail at once with "database is locked"; it waits for the first instead."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'turns.db'}", connect_args={"timeout": 0, "isolation_level": None}
    )
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    factory = session_factory(engine)
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        with transaction(factory) as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
            holding.set()
            release.wait(10)

    def second() -> None:
        try:
            with transaction(factory) as session:
                session.execute(text("INSERT INTO t VALUES (2)"))
        except BaseException as exc:  # recorded for the assertion below
            errors.append(exc)

    one = threading.Thread(target=first)
    one.start()
    assert holding.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)  # without turns it fails within milliseconds
    assert two.is_alive() and not errors, errors
    release.set()
    one.join(10)
    two.join(10)
    assert not errors, errors
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT x FROM t")).scalars()) == [1, 2]
    engine.dispose()


def test_without_a_turn_sqlite_refuses_the_second_writer(tmp_path: Path) -> None:
    """The premise of the test above: two connections meet SQLite's lock."""
    path = tmp_path / "plain.db"
    a = sqlite3.connect(path, timeout=0, isolation_level=None)
    b = sqlite3.connect(path, timeout=0, isolation_level=None)
    a.execute("CREATE TABLE t (x INTEGER)")
    a.execute("BEGIN IMMEDIATE")
    try:
        b.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
    else:
        raise AssertionError("SQLite let two writers in")
    finally:
        a.execute("ROLLBACK")
        a.close()
        b.close()


HOLDER = """
import sys
from sqlalchemy import create_engine, event, text
from replygate.store.db import session_factory, transaction
engine = create_engine(sys.argv[1], connect_args={"timeout": 0, "isolation_level": None})
event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
with transaction(session_factory(engine)) as session:
    session.execute(text("INSERT INTO t VALUES (1)"))
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_writer_of_another_process_waits_for_its_turn(tmp_path: Path) -> None:
    """``serve`` files in a process of its own beside the gateway's: with SQLite's busy
    timeout at 0, a writer of another process that reached SQLite's lock would fail
    at once; it waits on the file's turn (``<file>.write-turn``) instead."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = create_engine(url, connect_args={"timeout": 0, "isolation_level": None})
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        errors: list[BaseException] = []

        def write() -> None:
            try:
                with transaction(session_factory(engine)) as session:
                    session.execute(text("INSERT INTO t VALUES (2)"))
            except BaseException as exc:  # recorded for the assertion below
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(0.5)  # without the file's turn it fails within milliseconds
        assert writer.is_alive() and not errors, errors
        assert holder.stdin is not None
        holder.stdin.write(b"\n")
        holder.stdin.flush()
        writer.join(10)
        assert not errors, errors
    finally:
        holder.kill()
        holder.wait()
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT x FROM t")).scalars()) == [1, 2]
    engine.dispose()
