"""Reading and writing messages: inbox, sent, a thread, its files, replies, pins and
archive, compose.

A thread or attachment the viewer does not take part in answers 404, as one
that does not exist; files that came by email always download, and only a
few harmless types keep their own content type.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from replygate.core.placement import Change, InboxFilter
from replygate.core.workspace import SignedIn
from replygate.errors import Invalid, NotFound
from replygate.portal.pages import MAX_BODY_CHARS, Pages, page_number, sentence
from replygate.portal.security import safe_next

FILTER_LABELS = {
    InboxFilter.ALL: "All",
    InboxFilter.UNREAD: "Unread",
    InboxFilter.PINNED: "Pinned",
    InboxFilter.ARCHIVED: "Archived",
}
CHANGE_DONE = {
    Change.PIN: "Pinned to the top of your inbox.",
    Change.UNPIN: "Unpinned.",
    Change.ARCHIVE: "Archived: it comes back when someone writes.",
    Change.UNARCHIVE: "Back in your inbox.",
}

# Types a browser may show as they are; anything else downloads as octet-stream.
INLINE_SAFE_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/gif"})


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the RFC 6266 UTF-8 name."""
    ascii_name = (
        "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
        or "attachment"
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def inbox_filter(request: Request) -> InboxFilter:
    """The inbox view a link asks for (``?show=``); the whole inbox for anything else."""
    try:
        return InboxFilter(request.query_params.get("show", InboxFilter.ALL))
    except ValueError:
        return InboxFilter.ALL


class MessagePages(Pages):
    # -- reading --------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return self.redirect("/inbox")

    async def inbox(self, request: Request) -> Response:
        current = await self.require(request)
        page = page_number(request)
        view = inbox_filter(request)
        rows, more = await self.call(self.workspace.inbox, current.viewer.id, page, view)
        context = {
            "section": "inbox",
            "rows": rows,
            "page": page,
            "more": more,
            "show": view,
            "filters": FILTER_LABELS,
            "here": request.url.path + ("?" + request.url.query if request.url.query else ""),
        }
        return self.render(request, "inbox.html", context, current=current)

    async def sent(self, request: Request) -> Response:
        current = await self.require(request)
        page = page_number(request)
        rows, more = await self.call(self.workspace.sent, current.viewer.id, page)
        context = {"section": "sent", "rows": rows, "page": page, "more": more}
        return self.render(request, "sent.html", context, current=current)

    async def thread(self, request: Request) -> Response:
        me = (await self.require(request)).viewer
        thread_id = request.path_params["thread_id"]
        try:
            view = await self.call(self.workspace.read_thread, thread_id, me)
        except NotFound as exc:
            raise HTTPException(404, "There is no such conversation.") from exc
        current = await self.current(request)  # unread count after marking this one read
        context = {"section": "inbox", "thread": view, "max_body": MAX_BODY_CHARS}
        return self.render(request, "thread.html", context, current=current)

    async def attachment(self, request: Request) -> Response:
        """Download a file that came with a reply: participants only, never rendered inline."""
        me = (await self.require(request)).viewer
        attachment_id = request.path_params["attachment_id"]
        try:
            found = await self.call(self.workspace.attachment, attachment_id, me)
        except NotFound as exc:
            raise HTTPException(404, "There is no such file.") from exc
        return Response(
            found.data,
            media_type=found.content_type
            if found.content_type in INLINE_SAFE_TYPES
            else "application/octet-stream",
            headers={
                "Content-Disposition": content_disposition(found.filename),
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-store",
            },
        )

    async def placement(self, request: Request) -> Response:
        """Pin, unpin, archive or unarchive a thread for the viewer, then go back."""
        me = (await self.require(request)).viewer
        form = await self.form(request)
        thread_id = request.path_params["thread_id"]
        try:
            what = Change(str(form.get("change", "")))
        except ValueError as exc:
            raise HTTPException(400, "Choose pin, unpin, archive or unarchive.") from exc
        try:
            await self.call(self.workspace.change_placement, thread_id, me, what)
        except NotFound as exc:
            raise HTTPException(404, "There is no such conversation.") from exc
        self.flash(request, CHANGE_DONE[what])
        return self.redirect(safe_next(str(form.get("next", ""))))

    async def reply(self, request: Request) -> Response:
        me = (await self.require(request)).viewer
        form = await self.form(request)
        thread_id = request.path_params["thread_id"]
        body = str(form.get("body", ""))
        receipt = form.get("receipt") == "yes"
        if len(body) > MAX_BODY_CHARS:
            raise HTTPException(413, f"A message has at most {MAX_BODY_CHARS} characters.")
        try:
            message_id = await self.call(
                lambda: self.messaging.reply(
                    thread_id=thread_id, author=me.email, body=body, read_receipt=receipt
                )
            )
        except NotFound as exc:
            raise HTTPException(404, "There is no such conversation.") from exc
        except Invalid as exc:
            self.flash(request, sentence(exc), "error")
            return self.redirect(f"/threads/{thread_id}#reply")
        self.flash(request, "Reply sent.")
        return self.redirect(f"/threads/{thread_id}#m{message_id}")

    # -- compose --------------------------------------------------------------------------

    async def compose_page(self, request: Request) -> Response:
        current = await self.require(request)
        values: dict[str, Any] = {
            "to": request.query_params.getlist("to"),
            "subject": request.query_params.get("subject", ""),
            "body": request.query_params.get("body", ""),
            "canned": request.query_params.get("canned", ""),
            "receipt": (await self.call(self.workspace.organisation)).read_receipts_default,
        }
        if values["canned"].isdigit() and current.viewer.is_staff:
            try:
                chosen = await self.call(self.workspace.canned_response, int(values["canned"]))
            except NotFound:
                pass
            else:
                values["body"] = chosen.body
                values["subject"] = chosen.subject or values["subject"]
        return await self._compose(request, current, values)

    async def _compose(
        self,
        request: Request,
        current: SignedIn,
        values: dict[str, Any],
        *,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        me = current.viewer
        circles, people = await self.call(self.workspace.recipients, me)
        canned = await self.call(self.workspace.canned_responses) if me.is_staff else []
        context = {
            "section": "compose",
            "circles": circles,
            "people": people,
            "canned": canned,
            "values": values,
            "error": error,
            "max_body": MAX_BODY_CHARS,
        }
        return self.render(request, "compose.html", context, current=current, status=status)

    async def compose(self, request: Request) -> Response:
        current = await self.require(request)
        me = current.viewer
        form = await self.form(request)
        to = [str(v) for v in form.getlist("to") if str(v).strip()]
        values: dict[str, Any] = {
            "to": to,
            "subject": str(form.get("subject", "")),
            "body": str(form.get("body", "")),
            "canned": str(form.get("canned", "")),
            "receipt": form.get("receipt") == "yes",
        }
        if len(values["body"]) > MAX_BODY_CHARS:
            error = f"A message has at most {MAX_BODY_CHARS} characters."
            return await self._compose(request, current, values, error=error, status=400)
        try:
            result = await self.call(
                lambda: self.messaging.send(
                    sender=me.email,
                    to=to,
                    subject=values["subject"],
                    body=values["body"],
                    read_receipt=values["receipt"],
                )
            )
        except (Invalid, NotFound) as exc:
            return await self._compose(request, current, values, error=sentence(exc), status=400)
        if len(result.threads) == 1:
            self.flash(request, "Message sent.")
            return self.redirect(f"/threads/{result.threads[0].id}")
        self.flash(
            request,
            f"Message sent to {len(result.threads)} people, each in a private conversation.",
        )
        return self.redirect("/sent")
