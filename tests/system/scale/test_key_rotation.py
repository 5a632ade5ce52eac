"""``keys rotate`` while ``serve`` files replies: nothing is lost, every reply is
filed once and opens, and no stored value is left on the old key."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.store.models import InboundMail, Message
from tests.helpers import free_port, port_open, wait_for
from tests.system.scale.conftest import (
    REPLYGATE,
    Processes,
    new_message_id,
    reply,
    seed_threads,
    send_one,
)

THREADS = 10
PER_THREAD = 10
ROTATE_AFTER = 20


def _filed(sessions: sessionmaker[Session]) -> Counter[str | None]:
    with sessions() as session:
        return Counter(
            session.scalars(select(Message.email_message_id).where(Message.source == "email"))
        )


def test_keys_rotate_under_load_loses_nothing_and_leaves_nothing_on_the_old_key(
    settings: Settings, sessions: sessionmaker[Session], processes: Processes
) -> None:
    threads = seed_threads(sessions, settings, THREADS)
    todo = [
        (threads.addresses[i], f"Reply {k} to thread {i}.", new_message_id())
        for k in range(PER_THREAD)
        for i in range(THREADS)
    ]
    port = free_port()
    processes.start("serve", "--smtp", f"127.0.0.1:{port}", "--portal", f"127.0.0.1:{free_port()}")
    wait_for(lambda: port_open("127.0.0.1", port), timeout=30, what="serve to listen")
    acked: set[str] = set()
    rotated: list[subprocess.CompletedProcess[str]] = []
    during: list[int] = []  # replies acknowledged as the rotation began and as it ended

    def rotate() -> None:
        wait_for(lambda: len(acked) >= ROTATE_AFTER, timeout=60, what="replies before rotating")
        during.append(len(acked))
        rotated.append(
            subprocess.run(
                [REPLYGATE, "keys", "rotate"],
                env=processes.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        )
        during.append(len(acked))

    rotator = threading.Thread(target=rotate, daemon=True)
    rotator.start()

    async def send_all() -> None:
        sem = asyncio.Semaphore(8)

        async def one(address: str, body: str, mid: str) -> None:
            async with sem:
                while await send_one(port, address, reply(address, body, mid)) != 250:
                    pass
                acked.add(mid)

        await asyncio.gather(*(one(*item) for item in todo))

    asyncio.run(send_all())
    rotator.join(150)
    assert rotated and rotated[0].returncode == 0, rotated and rotated[0].stderr
    assert "key version 2 is active" in rotated[0].stdout
    print(f"rotated between the {during[0]}th and the {during[1]}th of {len(todo)} replies")
    assert during[0] < len(todo), "the rotation ran while replies came in"
    wait_for(
        lambda: len(_filed(sessions)) == len(todo),
        timeout=60,
        what="every reply filed",
    )
    filed = _filed(sessions)
    assert set(filed) == {mid for _, _, mid in todo} and set(filed.values()) == {1}
    with sessions() as session:
        assert set(session.scalars(select(InboundMail.status))) == {"filed"}
        bodies = {m.body.strip() for m in session.scalars(select(Message)) if m.source == "email"}
    assert bodies == {body for _, body, _ in todo}
    status = subprocess.run(
        [REPLYGATE, "keys", "status", "--json"],
        env=processes.env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(status.stdout)
    assert found["active"] == 2
    left = {
        f"{c['table']}.{c['column']}": c["rows"] for c in found["columns"] if set(c["rows"]) - {"2"}
    }
    assert not left, f"values left on an old key: {left}"
    assert any(c["rows"].get("2") for c in found["columns"] if c["table"] == "inbound_mail")
