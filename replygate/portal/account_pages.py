"""Logging in and out, and changing one's password.

A login starts a new server-side session (``core.sessions``) and a fresh
cookie and CSRF token, so an id planted beforehand is worth nothing; logout
ends the session on the server, so a copy of the cookie dies with it. A new
password ends every session of the person and starts one for the browser
that changed it. Failed logins are counted in the store by
``accounts.authenticate``, per account and client address, so every portal
process throttles the same guesser and no guesser locks out the owner.
"""

from __future__ import annotations

import math
import time

from starlette.requests import Request
from starlette.responses import Response

from replygate.core.mfa import SecondStep
from replygate.core.workspace import LoginOutcome, SignedIn
from replygate.errors import Invalid, NotFound
from replygate.portal.pages import LoginRequired, Pages, sentence
from replygate.portal.security import safe_next

PENDING_KEY = "mfa_pending"
PENDING_SECONDS = 300  # from a right password to its code


def _throttled_message(retry_after: int) -> str:
    minutes = max(1, math.ceil(retry_after / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return (
        "Too many failed attempts. For your security, logging in from here is paused for "
        f"up to {minutes} {unit}."
    )


class AccountPages(Pages):
    async def login_page(self, request: Request) -> Response:
        next_url = safe_next(request.query_params.get("next"))
        if await self.current(request) is not None:
            return self.redirect(next_url)
        context = {
            "next": next_url,
            "email": "",
            "org_name": await self.org_name(),
            "expired": request.query_params.get("expired") == "1",
        }
        return self.render(request, "login.html", context)

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        email = str(form.get("email", "")).strip()
        password = str(form.get("password", ""))
        next_url = safe_next(str(form.get("next", "")))
        address, agent = self.client_address(request), self.user_agent(request)
        previous = self.session_id(request)
        result = await self.call(
            lambda: self.workspace.log_in(
                email, password, address=address, user_agent=agent, previous=previous
            )
        )
        if result.pending_user is not None:
            return self._second_step(request, result, next_url)
        if result.user_id is None:
            if result.throttled:
                message, status = _throttled_message(result.retry_after), 429
            else:
                message, status = "That email and password do not match an account.", 401
            context = {
                "next": next_url,
                "email": email,
                "error": message,
                "org_name": await self.org_name(),
            }
            response = self.render(request, "login.html", context, status=status)
            if result.throttled:
                response.headers["retry-after"] = str(result.retry_after)
            return response
        self.begin_session(request, result.session_id)
        return self.redirect(next_url)

    # -- the second factor --------------------------------------------------------------------

    def _second_step(self, request: Request, result: LoginOutcome, next_url: str) -> Response:
        """Remember (in the signed cookie, for a few minutes) whose password was right."""
        request.session.clear()
        request.session[PENDING_KEY] = {
            "user": result.pending_user,
            "at": int(time.time()),
            "next": next_url,
            "step": (result.second_step or SecondStep.CODE).value,
        }
        if result.second_step is SecondStep.ENROL:
            return self.redirect("/login/enrol")
        return self.redirect("/login/code")

    def _pending(self, request: Request, step: SecondStep) -> tuple[int, str]:
        """Whose login waits for this second step, and where it goes next; else to /login."""
        found = request.session.get(PENDING_KEY)
        if (
            isinstance(found, dict)
            and isinstance(found.get("user"), int)
            and isinstance(found.get("at"), int)
            and found.get("step") == step.value
            and 0 <= time.time() - found["at"] <= PENDING_SECONDS
        ):
            return found["user"], safe_next(str(found.get("next", "")))
        request.session.pop(PENDING_KEY, None)
        raise LoginRequired

    async def code_page(self, request: Request, *, error: str = "", status: int = 200) -> Response:
        self._pending(request, SecondStep.CODE)
        context = {"error": error, "org_name": await self.org_name()}
        return self.render(request, "login_code.html", context, status=status)

    async def code(self, request: Request) -> Response:
        user_id, next_url = self._pending(request, SecondStep.CODE)
        form = await self.form(request)
        address, agent = self.client_address(request), self.user_agent(request)
        try:
            result = await self.call(
                lambda: self.workspace.second_factor(
                    user_id, str(form.get("code", "")), address=address, user_agent=agent
                )
            )
        except NotFound as exc:
            raise LoginRequired from exc
        if result.user_id is None:
            if result.throttled:
                response = await self.code_page(
                    request, error=_throttled_message(result.retry_after), status=429
                )
                response.headers["retry-after"] = str(result.retry_after)
                return response
            return await self.code_page(
                request, error="That code is not right, or was used already.", status=401
            )
        self.begin_session(request, result.session_id)
        return self.redirect(next_url)

    async def enrol_page(self, request: Request, *, error: str = "", status: int = 200) -> Response:
        user_id, _ = self._pending(request, SecondStep.ENROL)
        try:
            enrolment = await self.call(lambda: self.workspace.begin_enrolment(user_id))
        except (NotFound, Invalid) as exc:  # gone, or enrolled meanwhile: log in again
            raise LoginRequired from exc
        context = {"error": error, "enrolment": enrolment, "org_name": await self.org_name()}
        return self.render(request, "login_enrol.html", context, status=status)

    async def enrol(self, request: Request) -> Response:
        user_id, next_url = self._pending(request, SecondStep.ENROL)
        form = await self.form(request)
        address, agent = self.client_address(request), self.user_agent(request)
        try:
            result = await self.call(
                lambda: self.workspace.finish_enrolment(
                    user_id,
                    str(form.get("code", "")),
                    address=address,
                    user_agent=agent,
                    start_session=True,
                )
            )
        except NotFound as exc:
            raise LoginRequired from exc
        except Invalid as exc:
            return await self.enrol_page(request, error=sentence(exc), status=400)
        if result.throttled:
            response = await self.enrol_page(
                request, error=_throttled_message(result.retry_after), status=429
            )
            response.headers["retry-after"] = str(result.retry_after)
            return response
        self.begin_session(request, result.session_id)
        context = {"codes": result.recovery_codes, "next": next_url}
        current = await self.current(request)
        return self.render(request, "recovery_codes.html", context, current=current)

    async def keep_alive(self, request: Request) -> Response:
        """ "Stay signed in": the session's idle time starts again (204 to a script)."""
        await self.form(request)
        alive = await self.call(self.workspace.keep_alive, self.session_id(request))
        if not alive:
            raise LoginRequired
        if request.headers.get("x-requested-with") == "replygate":
            return Response(status_code=204)
        return self.redirect("/inbox")

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        await self.call(self.workspace.log_out, self.session_id(request))
        request.session.clear()
        return self.redirect("/login")

    # -- password -------------------------------------------------------------------------

    async def password_page(self, request: Request) -> Response:
        current = await self.require(request)
        return self.render(request, "password.html", {"section": "password"}, current=current)

    async def change_password(self, request: Request) -> Response:
        current = await self.require(request)
        form = await self.form(request)
        old, new = str(form.get("current", "")), str(form.get("new", ""))
        if new != str(form.get("confirm", "")):
            return self._password_error(request, current, "The new passwords do not match.", 400)
        address, agent = self.client_address(request), self.user_agent(request)
        try:
            result = await self.call(
                lambda: self.workspace.change_password(
                    self.session_id(request), old, new, address=address, user_agent=agent
                )
            )
        except NotFound as exc:
            raise LoginRequired from exc
        except Invalid as exc:
            return self._password_error(request, current, sentence(exc), 400)
        if result.user_id is None:
            if result.throttled:
                response = self._password_error(
                    request, current, _throttled_message(result.retry_after), 429
                )
                response.headers["retry-after"] = str(result.retry_after)
                return response
            return self._password_error(request, current, "That is not your password.", 401)
        self.begin_session(request, result.session_id)
        self.flash(request, "Password changed. You were logged out everywhere else.")
        return self.redirect("/inbox")

    def _password_error(
        self, request: Request, current: SignedIn, error: str, status: int
    ) -> Response:
        context = {"section": "password", "error": error}
        return self.render(request, "password.html", context, current=current, status=status)
