"""Filing: decide what one inbound mail is and record it, exactly once.

Each mail is decided in one transaction that locks its queue row, writes the
outcome and (when filed) the message and the notifications it causes, so a
worker that dies midway leaves the mail claimable again, and a mail decided
twice is filed once. The acceptance rules are ``mail.policy``'s, the same the
gateway applied at DATA, read from the same stored bytes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import bounces, routing
from replygate.core.intake import acceptance_policy
from replygate.core.messaging import FileUpload, Messaging
from replygate.errors import DmarcFailed, InboundRefused, SealBroken
from replygate.logs import get_logger
from replygate.mail import classify, reply_token
from replygate.mail.decisions import (
    AttachmentsRefused,
    Braked,
    Classified,
    Decision,
    DmarcRefused,
    Extracted,
    Failed,
    Routed,
    SenderRefused,
)
from replygate.mail.extract.reply import ReplyParts, extract_from_parts
from replygate.mail.extract.signatures import fallback_reason
from replygate.mail.headers import Headers, read_headers
from replygate.mail.parse import Attachment, ParsedMail, parse_message
from replygate.mail.policy import check_dmarc, files_to_keep, sender_mismatch
from replygate.store import dialect, directory, inbound, tokens
from replygate.store.db import transaction
from replygate.store.models import (
    DmarcPolicy,
    InboundMail,
    InboundStatus,
    Message,
    SenderPolicy,
    utcnow,
)

log = get_logger("replygate.engine")


@dataclass(frozen=True)
class Prepared:
    """The database-free part of deciding one mail."""

    parsed: ParsedMail
    headers: Headers
    verdict: classify.Verdict
    refused: str | None = None
    files: tuple[Attachment, ...] = ()
    parts: ReplyParts | None = None
    extract_seconds: float | None = None  # how long extraction took (the metrics' histogram)


@dataclass
class _Batch:
    """The flood brake's window and counts for a batch decided in one transaction.

    Counted once at the start of the batch, then kept up to date as its mails are filed.
    """

    since: datetime
    recent: dict[str, int]


# Why a claimed reply went back to the queue undecided.
WAITS = "put back: an earlier reply of its thread waits for a retry"


@dataclass(frozen=True)
class Outcome:
    inbound_id: int
    status: str
    reason: str | None
    message_id: int | None = None


class Filing:
    """Decides claimed inbound mail and records the outcome. Safe to run many of."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings
        self.messaging = Messaging(factory, settings)
        self.policy = acceptance_policy(settings)

    def write_batch(
        self, claimed: list[inbound.ClaimedMail], prepared: list[Prepared | Exception]
    ) -> list[Outcome]:
        """Decide and record a claimed batch in one transaction (all or nothing).

        ``claimed`` is in id order, several replies of a thread among them:
        each is decided after the one before it. A reply that must be retried
        puts the later replies of its thread back in the queue unprocessed,
        where they wait for it (``inbound.put_back``).
        """
        outcomes: list[Outcome] = []
        failures: list[tuple[int, str, str]] = []
        retried: set[int] = set()  # threads whose reply waits for a retry
        with transaction(self.factory) as session:
            rows = inbound.lock_many(session, [mail.id for mail in claimed])
            batch = self._prefetch(session, claimed, rows, prepared)
            for mail, prep in zip(claimed, prepared, strict=True):
                row = rows.get(mail.id)
                if row is None or row.status != InboundStatus.PROCESSING:
                    status = row.status if row is not None else "missing"
                    outcomes.append(Outcome(mail.id, status, "not claimed; left as it is"))
                elif mail.thread_id in retried:
                    inbound.put_back(row)
                    outcomes.append(Outcome(mail.id, row.status, WAITS))
                elif isinstance(prep, Exception):
                    outcome = self._record_failure(row, prep)
                    failures.append((mail.id, outcome.reason or "", outcome.status))
                    outcomes.append(outcome)
                else:
                    outcome = self._decide(session, row, prep, released=False, batch=batch)
                    if outcome.status == InboundStatus.FILED and row.received_at >= batch.since:
                        batch.recent[row.rcpt] = batch.recent.get(row.rcpt, 0) + 1
                    outcomes.append(outcome)
                if outcomes[-1].status == InboundStatus.QUEUED and mail.thread_id is not None:
                    retried.add(mail.thread_id)
            if any(mail.thread_id is not None for mail in claimed):
                # The later replies of these threads may be claimed once this commits: the
                # other engines are woken for them (PostgreSQL), not left to their next poll.
                inbound.notify_queued(session)
        for queue_id, error, then in failures:
            log.error("inbound.error", queue_id=queue_id, error=error, then=then)
        return outcomes

    def process_each(self, claimed: list[inbound.ClaimedMail]) -> list[Outcome]:
        """Decide a claimed batch one mail per transaction, in order: after its one
        transaction failed, so one bad mail never holds back the rest. As in
        ``write_batch``, a reply to be retried puts back the later ones of its thread."""
        outcomes: list[Outcome] = []
        retried: set[int] = set()
        for mail in claimed:
            if mail.thread_id in retried:
                with transaction(self.factory) as session:
                    row = inbound.lock(session, mail.id)
                    if row.status == InboundStatus.PROCESSING:
                        inbound.put_back(row)
                    outcomes.append(Outcome(mail.id, row.status, WAITS))
                continue
            outcomes.append(self.process(mail.id))
            if outcomes[-1].status == InboundStatus.QUEUED and mail.thread_id is not None:
                retried.add(mail.thread_id)
        return outcomes

    def process(self, inbound_id: int, *, released: bool = False) -> Outcome:
        """Decide one claimed mail; ``released`` is an operator's release of held mail.

        The pure work (parsing, classification, attachment policy, extraction)
        runs between a short read and the writing transaction, so the write
        lock (all of SQLite's, one row's on PostgreSQL) is held only for the
        database work itself.
        """
        started = time.perf_counter()
        try:
            with self.factory() as session:
                row = session.get(InboundMail, inbound_id)
                if row is None or row.status != InboundStatus.PROCESSING:
                    status = row.status if row is not None else "missing"
                    return Outcome(inbound_id, status, "not claimed; left as it is")
                raw, mail_from, rcpt = row.raw or b"", row.mail_from, row.rcpt
            prepared = self.prepare(raw, mail_from=mail_from, rcpt=rcpt)
            outcome = self._write(inbound_id, prepared, released=released)
        except Exception as exc:
            outcome = self._fail(inbound_id, exc)
        # Why it was decided stays on the queue row (``queue explain``), with the mail:
        # a reason may quote it (an attachment's name, a header).
        log.info(
            "inbound.processed",
            queue_id=inbound_id,
            status=outcome.status,
            message=outcome.message_id,
            released=released or None,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return outcome

    def _write(self, inbound_id: int, prepared: Prepared, *, released: bool) -> Outcome:
        """Decide and record in one transaction. A copy of the same mail filed by another
        worker at the same moment trips the dedup constraint: deciding again sees it."""
        for last_try in (False, True):
            try:
                with transaction(self.factory) as session:
                    row = inbound.lock(session, inbound_id)
                    if row.status != InboundStatus.PROCESSING:
                        return Outcome(inbound_id, row.status, "not claimed; left as it is")
                    return self._decide(session, row, prepared, released=released)
            except IntegrityError:
                if last_try:
                    raise
        raise AssertionError("unreachable")

    def _prefetch(
        self,
        session: Session,
        claimed: list[inbound.ClaimedMail],
        rows: dict[int, InboundMail],
        prepared: list[Prepared | Exception],
    ) -> _Batch:
        """Read, in a few statements, what deciding the batch's replies will ask for
        one mail at a time: reply tokens, threads and their people, tokens and
        latest notifications, mails filed already, the flood brake's counts."""
        s = self.settings
        replies = [
            row
            for mail, prep in zip(claimed, prepared, strict=True)
            if (row := rows.get(mail.id)) is not None
            and isinstance(prep, Prepared)
            and prep.verdict.kind == "reply"
        ]
        wanted = {
            t
            for row in replies
            if (t := reply_token.token_from_address(row.rcpt, s.reply_domain)) is not None
        }
        found = tokens.prefetch(session, wanted)
        directory.organisation(session)
        self.messaging.prefetch_replies(
            session,
            thread_ids={row.thread_id for row in found},
            inbound_ids=[row.id for row in replies],
            email_message_ids=[
                p.parsed.message_id
                for p in prepared
                if isinstance(p, Prepared) and p.parsed.message_id
            ],
        )
        since = utcnow() - timedelta(minutes=s.breaker_window_minutes)
        recent = inbound.recent_filed_many(session, {row.rcpt for row in replies}, since=since)
        return _Batch(since=since, recent=recent)

    def prepare(self, raw: bytes, *, mail_from: str, rcpt: str) -> Prepared:
        """Everything about the mail that needs no database: pure and side-effect free."""
        s = self.settings
        parsed = parse_message(raw)
        headers = read_headers(raw)
        verdict = classify.classify(
            parsed, mail_from=mail_from, our_domain=s.reply_domain, rcpt=rcpt
        )
        if verdict.kind != "reply":
            return Prepared(parsed, headers, verdict)
        try:
            files = files_to_keep(self.policy, parsed.attachments)
        except InboundRefused as exc:
            return Prepared(parsed, headers, verdict, refused=str(exc))
        started = time.perf_counter()
        parts = extract_from_parts(parsed.text_plain, parsed.text_html)
        took = time.perf_counter() - started
        return Prepared(
            parsed, headers, verdict, files=tuple(files), parts=parts, extract_seconds=took
        )

    def _decide(
        self,
        session: Session,
        row: InboundMail,
        prepared: Prepared,
        *,
        released: bool,
        batch: _Batch | None = None,
    ) -> Outcome:
        """The pipeline: classify, route, check the sender, brake floods, extract, file."""
        s = self.settings
        parsed, verdict = prepared.parsed, prepared.verdict
        if verdict.kind != "reply":
            reason = "; ".join(verdict.reasons) or verdict.kind
            decision = Classified(verdict.kind, list(verdict.reasons))
            if verdict.kind == "bounce" and verdict.bounce is not None:
                address = bounces.record_bounce(
                    session, verdict.bounce, parsed, rcpt=row.rcpt, settings=s, at=row.received_at
                )
                decision = dataclasses.replace(decision, address=address)
            return self._finish(row, InboundStatus.IGNORED, reason, decision)

        try:
            route = routing.resolve(
                session, row.rcpt, secret=s.secret_key, reply_domain=s.reply_domain, now=utcnow()
            )
        except InboundRefused as exc:
            return self._finish(row, InboundStatus.REJECTED, str(exc), Routed(refused=str(exc)))
        # Noted with the outcome, not now: one UPDATE of the queue row per mail, not two.
        routed = Routed(thread=route.thread_id, recipient=route.user_email)
        with session.no_autoflush:
            row.thread_id = route.thread_id
            inbound.note(row, routed.to_record())

        if not released:
            org = directory.organisation(session)
            policy = org.sender_policy
            mismatch = sender_mismatch(self.policy, prepared.headers, [route.user_email])
            if mismatch is not None:
                status = (
                    InboundStatus.HELD if policy == SenderPolicy.HOLD else InboundStatus.REJECTED
                )
                return self._finish(row, status, mismatch, SenderRefused(policy))
            try:
                require_pass = org.dmarc_policy == DmarcPolicy.REQUIRE_PASS
                check_dmarc(self.policy, prepared.headers, require_pass=require_pass)
            except DmarcFailed as exc:
                return self._finish(row, InboundStatus.REJECTED, str(exc), DmarcRefused())
            if batch is not None:
                flood = batch.recent.get(row.rcpt, 0)
            else:
                flood = inbound.recent_filed(
                    session,
                    rcpt=row.rcpt,
                    since=utcnow() - timedelta(minutes=s.breaker_window_minutes),
                )
            if flood >= s.breaker_max_replies:
                reason = (
                    f"{flood} replies to this reply address (from {route.user_email}) in "
                    f"{s.breaker_window_minutes} minutes; held until an operator releases it"
                )
                return self._finish(row, InboundStatus.HELD, reason, Braked(flood))

        if prepared.refused is not None:
            return self._finish(row, InboundStatus.REJECTED, prepared.refused, AttachmentsRefused())
        parts, files = prepared.parts, prepared.files
        assert parts is not None  # a reply that passed the attachment policy was extracted
        layers = Extracted(list(parts.layers), parts.degraded)
        body, signature = parts.reply, parts.signature
        # Never lose the person's words: a reply cut to nothing (or to a sign-off) while
        # the unquoted text held more files the unquoted text, and says so.
        why = fallback_reason(parts.reply, parts.signature, parts.unquoted)
        if why is not None:
            body, signature = parts.unquoted.strip("\n"), ""
            layers = dataclasses.replace(
                layers, fallback=f"{why} once quoted text and signature were removed"
            )
        if not body.strip():
            reason = "the reply is empty once quoted text and signature are removed"
            return self._finish(row, InboundStatus.IGNORED, reason, layers)

        message = self.messaging.file_email_reply(
            session,
            thread_id=route.thread_id,
            author_id=route.user_id,
            body=body,
            quote=parts.quote,
            signature=signature,
            inbound_id=row.id,
            email_message_id=parsed.message_id,
            body_html=parsed.text_html if parsed.text_plain is None else None,
            attachments=[FileUpload(f.filename, f.content_type, f.payload) for f in files],
        )
        if message is None:
            own = _filed_from(session, row.id)
            if own is not None:
                # A replay of mail filed before: the replay is a decision of its own in
                # the history, and the reason the mail had stays as it was.
                return self._finish(
                    row,
                    InboundStatus.FILED,
                    row.reason,
                    dataclasses.replace(layers, duplicate=True, message=own),
                )
            reason = "already filed (same Message-ID delivered again)"
            return self._finish(
                row, InboundStatus.FILED, reason, dataclasses.replace(layers, duplicate=True)
            )
        self._finish(
            row, InboundStatus.FILED, None, dataclasses.replace(layers, message=message.id)
        )
        return Outcome(row.id, InboundStatus.FILED, None, message.id)

    @staticmethod
    def _finish(
        row: InboundMail, status: InboundStatus, reason: str | None, decision: Decision
    ) -> Outcome:
        inbound.record(row, status, reason, decision.to_record())
        return Outcome(row.id, status, reason)

    def _fail(self, inbound_id: int, exc: Exception) -> Outcome:
        """Record an unexpected error: retried later, quarantined as ``failed``
        after ``worker_max_attempts``; either way it stays replayable."""
        with transaction(self.factory) as session:
            outcome = self._record_failure(inbound.lock(session, inbound_id), exc)
        log.error("inbound.error", queue_id=inbound_id, error=outcome.reason, then=outcome.status)
        return outcome

    def _record_failure(self, row: InboundMail, exc: Exception) -> Outcome:
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        if isinstance(exc, SealBroken):
            # Retrying opens the same bytes with the same keys: an operator must look.
            status, reason = InboundStatus.HELD, inbound.SEAL_BROKEN_REASON
            row.claimed_at = row.claimed_by = None
        elif dialect.unreachable(exc):
            # The database's trouble, not the mail's: back in line at once, uncounted.
            status = InboundStatus.QUEUED
            row.claimed_at, row.attempts = None, max(0, row.attempts - 1)
        elif row.attempts < self.settings.worker_max_attempts:
            status = InboundStatus.QUEUED
            row.claimed_at = utcnow()  # retried once the retry delay has passed
        else:
            status = InboundStatus.FAILED
        inbound.record(row, status, reason, Failed(reason).to_record())
        return Outcome(row.id, status, reason)


def _filed_from(session: Session, inbound_id: int) -> int | None:
    """The message this queue row filed, if it filed one (a replay of filed mail finds it)."""
    return session.scalars(
        select(Message.id).where(Message.inbound_id == inbound_id).order_by(Message.id)
    ).first()
