"""The portal as an ASGI app: its routes, error pages, sessions and headers.

The pages live in ``account_pages``, ``message_pages`` and ``staff_pages``,
thin handlers over the domain core (``Messaging`` and ``Workspace``); each
checks who is asking, validates the form's CSRF token, runs the core call in
a worker thread and renders a template.
"""

from __future__ import annotations

import contextlib
from urllib.parse import quote, urlencode

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from replygate.config import Settings
from replygate.errors import SealBroken
from replygate.portal.account_pages import AccountPages
from replygate.portal.audit_pages import AuditPages
from replygate.portal.message_pages import MessagePages
from replygate.portal.pages import STATIC_DIR, LoginRequired
from replygate.portal.security import AuditOrigin, SecurityHeaders
from replygate.portal.staff_pages import StaffPages


class Portal(AccountPages, MessagePages, StaffPages, AuditPages):
    """Every page, bound to one store, one ``Messaging`` and one settings object."""

    # -- errors ---------------------------------------------------------------------------

    async def on_login_required(self, request: Request, exc: Exception) -> Response:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        if request.method != "GET":
            target = "/inbox"
        return self.redirect("/login?" + urlencode({"next": target}, quote_via=quote))

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        try:
            current = await self.current(request) if "session" in request.scope else None
        except Exception:  # the error page must render even when the store is down
            current = None
        title = {403: "Not allowed", 404: "Not found", 405: "Not allowed"}.get(
            exc.status_code, "Something went wrong"
        )
        context = {"title": title, "detail": exc.detail if exc.status_code != 405 else title}
        if current is None:
            with contextlib.suppress(Exception):  # as above: it goes out without the name
                context["org_name"] = await self.org_name()
        response = self.render(
            request, "error.html", context, current=current, status=exc.status_code
        )
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_seal_broken(self, request: Request, exc: Exception) -> Response:
        """A stored value that does not open (logged as ``store.seal_broken`` where it was
        read): an error page saying so, never the page with the text left out."""
        return await self.on_http_error(
            request,
            HTTPException(
                500,
                "Part of this page is stored encrypted and could not be decrypted, so it "
                "is not shown. The operator has been told; please try again later.",
            ),
        )

    async def favicon(self, request: Request) -> Response:
        """The icon, for browsers and tools that ask for it without reading the page."""
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    # -- assembly -------------------------------------------------------------------------

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.home),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/login/code", self.code_page, methods=["GET"]),
            Route("/login/code", self.code, methods=["POST"]),
            Route("/login/enrol", self.enrol_page, methods=["GET"]),
            Route("/login/enrol", self.enrol, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/session/keep-alive", self.keep_alive, methods=["POST"]),
            Route("/password", self.password_page, methods=["GET"]),
            Route("/password", self.change_password, methods=["POST"]),
            Route("/inbox", self.inbox),
            Route("/sent", self.sent),
            Route("/threads/{thread_id:int}", self.thread),
            Route("/threads/{thread_id:int}/reply", self.reply, methods=["POST"]),
            Route("/threads/{thread_id:int}/placement", self.placement, methods=["POST"]),
            Route("/attachments/{attachment_id:int}", self.attachment),
            Route("/compose", self.compose_page, methods=["GET"]),
            Route("/compose", self.compose, methods=["POST"]),
            Route("/canned", self.canned_index),
            Route("/canned/new", self.canned_form, methods=["GET"]),
            Route("/canned/new", self.canned_save, methods=["POST"]),
            Route("/canned/{canned_id:int}", self.canned_form, methods=["GET"]),
            Route("/canned/{canned_id:int}", self.canned_save, methods=["POST"]),
            Route("/canned/{canned_id:int}/delete", self.canned_delete, methods=["POST"]),
            Route("/settings", self.settings_page, methods=["GET"]),
            Route("/settings/organisation", self.settings_organisation, methods=["POST"]),
            Route("/settings/convenience", self.settings_convenience, methods=["POST"]),
            Route("/favicon.ico", self.favicon),
            Route("/audit", self.access_history),
            Route("/settings/receipts", self.settings_receipts, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]


def create_app(settings: Settings, factory: sessionmaker[Session]) -> Starlette:
    """The portal as an ASGI app over one store; ``serve`` runs it with uvicorn.

    X-Forwarded-For and -Proto are believed only from ``trusted_proxies``
    (uvicorn's own middleware, outermost, sets the client from them): from
    anyone else they would let a guesser pick the address its failed logins
    count against. The cookie lives no longer than a session may
    (``session_max_seconds``); the server decides when it ends.
    """
    portal = Portal(settings, factory)
    https = portal.https
    proxies = settings.trusted_proxy_networks
    forwarded = [Middleware(ProxyHeadersMiddleware, trusted_hosts=list(proxies))] if proxies else []
    app = Starlette(
        routes=portal.routes(),
        middleware=[
            *forwarded,
            Middleware(AuditOrigin),
            Middleware(SecurityHeaders, https=https),
            Middleware(
                SessionMiddleware,
                secret_key=settings.secret_key,
                session_cookie="__Host-replygate" if https else "replygate_session",
                max_age=settings.session_max_seconds,
                same_site="lax",
                https_only=https,
            ),
        ],
        exception_handlers={
            HTTPException: portal.on_http_error,
            LoginRequired: portal.on_login_required,
            SealBroken: portal.on_seal_broken,
        },
    )
    app.state.portal = portal
    return app
