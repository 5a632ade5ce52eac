"""The threading engine: claim queued mail, decide, file, notify.

Runs off the SMTP path. Each mail is processed in one transaction that
locks its queue row, writes the outcome, and (when filed) the message and the
notifications it causes — so a worker that dies midway leaves the mail
claimable again, and a mail processed twice is filed once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.errors import InboundRefused
from replygate.logs import get_logger
from replygate.messaging import Messaging
from replygate.store import inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, utcnow
from replygate.threading import classify, routing
from replygate.threading.extract import extract_from_parts
from replygate.threading.parse import parse_message
from replygate.threading.sender import same_sender

log = get_logger("replygate.engine")


@dataclass(frozen=True)
class Outcome:
    inbound_id: int
    status: str
    reason: str | None
    message_id: int | None = None


class Engine:
    """Processes the inbound queue. Safe to run many of, on many hosts."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings
        self.messaging = Messaging(factory, settings)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set, polling when the queue is empty."""
        while not stop.is_set():
            try:
                done = await asyncio.to_thread(self.run_once)
            except Exception:  # keep the worker alive; the row's status tells what failed
                log.exception("engine.loop_error")
                done = 0
            if not done:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.worker_poll_seconds)
                except TimeoutError:
                    pass

    def run_once(self, limit: int = 20) -> int:
        """Claim and process up to ``limit`` mails; returns how many were processed."""
        ids = inbound.claim(self.factory, limit=limit)
        for inbound_id in ids:
            self.process(inbound_id)
        return len(ids)

    def drain(self) -> int:
        """Process until the queue is empty (tests and the ``worker --once`` command)."""
        total = 0
        while n := self.run_once():
            total += n
        return total

    # -- one mail ---------------------------------------------------------------------------

    def process(self, inbound_id: int) -> Outcome:
        started = time.perf_counter()
        try:
            with transaction(self.factory) as session:
                row = inbound.lock(session, inbound_id)
                if row.status != "processing":
                    return Outcome(inbound_id, row.status, "not claimed; left as it is")
                outcome = self._decide(session, row)
        except Exception as exc:
            outcome = self._fail(inbound_id, exc)
        log.info(
            "inbound.processed",
            queue_id=inbound_id,
            status=outcome.status,
            reason=outcome.reason,
            message=outcome.message_id,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return outcome

    def _decide(self, session: Session, row: InboundMail) -> Outcome:
        parsed = parse_message(row.raw or b"")
        verdict = classify.classify(
            parsed, mail_from=row.mail_from, our_domain=self.settings.reply_domain
        )
        if verdict.kind != "reply":
            reason = "; ".join(verdict.reasons) or verdict.kind
            inbound.record(
                row,
                "ignored",
                reason,
                {"stage": "classify", "kind": verdict.kind, "reason": reason},
            )
            return Outcome(row.id, "ignored", reason)

        try:
            route = routing.resolve(
                session,
                row.rcpt,
                secret=self.settings.secret_key,
                reply_domain=self.settings.reply_domain,
                now=utcnow(),
            )
        except InboundRefused as exc:
            inbound.record(row, "rejected", str(exc), {"stage": "route", "refused": str(exc)})
            return Outcome(row.id, "rejected", str(exc))

        if not same_sender(parsed.from_address, route.user_email):
            reason = f"From {parsed.from_address or '(none)'} is not the address the token names"
            inbound.record(row, "rejected", reason, {"stage": "sender", "refused": reason})
            return Outcome(row.id, "rejected", reason)

        parts = extract_from_parts(parsed.text_plain, parsed.text_html)
        layers = {"stage": "extract", "layers": list(parts.layers), "degraded": parts.degraded}
        if not parts.reply.strip():
            reason = "the reply is empty once quoted text and signature are removed"
            inbound.record(row, "ignored", reason, layers)
            return Outcome(row.id, "ignored", reason)

        message = self.messaging.file_email_reply(
            session,
            thread_id=route.thread_id,
            author_id=route.user_id,
            body=parts.reply,
            quote=parts.quote,
            signature=parts.signature,
            inbound_id=row.id,
            email_message_id=parsed.message_id,
        )
        row.thread_id = route.thread_id
        if message is None:
            reason = "already filed (same Message-ID delivered again)"
            inbound.record(row, "filed", reason, {**layers, "duplicate": True})
            return Outcome(row.id, "filed", reason)
        inbound.record(row, "filed", None, {**layers, "message": message.id})
        return Outcome(row.id, "filed", None, message.id)

    def _fail(self, inbound_id: int, exc: Exception) -> Outcome:
        """Record an unexpected error on the row; it stays replayable."""
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        log.error("inbound.failed", queue_id=inbound_id, error=reason)
        with transaction(self.factory) as session:
            row = inbound.lock(session, inbound_id)
            inbound.record(row, "failed", reason, {"stage": "error", "error": reason})
        return Outcome(inbound_id, "failed", reason)
