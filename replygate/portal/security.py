"""Browser-facing safety: response headers, CSRF tokens, sanitised email HTML.

Every page is rendered by the server with escaping on; the only HTML that is
not ours (the HTML part of a reply that came by email) goes through nh3 with
a short allow-list, and the Content-Security-Policy forbids inline script
anyway, so a tag that slipped through could still not run.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

import nh3
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from replygate.core import audit

CSRF_FIELD = "csrf"
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

# Email HTML keeps its structure and emphasis; images (tracking pixels, remote
# content), styles, forms and anything scriptable are dropped.
EMAIL_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "div",
    "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "ins", "kbd", "li",
    "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike", "strong", "sub",
    "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
EMAIL_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
}


class AuditOrigin:
    """ASGI middleware marking each request for the audit trail: the client's address
    (after the trusted proxies' word, when there are any) and its browser."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            agent = next(
                (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"user-agent"),
                None,
            )
            audit.portal_request(client[0] if client else None, agent)
        await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware adding the security headers to every HTTP response.

    Pages also get ``Cache-Control: no-store``: they show private messages,
    which must not linger in shared or back-button caches.
    """

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        static = path.startswith("/static/") or path == "/favicon.ico"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if self.https:
                    headers["strict-transport-security"] = "max-age=31536000"
                if not static:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use (also before login)."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def csrf_valid(request: Request, submitted: object, trusted_origin: str = "") -> bool:
    """True when the form carries the session's token and no foreign Origin says otherwise.

    The Origin may be the one the request arrived on or the configured portal
    URL's (the one a browser sees behind a TLS-terminating proxy).
    """
    expected = request.session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not expected or not isinstance(submitted, str):
        return False
    if not hmac.compare_digest(expected.encode(), submitted.encode()):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        allowed = {origin_of(str(request.url)), trusted_origin.lower()}
        if origin.rstrip("/").lower() not in allowed:
            return False
    return True


def sanitise_email_html(html: str) -> str:
    """Email HTML reduced to inert markup: no script, handlers, styles, images or forms."""
    return nh3.clean(
        html,
        tags=EMAIL_TAGS,
        attributes=EMAIL_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )


def safe_next(target: str | None) -> str:
    """A same-site path to go to after login; anything else goes to the inbox."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/inbox"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/inbox"
    return target
