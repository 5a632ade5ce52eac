"""The portal's pages: thin handlers over ``Messaging`` and ``portal.queries``.

Each handler checks who is asking, validates the form's CSRF token, runs the
database work in a worker thread (the event loop is shared with the SMTP
gateway and must never wait on the database), and renders a template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from replygate.config import Settings
from replygate.core import accounts
from replygate.core.messaging import Messaging
from replygate.errors import Invalid, NotFound
from replygate.portal import queries
from replygate.portal.queries import Viewer
from replygate.portal.security import (
    CSRF_FIELD,
    SecurityHeaders,
    csrf_token,
    csrf_valid,
    origin_of,
    safe_next,
    sanitise_email_html,
)
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import User

T = TypeVar("T")

SESSION_MAX_AGE = 8 * 60 * 60  # idle seconds before a login expires
MAX_BODY_CHARS = 100_000
# Types a browser may show as they are; anything else downloads as octet-stream.
INLINE_SAFE_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/gif"})


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the RFC 6266 UTF-8 name."""
    ascii_name = (
        "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
        or "attachment"
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


MAX_FORM_FIELDS = 200
STATIC_DIR = Path(str(resources.files("replygate.portal") / "static"))

HIPAA_WARNING = [
    "Convenience Mode sends the full content of every message (subject, text and the "
    "sender's name) by ordinary email to each recipient, and lets recipients answer by "
    "replying to that email.",
    "Email is not a secure channel. A message may cross mail servers outside your control, "
    "may travel or be stored unencrypted, can be read by anyone with access to the "
    "recipient's mailbox or device, can be forwarded, and can reach the wrong person if an "
    "address is mistyped or out of date. Once sent it cannot be recalled.",
    "If your messages contain protected health information (PHI), the HIPAA Privacy and "
    "Security Rules let you send it by unencrypted email only to people who have been told "
    "of these risks and still prefer to be contacted this way. Your organisation remains "
    "responsible for that consent, for sending only the minimum necessary information, and "
    "for having a business associate agreement with any email provider that relays or "
    "stores these messages.",
    "Secure Mode, the default, keeps content inside this portal: notifications say only that "
    "a message is waiting. Turning Convenience Mode off again immediately voids every reply "
    "address already sent out.",
]


class LoginRequired(Exception):
    """Raised by a handler when nobody is logged in (answered by a redirect to /login)."""


class Portal:
    """The handlers, bound to one store, one ``Messaging`` and one settings object."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self.messaging = Messaging(factory, settings)
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

    # -- plumbing -------------------------------------------------------------------------

    def _static_url_builder(self) -> Callable[[str], str]:
        """URLs carrying a content hash, so browsers may cache static files for long."""
        versions = {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            for path in STATIC_DIR.iterdir()
            if path.is_file()
        }
        return lambda name: f"/static/{name}?v={versions.get(name, '0')}"

    async def db(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(session, *args)`` in one transaction, off the event loop."""

        def run() -> T:
            with transaction(self.factory) as session:
                return work(session, *args)

        return await run_in_threadpool(run)

    async def current(self, request: Request) -> tuple[Viewer, int, str] | None:
        """(viewer, unread thread count, organisation name), or None if not logged in."""
        uid, tag = request.session.get("uid"), request.session.get("tag")
        if not isinstance(uid, int) or not isinstance(tag, str):
            return None

        def load(session: Session) -> tuple[Viewer, int, str] | None:
            user = session.get(User, uid)
            if user is None or not accounts.tag_matches(user, self.settings.secret_key, tag):
                return None
            org = directory.organisation(session, default_name=self.settings.organisation_name)
            return queries.viewer(user), queries.unread_threads(session, user.id), org.name

        found = await self.db(load)
        if found is None:
            request.session.pop("uid", None)
            request.session.pop("tag", None)
        return found

    async def require(
        self, request: Request, *, staff: bool = False, admin: bool = False
    ) -> tuple[Viewer, int, str]:
        found = await self.current(request)
        if found is None:
            raise LoginRequired
        me = found[0]
        if (admin and not me.is_admin) or (staff and not me.is_staff):
            raise HTTPException(403, "This page is for staff only.")
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
        current: tuple[Viewer, int, str] | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        flashes = request.session.pop("flash", []) if "flash" in request.session else []
        page = {
            "request": request,
            "viewer": current[0] if current else None,
            "unread": current[1] if current else 0,
            "org_name": current[2] if current else self.settings.organisation_name,
            "csrf": csrf_token(request),
            "flashes": flashes,
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

    # -- accounts -------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        next_url = safe_next(request.query_params.get("next"))
        if await self.current(request) is not None:
            return self.redirect(next_url)
        return self.render(request, "login.html", {"next": next_url, "email": ""})

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        email = str(form.get("email", "")).strip()
        password = str(form.get("password", ""))
        next_url = safe_next(str(form.get("next", "")))
        address = request.client.host if request.client else "unknown"
        result = await self.db(lambda s: accounts.authenticate(s, email, password, address=address))
        if result.user is None:
            if result.throttled:
                message = (
                    "Too many failed attempts. For your security, logging in is paused for "
                    f"up to {result.retry_after // 60} minutes."
                )
                status = 429
            else:
                message, status = "That email and password do not match an account.", 401
            context = {"next": next_url, "email": email, "error": message}
            response = self.render(request, "login.html", context, status=status)
            if result.throttled:
                response.headers["retry-after"] = str(result.retry_after)
            return response
        user = result.user
        request.session.clear()  # a fresh session (and CSRF token) for the new login
        request.session["uid"] = user.id
        request.session["tag"] = accounts.session_tag(user, self.settings.secret_key)
        return self.redirect(next_url)

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        request.session.clear()
        return self.redirect("/login")

    # -- reading --------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return self.redirect("/inbox")

    async def inbox(self, request: Request) -> Response:
        current = await self.require(request)
        page = _page(request)
        rows, more = await self.db(queries.inbox, current[0].id, page)
        context = {"section": "inbox", "rows": rows, "page": page, "more": more}
        return self.render(request, "inbox.html", context, current=current)

    async def sent(self, request: Request) -> Response:
        current = await self.require(request)
        page = _page(request)
        rows, more = await self.db(queries.sent, current[0].id, page)
        context = {"section": "sent", "rows": rows, "page": page, "more": more}
        return self.render(request, "sent.html", context, current=current)

    async def thread(self, request: Request) -> Response:
        me = (await self.require(request))[0]
        thread_id = request.path_params["thread_id"]

        def load(session: Session) -> queries.ThreadView:
            return queries.read_thread(session, thread_id, directory.user(session, me.email))

        try:
            view = await self.db(load)
        except NotFound as exc:
            raise HTTPException(404, "There is no such conversation.") from exc
        current = await self.current(request)  # unread count after marking this one read
        context = {"section": "inbox", "thread": view, "max_body": MAX_BODY_CHARS}
        return self.render(request, "thread.html", context, current=current)

    async def attachment(self, request: Request) -> Response:
        """Download a file that came with a reply: participants only, never rendered inline."""
        me = (await self.require(request))[0]
        attachment_id = request.path_params["attachment_id"]

        def load(session: Session) -> tuple[str, str, bytes]:
            found = queries.attachment_for(
                session, attachment_id, directory.user(session, me.email)
            )
            return found.filename, found.content_type, found.data

        try:
            filename, content_type, data = await self.db(load)
        except NotFound as exc:
            raise HTTPException(404, "There is no such file.") from exc
        return Response(
            data,
            media_type=content_type
            if content_type in INLINE_SAFE_TYPES
            else "application/octet-stream",
            headers={
                "Content-Disposition": content_disposition(filename),
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-store",
            },
        )

    async def reply(self, request: Request) -> Response:
        me = (await self.require(request))[0]
        form = await self.form(request)
        thread_id = request.path_params["thread_id"]
        body = str(form.get("body", ""))
        if len(body) > MAX_BODY_CHARS:
            raise HTTPException(413, f"A message has at most {MAX_BODY_CHARS} characters.")
        try:
            message_id = await run_in_threadpool(
                lambda: self.messaging.reply(thread_id=thread_id, author=me.email, body=body)
            )
        except NotFound as exc:
            raise HTTPException(404, "There is no such conversation.") from exc
        except Invalid as exc:
            self.flash(request, _sentence(exc), "error")
            return self.redirect(f"/threads/{thread_id}#reply")
        self.flash(request, "Reply sent.")
        return self.redirect(f"/threads/{thread_id}#m{message_id}")

    # -- compose --------------------------------------------------------------------------

    async def compose_page(self, request: Request) -> Response:
        current = await self.require(request)
        values = {
            "to": request.query_params.getlist("to"),
            "subject": request.query_params.get("subject", ""),
            "body": request.query_params.get("body", ""),
            "canned": request.query_params.get("canned", ""),
        }
        if values["canned"].isdigit() and current[0].is_staff:
            try:
                chosen = await self.db(queries.canned_get, int(values["canned"]))
            except NotFound:
                pass
            else:
                values["body"] = chosen.body
                values["subject"] = chosen.subject or values["subject"]
        return await self._compose(request, current, values)

    async def _compose(
        self,
        request: Request,
        current: tuple[Viewer, int, str],
        values: dict[str, Any],
        *,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        me = current[0]
        circles, people = await self.db(queries.recipients, me)
        canned = await self.db(queries.canned_list) if me.is_staff else []
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
        me = current[0]
        form = await self.form(request)
        to = [str(v) for v in form.getlist("to") if str(v).strip()]
        values = {
            "to": to,
            "subject": str(form.get("subject", "")),
            "body": str(form.get("body", "")),
            "canned": str(form.get("canned", "")),
        }
        if len(values["body"]) > MAX_BODY_CHARS:
            error = f"A message has at most {MAX_BODY_CHARS} characters."
            return await self._compose(request, current, values, error=error, status=400)
        try:
            result = await run_in_threadpool(
                lambda: self.messaging.send(
                    sender=me.email, to=to, subject=values["subject"], body=values["body"]
                )
            )
        except (Invalid, NotFound) as exc:
            return await self._compose(request, current, values, error=_sentence(exc), status=400)
        if len(result.threads) == 1:
            self.flash(request, "Message sent.")
            return self.redirect(f"/threads/{result.threads[0].id}")
        self.flash(
            request,
            f"Message sent to {len(result.threads)} people, each in a private conversation.",
        )
        return self.redirect("/sent")

    # -- canned responses -----------------------------------------------------------------

    async def canned_index(self, request: Request) -> Response:
        current = await self.require(request, staff=True)
        rows = await self.db(queries.canned_list)
        context = {"section": "canned", "rows": rows}
        return self.render(request, "canned_list.html", context, current=current)

    async def canned_form(self, request: Request) -> Response:
        current = await self.require(request, staff=True)
        canned_id = request.path_params.get("canned_id")
        values = {"name": "", "subject": "", "body": ""}
        if canned_id is not None:
            try:
                c = await self.db(queries.canned_get, canned_id)
            except NotFound as exc:
                raise HTTPException(404, "There is no such canned response.") from exc
            values = {"name": c.name, "subject": c.subject, "body": c.body}
        context = {"section": "canned", "canned_id": canned_id, "values": values}
        return self.render(request, "canned_form.html", context, current=current)

    async def canned_save(self, request: Request) -> Response:
        current = await self.require(request, staff=True)
        form = await self.form(request)
        canned_id = request.path_params.get("canned_id")
        values = {k: str(form.get(k, "")) for k in ("name", "subject", "body")}
        try:
            await self.db(
                lambda s: queries.canned_save(
                    s, canned_id=canned_id, author_id=current[0].id, **values
                )
            )
        except NotFound as exc:
            raise HTTPException(404, "There is no such canned response.") from exc
        except Invalid as exc:
            context = {
                "section": "canned",
                "canned_id": canned_id,
                "values": values,
                "error": _sentence(exc),
            }
            return self.render(request, "canned_form.html", context, current=current, status=400)
        self.flash(request, f"Canned response “{' '.join(values['name'].split())}” saved.")
        return self.redirect("/canned")

    async def canned_delete(self, request: Request) -> Response:
        await self.require(request, staff=True)
        await self.form(request)
        try:
            await self.db(queries.canned_delete, request.path_params["canned_id"])
        except NotFound as exc:
            raise HTTPException(404, "There is no such canned response.") from exc
        self.flash(request, "Canned response deleted.")
        return self.redirect("/canned")

    # -- settings -------------------------------------------------------------------------

    async def settings_page(
        self, request: Request, *, error: str | None = None, status: int = 200
    ) -> Response:
        current = await self.require(request, admin=True)
        org = await self.db(queries.organisation, self.settings.organisation_name)
        context = {"section": "settings", "org": org, "warning": HIPAA_WARNING, "error": error}
        return self.render(request, "settings.html", context, current=current, status=status)

    async def settings_organisation(self, request: Request) -> Response:
        await self.require(request, admin=True)
        form = await self.form(request)
        try:
            await self.db(
                queries.rename_organisation,
                str(form.get("name", "")),
                self.settings.organisation_name,
            )
        except Invalid as exc:
            return await self.settings_page(request, error=_sentence(exc), status=400)
        self.flash(request, "Organisation name saved.")
        return self.redirect("/settings")

    async def settings_convenience(self, request: Request) -> Response:
        me = (await self.require(request, admin=True))[0]
        form = await self.form(request)
        turn_on = form.get("mode") == "on"
        acknowledged = form.get("acknowledge") == "yes"
        if turn_on and not acknowledged:
            return await self.settings_page(
                request,
                error="Convenience Mode stays off: tick the acknowledgement to turn it on.",
                status=400,
            )
        voided = await run_in_threadpool(
            lambda: self.messaging.set_convenience_mode(
                on=turn_on, acknowledged_by=me.email, acknowledge_hipaa=acknowledged
            )
        )
        if turn_on:
            self.flash(request, "Convenience Mode is on: notifications now carry the content.")
        else:
            addresses = "reply address was" if voided == 1 else "reply addresses were"
            self.flash(
                request,
                f"Convenience Mode is off. {voided} outstanding {addresses} voided; replies "
                "to earlier notifications will be refused, and recipients read and answer in "
                "the portal.",
            )
        return self.redirect("/settings")

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
        response = self.render(
            request, "error.html", context, current=current, status=exc.status_code
        )
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    # -- assembly -------------------------------------------------------------------------

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.home),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/inbox", self.inbox),
            Route("/sent", self.sent),
            Route("/threads/{thread_id:int}", self.thread),
            Route("/threads/{thread_id:int}/reply", self.reply, methods=["POST"]),
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
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]


def create_app(settings: Settings, factory: sessionmaker[Session]) -> Starlette:
    """The portal as an ASGI app over one store; ``serve`` runs it with uvicorn."""
    portal = Portal(settings, factory)
    https = portal.https
    app = Starlette(
        routes=portal.routes(),
        middleware=[
            Middleware(SecurityHeaders, https=https),
            Middleware(
                SessionMiddleware,
                secret_key=settings.secret_key,
                session_cookie="__Host-replygate" if https else "replygate_session",
                max_age=SESSION_MAX_AGE,
                same_site="lax",
                https_only=https,
            ),
        ],
        exception_handlers={
            HTTPException: portal.on_http_error,
            LoginRequired: portal.on_login_required,
        },
    )
    app.state.portal = portal
    return app


def _page(request: Request) -> int:
    raw = request.query_params.get("page", "0")
    return min(int(raw), 10_000) if raw.isdigit() else 0


def _sentence(exc: Exception) -> str:
    text = str(exc).strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def _when(value: datetime) -> str:
    return value.strftime("%-d %b %Y, %H:%M UTC")
