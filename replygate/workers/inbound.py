"""The threading engine: claim queued mail, decide, file, notify.

Runs off the SMTP path. Each mail is processed in one transaction that
locks its queue row, writes the outcome, and (when filed) the message and the
notifications it causes — so a worker that dies midway leaves the mail
claimable again, and a mail processed twice is filed once.

An idle engine waits for a wake-up, with polling as the fallback: a gateway
in the same process sets the ``wake`` event once it has committed mail; on
PostgreSQL the engine also LISTENs on ``inbound.CHANNEL``, which every
process that queues mail notifies in the queuing transaction. A lost
listener connection is logged once and retried with backoff; meanwhile the
poll (``worker_poll_seconds``) files the mail, as it does for SQLite
gateways in other processes, which cannot notify.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import bounces, routing
from replygate.core.messaging import FileUpload, Messaging
from replygate.errors import InboundRefused
from replygate.logs import get_logger
from replygate.mail import attachments, classify, reply_token
from replygate.mail.extract.reply import ReplyParts, extract_from_parts
from replygate.mail.parse import Attachment, ParsedMail, parse_message
from replygate.mail.sender import dmarc_failed, same_sender
from replygate.store import directory, inbound, tokens
from replygate.store.db import bound_engine, sqlite_read_factory, transaction
from replygate.store.models import InboundMail, utcnow
from replygate.workers.waiting import first_of

log = get_logger("replygate.engine")


@dataclass(frozen=True)
class Prepared:
    """The database-free part of deciding one mail."""

    parsed: ParsedMail
    verdict: classify.Verdict
    refused: str | None = None
    files: tuple[Attachment, ...] = ()
    parts: ReplyParts | None = None


@dataclass
class _Batch:
    """The flood brake's window and counts for a batch decided in one transaction.

    Counted once at the start of the batch, then kept up to date as its mails are filed.
    """

    since: datetime
    recent: dict[tuple[str, str], int]


@dataclass(frozen=True)
class Outcome:
    inbound_id: int
    status: str
    reason: str | None
    message_id: int | None = None


class InboundWorker:
    """Processes the inbound queue. Safe to run many of, on many hosts."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings
        self.messaging = Messaging(factory, settings)
        self.peek = sqlite_read_factory(factory)

    # -- the loop ---------------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event,
        *,
        notified: asyncio.Event | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Process until ``stop`` is set; when the queue is empty, wait for a wake-up or a poll.

        ``notified`` is set after a batch that filed a reply (and so wrote its
        notifications to the outbox): the outbound worker of this process waits
        on it, and delivers without waiting for its next poll. ``wake`` is set
        by whoever queued mail in this process (the gateway's writer); on
        PostgreSQL a listener for ``inbound.CHANNEL`` sets it too.
        """
        wake = wake or asyncio.Event()
        listener = None
        url = _listen_url(self.factory)
        if url is not None:
            listener = asyncio.create_task(listen_for_mail(url, wake, stop))
        try:
            while not stop.is_set():
                wake.clear()  # set again during the batch: the next one starts at once
                try:
                    outcomes = await asyncio.to_thread(self._run_batch)
                except Exception:  # keep the worker alive; the row's status tells what failed
                    log.exception("engine.loop_error")
                    outcomes = []
                if notified is not None and any(o.message_id is not None for o in outcomes):
                    notified.set()  # from the loop's thread: asyncio.Event is not thread-safe
                if not outcomes:
                    await first_of(stop, wake, timeout=self.settings.worker_poll_seconds)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    def run_once(self, limit: int = 20) -> int:
        """Claim and process up to ``limit`` mails; returns how many were processed."""
        return len(self._run_batch(limit))

    def _run_batch(self, limit: int = 20) -> list[Outcome]:
        """Claim and process up to ``limit`` mails; returns their outcomes.

        A claimed batch never holds two replies to one thread (the claim waits
        for earlier ones), so the whole batch is decided and filed in one
        transaction: one commit and a handful of statements per mail instead
        of a transaction each. If that transaction fails for any reason, it
        rolls back whole and each mail is processed again in its own
        transaction, so one bad mail never holds back the rest.
        """
        if self.peek is not None and not inbound.any_claimable(
            self.peek, lease_seconds=self.settings.worker_lease_seconds
        ):
            return []
        claimed = inbound.claim_mail(
            self.factory, limit=limit, lease_seconds=self.settings.worker_lease_seconds
        )
        if not claimed:
            return []
        started = time.perf_counter()
        prepared: list[Prepared | Exception] = []
        for mail in claimed:
            try:
                prepared.append(self._prepare(mail.raw, mail_from=mail.mail_from, rcpt=mail.rcpt))
            except Exception as exc:  # recorded on the row with the batch
                prepared.append(exc)
        try:
            outcomes = self._write_batch(claimed, prepared)
        except Exception as exc:
            log.warning(
                "engine.batch_failed", size=len(claimed), error=f"{type(exc).__name__}: {exc}"
            )
            return [self.process(mail.id) for mail in claimed]
        ms = round((time.perf_counter() - started) * 1000, 1)
        for outcome in outcomes:
            log.info(
                "inbound.processed",
                queue_id=outcome.inbound_id,
                status=outcome.status,
                reason=outcome.reason,
                message=outcome.message_id,
                batch=len(claimed),
                ms=ms,
            )
        return outcomes

    def _write_batch(
        self, claimed: list[inbound.ClaimedMail], prepared: list[Prepared | Exception]
    ) -> list[Outcome]:
        """Decide and record a claimed batch in one transaction (all or nothing)."""
        outcomes: list[Outcome] = []
        failures: list[tuple[int, str, str]] = []
        with transaction(self.factory) as session:
            rows = inbound.lock_many(session, [mail.id for mail in claimed])
            batch = self._prefetch(session, claimed, rows, prepared)
            for mail, prep in zip(claimed, prepared, strict=True):
                row = rows.get(mail.id)
                if row is None or row.status != "processing":
                    status = row.status if row is not None else "missing"
                    outcomes.append(Outcome(mail.id, status, "not claimed; left as it is"))
                elif isinstance(prep, Exception):
                    outcome = self._record_failure(row, prep)
                    failures.append((mail.id, outcome.reason or "", outcome.status))
                    outcomes.append(outcome)
                else:
                    outcome = self._decide(session, row, prep, released=False, batch=batch)
                    if outcome.status == "filed" and row.received_at >= batch.since:
                        key = (row.rcpt, row.mail_from)
                        batch.recent[key] = batch.recent.get(key, 0) + 1
                    outcomes.append(outcome)
        for queue_id, error, then in failures:
            log.error("inbound.error", queue_id=queue_id, error=error, then=then)
        return outcomes

    def drain(self) -> int:
        """Process until the queue is empty (tests and the ``worker --once`` command)."""
        total = 0
        while n := self.run_once():
            total += n
        return total

    # -- one mail ---------------------------------------------------------------------------

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
                if row is None or row.status != "processing":
                    status = row.status if row is not None else "missing"
                    return Outcome(inbound_id, status, "not claimed; left as it is")
                raw, mail_from, rcpt = row.raw or b"", row.mail_from, row.rcpt
            prepared = self._prepare(raw, mail_from=mail_from, rcpt=rcpt)
            outcome = self._write(inbound_id, prepared, released=released)
        except Exception as exc:
            outcome = self._fail(inbound_id, exc)
        log.info(
            "inbound.processed",
            queue_id=inbound_id,
            status=outcome.status,
            reason=outcome.reason,
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
                    if row.status != "processing":
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
        recent = inbound.recent_filed_many(
            session, {(row.rcpt, row.mail_from) for row in replies}, since=since
        )
        return _Batch(since=since, recent=recent)

    def _prepare(self, raw: bytes, *, mail_from: str, rcpt: str) -> Prepared:
        """Everything about the mail that needs no database: pure and side-effect free."""
        s = self.settings
        parsed = parse_message(raw)
        verdict = classify.classify(
            parsed, mail_from=mail_from, our_domain=s.reply_domain, rcpt=rcpt
        )
        if verdict.kind != "reply":
            return Prepared(parsed, verdict)
        try:
            files = attachments.files_to_keep(
                parsed.attachments,
                max_file=s.attachment_max_bytes,
                max_total=s.attachments_total_max_bytes,
                allowed=attachments.parse_allow_list(s.attachment_types),
            )
        except InboundRefused as exc:
            return Prepared(parsed, verdict, refused=str(exc))
        parts = extract_from_parts(parsed.text_plain, parsed.text_html)
        return Prepared(parsed, verdict, files=tuple(files), parts=parts)

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
            decision = {"stage": "classify", "kind": verdict.kind, "reasons": list(verdict.reasons)}
            if verdict.kind == "bounce" and verdict.bounce is not None:
                decision["address"] = bounces.record_bounce(
                    session, verdict.bounce, rcpt=row.rcpt, settings=s
                )
            return self._finish(row, "ignored", reason, decision)

        try:
            route = routing.resolve(
                session, row.rcpt, secret=s.secret_key, reply_domain=s.reply_domain, now=utcnow()
            )
        except InboundRefused as exc:
            return self._finish(row, "rejected", str(exc), {"stage": "route", "refused": str(exc)})
        # Noted with the outcome, not now: one UPDATE of the queue row per mail, not two.
        routed = {"stage": "route", "thread": route.thread_id, "recipient": route.user_email}
        with session.no_autoflush:
            row.thread_id = route.thread_id
            inbound.note(row, routed)

        if not released:
            policy = directory.organisation(session).sender_policy
            if not same_sender(
                parsed.from_address, route.user_email, allow_plus_tags=s.sender_allow_plus_tags
            ):
                reason = (
                    f"From {parsed.from_address or '(none)'} is not {route.user_email}, "
                    "the address this reply address was issued to"
                )
                status = "held" if policy == "hold" else "rejected"
                return self._finish(row, status, reason, {"stage": "sender", "policy": policy})
            if s.trusted_authserv and dmarc_failed(
                parsed.header_all("authentication-results"),
                s.trusted_authserv,
                parsed.from_address.rpartition("@")[2] or None,
            ):
                reason = f"DMARC failed for {parsed.from_address} (trusted Authentication-Results)"
                return self._finish(row, "rejected", reason, {"stage": "dmarc", "result": "fail"})
            if batch is not None:
                flood = batch.recent.get((row.rcpt, row.mail_from), 0)
            else:
                flood = inbound.recent_filed(
                    session,
                    rcpt=row.rcpt,
                    mail_from=row.mail_from,
                    since=utcnow() - timedelta(minutes=s.breaker_window_minutes),
                )
            if flood >= s.breaker_max_replies:
                reason = (
                    f"{flood} replies from {row.mail_from} to this address in "
                    f"{s.breaker_window_minutes} minutes; held until an operator releases it"
                )
                return self._finish(row, "held", reason, {"stage": "breaker", "count": flood})

        if prepared.refused is not None:
            return self._finish(row, "rejected", prepared.refused, {"stage": "attachments"})
        parts, files = prepared.parts, prepared.files
        assert parts is not None  # a reply that passed the attachment policy was extracted
        layers = {"stage": "extract", "layers": list(parts.layers), "degraded": parts.degraded}
        if not parts.reply.strip():
            reason = "the reply is empty once quoted text and signature are removed"
            return self._finish(row, "ignored", reason, layers)

        message = self.messaging.file_email_reply(
            session,
            thread_id=route.thread_id,
            author_id=route.user_id,
            body=parts.reply,
            quote=parts.quote,
            signature=parts.signature,
            inbound_id=row.id,
            email_message_id=parsed.message_id,
            body_html=parsed.text_html if parsed.text_plain is None else None,
            attachments=[FileUpload(f.filename, f.content_type, f.payload) for f in files],
        )
        if message is None:
            reason = "already filed (same Message-ID delivered again)"
            return self._finish(row, "filed", reason, {**layers, "duplicate": True})
        self._finish(row, "filed", None, {**layers, "message": message.id})
        return Outcome(row.id, "filed", None, message.id)

    @staticmethod
    def _finish(row: InboundMail, status: str, reason: str | None, decision: dict) -> Outcome:
        inbound.record(row, status, reason, decision)
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
        if row.attempts < self.settings.worker_max_attempts:
            status = "queued"
            row.claimed_at = utcnow()  # retried once the retry delay has passed
        else:
            status = "failed"
        inbound.record(row, status, reason, {"stage": "error", "error": reason})
        return Outcome(row.id, status, reason)


LISTEN_RETRY_SECONDS = 1.0
LISTEN_RETRY_MAX_SECONDS = 30.0


def _listen_url(factory: sessionmaker[Session]) -> str | None:
    """A libpq URL for the listener when ``factory`` is bound to PostgreSQL; else None."""
    bind = bound_engine(factory)
    if bind is None or bind.dialect.name != "postgresql":
        return None
    return bind.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_mail(url: str, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """Set ``wake`` at every notification on ``inbound.CHANNEL`` until ``stop`` is set.

    A connection of its own, in autocommit, waited on by the event loop (no
    thread). When it fails (the server restarted, the backend was
    terminated) the loss is logged once, polling carries on, and connecting
    is retried with backoff; once listening again ``wake`` is set, since mail
    queued meanwhile notified nobody.
    """
    import psycopg  # the PostgreSQL driver; not needed on SQLite

    delay, lost = LISTEN_RETRY_SECONDS, False
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {inbound.CHANNEL}")
                if lost:
                    log.info("engine.listening_again", channel=inbound.CHANNEL)
                delay, lost = LISTEN_RETRY_SECONDS, False
                wake.set()
                async for _ in conn.notifies():
                    wake.set()
        except Exception as exc:  # psycopg.Error, OSError; never let the worker go down
            if not lost:
                log.warning(
                    "engine.listen_lost",
                    channel=inbound.CHANNEL,
                    error=f"{type(exc).__name__}: {exc}",
                    fallback="polling",
                )
            lost = True
        await first_of(stop, None, timeout=delay)
        delay = min(delay * 2, LISTEN_RETRY_MAX_SECONDS)
