"""Plain-words account of what happened to one inbound mail (``queue explain``).

Reads the decision records the gateway and the engine append to the queue
row; each record is a small dict with a ``stage``.
"""

from __future__ import annotations

from typing import Any


def explain(row: dict[str, Any], decisions: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"Mail {row['id']} from {row['mail_from'] or '<> (a bounce)'} to {row['rcpt']}, "
        f"received {row['received_at'][:19]} UTC, {row['size']} bytes.",
    ]
    for d in decisions:
        lines.append("- " + _sentence(d))
    final = f"Now {row['status']}"
    lines.append(final + (f": {row['reason']}." if row["reason"] else "."))
    return lines


def _sentence(d: dict[str, Any]) -> str:
    stage = d.get("stage") or d.get("event")
    if stage == "rcpt":
        return f"The gateway accepted the recipient ({_rest(d)})."
    if stage == "data":
        return f"The gateway stored the message before answering 250 ({_rest(d)})."
    if stage == "classify":
        reasons = "; ".join(d.get("reasons") or []) or d.get("kind", "")
        text = f"Classified as {d.get('kind')}: {reasons}."
        if isinstance(d.get("address"), dict) and d["address"].get("matched"):
            a = d["address"]
            text += f" {a['user']} is now {a['address_status']} ({a['bounce_count']} hard bounces)."
        return text + " It is never filed nor notified on."
    if stage == "route":
        if "refused" in d:
            return f"The reply address was refused: {d['refused']}."
        return f"The reply address names thread {d.get('thread')} and {d.get('recipient')}."
    if stage == "sender":
        return f"The From address did not match (sender policy: {d.get('policy', 'reject')})."
    if stage == "dmarc":
        return "A trusted Authentication-Results header says DMARC failed for the From domain."
    if stage == "breaker":
        return f"Flood brake: {d.get('count')} recent replies from this sender to this address."
    if stage == "extract":
        layers = ", ".join(d.get("layers") or []) or "none needed"
        text = f"Reply extracted (rules used: {layers})"
        if d.get("degraded"):
            text += "; the time budget ran out, so a cheaper cut was used"
        if d.get("duplicate"):
            return text + "; the same mail had been filed already, so nothing new was filed."
        if d.get("message"):
            return text + f"; filed as message {d['message']}."
        return text + "."
    if stage == "operator":
        return f"An operator chose to {d.get('action')} it."
    if stage == "replay":
        return f"Replayed by an operator at {str(d.get('at'))[:19]}."
    if stage == "error":
        return f"Processing failed: {d.get('error')}."
    return f"{stage}: {_rest(d)}"


def _rest(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("stage", "event"))
