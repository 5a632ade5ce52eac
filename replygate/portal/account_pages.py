"""Logging in and out.

A login starts a fresh session (and CSRF token); the session keeps the
user's id and a tag over their password hash (``accounts.session_tag``), so
a changed password ends every other session. Failed logins are counted in
the store by ``accounts.authenticate``, so every portal process throttles the
same guesser.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from replygate.portal.pages import Pages
from replygate.portal.security import safe_next


class AccountPages(Pages):
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
        result = await self.call(lambda: self.workspace.log_in(email, password, address=address))
        if result.user_id is None:
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
        request.session.clear()  # a fresh session (and CSRF token) for the new login
        request.session["uid"] = result.user_id
        request.session["tag"] = result.tag
        return self.redirect(next_url)

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        request.session.clear()
        return self.redirect("/login")
