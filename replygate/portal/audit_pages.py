"""For admins: the access history of a thread or of a person, from the audit trail."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from replygate.core.audit import UnknownUser
from replygate.portal.pages import Pages

HISTORY_LIMIT = 500


class AuditPages(Pages):
    async def access_history(self, request: Request) -> Response:
        """``/audit?thread=ID`` or ``/audit?user=EMAIL``: the newest events first."""
        current = await self.require(request, admin=True)
        thread = request.query_params.get("thread", "").strip()
        user = request.query_params.get("user", "").strip() or None
        if thread and not thread.isdigit():
            raise HTTPException(404, "There is no such thread.")
        thread_id = int(thread) if thread else None
        try:
            rows = await self.call(
                lambda: self.workspace.access_history(
                    thread_id=thread_id, user=user, limit=HISTORY_LIMIT
                )
            )
        except UnknownUser as exc:
            raise HTTPException(404, "There is no such person.") from exc
        context = {
            "section": "settings",
            "rows": rows,
            "thread_id": thread_id,
            "user": user,
            "limit": HISTORY_LIMIT,
        }
        return self.render(request, "audit.html", context, current=current)
