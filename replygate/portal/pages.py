"""What every page shares: who is asking, the CSRF-checked form, templates, redirects.

The session cookie (starlette's, signed) holds the CSRF token, flashes and,
once logged in, only the random id of a session kept on the server
(``core.sessions``): no user id, no email, nothing the server believes but
that id. Handlers never wait on the database in the event loop (it is shared with the
SMTP gateway): every core call goes through ``call``, which runs it in a
worker thread. The page groups (``account_pages``, ``message_pages``,
``staff_pages``) extend ``Pages``; ``app`` assembles them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.core.receipts import moment
from replygate.core.workspace import SignedIn, Workspace
from replygate.portal.security import (
    CSRF_FIELD,
    csrf_token,
    csrf_valid,
    origin_of,
    sanitise_email_html,
)

T = TypeVar("T")

SESSION_KEY = "sid"  # the key of the session id in the cookie

MAX_BODY_CHARS = 100_000
MAX_FORM_FIELDS = 200
STATIC_DIR = Path(str(resources.files("replygate.portal") / "static"))


class LoginRequired(Exception):
    """Raised by a handler when nobody is logged in (answered by a redirect to /login)."""


class Pages:
    """The plumbing under every page, bound to one store and one settings object."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.messaging = Messaging(factory, settings)
        self.workspace = Workspace(factory, settings)
        self.https = settings.portal_url.lower().startswith("https://")
        self.trusted_origin = origin_of(settings.portal_url)
        self.templates = Environment(
            loader=PackageLoader("replygate.portal", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["iso"] = _iso
        self.templates.filters["email_html"] = lambda html: Markup(sanitise_email_html(html))
        self.templates.globals["static"] = self._static_url_builder()

    def _static_url_builder(self) -> Callable[[str], str]:
        """URLs carrying a content hash, so browsers may cache static files for long."""
        versions = {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            for path in STATIC_DIR.iterdir()
            if path.is_file()
        }
        return lambda name: f"/static/{name}?v={versions.get(name, '0')}"

    async def call(self, work: Callable[..., T], *args: Any) -> T:
        """Run a blocking core call (one transaction) in a worker thread, off the event loop."""
        return await run_in_threadpool(work, *args)

    async def current(self, request: Request) -> SignedIn | None:
        """Who is logged in (with unread count and organisation name), or None."""
        session_id = request.session.get(SESSION_KEY)
        if not isinstance(session_id, str) or not session_id:
            return None
        found = await self.call(self.workspace.signed_in, session_id)
        if found is None:
            request.session.pop(SESSION_KEY, None)
        return found

    async def org_name(self) -> str:
        """The organisation's name from the database, for pages shown before login."""
        return await self.call(self.workspace.organisation_name)

    @staticmethod
    def session_id(request: Request) -> str:
        """The id of the server-side session the cookie names ("" for none)."""
        found = request.session.get(SESSION_KEY)
        return found if isinstance(found, str) else ""

    @staticmethod
    def begin_session(request: Request, session_id: str) -> None:
        """A fresh cookie (and CSRF token) holding only the new session's id."""
        request.session.clear()
        request.session[SESSION_KEY] = session_id

    @staticmethod
    def client_address(request: Request) -> str:
        """The client's address: the peer's, or a trusted proxy's word for it.

        uvicorn's proxy-header middleware (installed by ``app`` for the
        ``trusted_proxies`` alone) has already put it in ``request.client``.
        """
        return request.client.host if request.client else "unknown"

    @staticmethod
    def user_agent(request: Request) -> str:
        return request.headers.get("user-agent", "")

    async def require(
        self, request: Request, *, staff: bool = False, admin: bool = False
    ) -> SignedIn:
        found = await self.current(request)
        if found is None:
            raise LoginRequired
        me = found.viewer
        if (admin and not me.is_admin) or (staff and not me.is_staff):
            raise HTTPException(403, f"This page is for {'admins' if admin else 'staff'} only.")
        return found

    async def form(self, request: Request) -> FormData:
        """The submitted form, refused with 403 unless its CSRF token is this session's."""
        form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
        if not csrf_valid(request, form.get(CSRF_FIELD), self.trusted_origin):
            raise HTTPException(
                403,
                "This form has expired or did not come from this site. "
                "Go back, reload the page and try again.",
            )
        return form

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        current: SignedIn | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        flashes = request.session.pop("flash", []) if "flash" in request.session else []
        page = {
            "request": request,
            "viewer": current.viewer if current else None,
            "unread": current.unread if current else 0,
            # Pages before login pass the database's name in ``context`` (``org_name``).
            "org_name": current.organisation if current else "",
            "csrf": csrf_token(request),
            "flashes": flashes,
            "idle_seconds": self.settings.session_idle_seconds,
            **context,
        }
        html = self.templates.get_template(template).render(page)
        return HTMLResponse(html, status_code=status)

    @staticmethod
    def flash(request: Request, text: str, kind: str = "ok") -> None:
        request.session["flash"] = [*request.session.get("flash", []), {"text": text, "kind": kind}]

    @staticmethod
    def redirect(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)


def page_number(request: Request) -> int:
    raw = request.query_params.get("page", "0")
    return min(int(raw), 10_000) if raw.isdigit() else 0


def sentence(exc: Exception) -> str:
    """A domain error's message as a sentence for the page."""
    text = str(exc).strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def _when(value: datetime) -> str:
    return moment(value)
