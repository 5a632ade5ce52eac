"""The pipe ingress: ``replygate ingest --rcpt ADDRESS [--sender ADDRESS] < message.eml``.

For a Postfix ``pipe`` transport (or any MTA that hands a message to a
command). The same checks and the same durable enqueue as the SMTP handler
(``intake``), answered with sysexits codes the MTA understands: 0 accepted,
67 unknown recipient and 77 refused (the MTA bounces, quoting our reason),
75 try again later (the MTA keeps the message and retries). Its log line is
the gateway's ``inbound.mail``, with the same fingerprints (``logged``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import intake
from replygate.errors import InboundRefused
from replygate.gateway import logged, replies
from replygate.gateway.authentication import Authenticator
from replygate.gateway.replies import Condition
from replygate.logs import get_logger
from replygate.store.models import utcnow

log = get_logger("replygate.gateway")


class IngestResult(NamedTuple):
    """The exit code and the one line for stderr (empty when accepted)."""

    code: int
    reason: str


def ingest(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    rcpt: str,
    sender: str | None = "",
    raw: bytes,
    clock: Callable[[], datetime] = utcnow,
    client_ip: str | None = None,
    helo: str | None = None,
) -> IngestResult:
    """Check and durably queue one message for one recipient; never raises for a refusal.

    ``client_ip`` and ``helo`` are the sending client's, as the MTA in front
    saw them (Postfix: ``${client_address}``, ``${client_helo}``): without
    them SPF is not checked under ``mail_auth = verify``.
    """
    started = time.perf_counter()
    fields: dict[str, Any] = {
        "via": "pipe",
        "mail_from": intake.envelope_sender(sender),
        "rcpt": [logged.address(settings, rcpt)],
        "size": len(raw),
    }
    try:
        recipient = intake.check_recipient(factory, settings, rcpt, now=clock())
        prepared = Authenticator(settings).prepare(
            raw, client_ip=client_ip or None, helo=helo, mail_from=fields["mail_from"]
        )
        accepted = intake.accept(
            factory,
            settings,
            mail_from=fields["mail_from"],
            recipients=[recipient],
            raw=prepared.raw,
            peer="pipe",
            via="pipe",
            authentication=prepared.decision,
        )
    except InboundRefused as exc:
        return _finish(settings, replies.condition_for(exc), exc, rcpt, fields, started)
    except intake.StoreUnavailable as exc:
        condition = replies.store_condition(exc)
        return _finish(settings, condition, str(exc), rcpt, fields, started)
    fields.update(queue_ids=accepted.queue_ids, message_id=accepted.message_id)
    return _finish(settings, Condition.ACCEPTED, None, rcpt, fields, started)


def _finish(
    settings: Settings,
    condition: Condition,
    reason: InboundRefused | str | None,
    rcpt: str,
    fields: dict[str, Any],
    started: float,
) -> IngestResult:
    """Write the canonical line for the message and build the exit code and stderr line."""
    reply = replies.reply(condition)
    decision = {0: "accepted", replies.EX_TEMPFAIL: "deferred"}.get(reply.exit_code, "refused")
    shown = {**fields, "mail_from": logged.address(settings, fields["mail_from"])}
    log_at = log.warning if decision == "deferred" else log.info
    log_at(
        "inbound.mail",
        decision=decision,
        condition=str(condition),
        reply=f"{reply.code} {reply.status}",
        exit_code=reply.exit_code,
        reason=logged.reason(settings, reason),
        ms=round((time.perf_counter() - started) * 1000, 1),
        **shown,
    )
    if reply.exit_code == replies.EX_OK:
        return IngestResult(reply.exit_code, "")
    text = reply.describe(rcpt, limit=settings.max_message_size)
    return IngestResult(reply.exit_code, text)
