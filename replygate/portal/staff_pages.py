"""Pages for staff: canned responses; and for admins, the organisation's settings.

Convenience Mode turns on only with the ticked HIPAA acknowledgement, shown
here in full; turning it off voids every reply address sent out (see
``Messaging.set_convenience_mode``).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from replygate.errors import Invalid, NotFound
from replygate.portal.pages import Pages, sentence

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


class StaffPages(Pages):
    # -- canned responses -----------------------------------------------------------------

    async def canned_index(self, request: Request) -> Response:
        current = await self.require(request, staff=True)
        rows = await self.call(self.workspace.canned_responses)
        context = {"section": "canned", "rows": rows}
        return self.render(request, "canned_list.html", context, current=current)

    async def canned_form(self, request: Request) -> Response:
        current = await self.require(request, staff=True)
        canned_id = request.path_params.get("canned_id")
        values = {"name": "", "subject": "", "body": ""}
        if canned_id is not None:
            try:
                c = await self.call(self.workspace.canned_response, canned_id)
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
            await self.call(
                lambda: self.workspace.save_canned(
                    canned_id=canned_id, author_id=current.viewer.id, **values
                )
            )
        except NotFound as exc:
            raise HTTPException(404, "There is no such canned response.") from exc
        except Invalid as exc:
            context = {
                "section": "canned",
                "canned_id": canned_id,
                "values": values,
                "error": sentence(exc),
            }
            return self.render(request, "canned_form.html", context, current=current, status=400)
        self.flash(request, f"Canned response “{' '.join(values['name'].split())}” saved.")
        return self.redirect("/canned")

    async def canned_delete(self, request: Request) -> Response:
        current = await self.require(request, staff=True)
        await self.form(request)
        canned_id = request.path_params["canned_id"]
        try:
            await self.call(lambda: self.workspace.delete_canned(canned_id, by=current.viewer.id))
        except NotFound as exc:
            raise HTTPException(404, "There is no such canned response.") from exc
        self.flash(request, "Canned response deleted.")
        return self.redirect("/canned")

    # -- settings -------------------------------------------------------------------------

    async def settings_page(
        self, request: Request, *, error: str | None = None, status: int = 200
    ) -> Response:
        current = await self.require(request, admin=True)
        org = await self.call(self.workspace.organisation)
        suppressed = await self.call(self.workspace.suppressed_staff)
        context = {
            "section": "settings",
            "org": org,
            "warning": HIPAA_WARNING,
            "error": error,
            "suppressed": suppressed,
        }
        return self.render(request, "settings.html", context, current=current, status=status)

    async def settings_organisation(self, request: Request) -> Response:
        current = await self.require(request, admin=True)
        form = await self.form(request)
        name = str(form.get("name", ""))
        try:
            await self.call(lambda: self.workspace.rename_organisation(name, by=current.viewer.id))
        except Invalid as exc:
            return await self.settings_page(request, error=sentence(exc), status=400)
        self.flash(request, "Organisation name saved.")
        return self.redirect("/settings")

    async def settings_receipts(self, request: Request) -> Response:
        current = await self.require(request, admin=True)
        form = await self.form(request)
        try:
            seconds = await self.call(
                lambda: self.workspace.set_receipt_settings(
                    read_receipts_default=form.get("receipts_default") == "yes",
                    reminder_hours=str(form.get("reminder_hours", "")),
                    by=current.viewer.id,
                )
            )
        except Invalid as exc:
            return await self.settings_page(request, error=sentence(exc), status=400)
        reminders = "no reminders" if not seconds else "reminders of unread messages on"
        self.flash(request, f"Read receipts and reminders saved ({reminders}).")
        return self.redirect("/settings")

    async def settings_convenience(self, request: Request) -> Response:
        me = (await self.require(request, admin=True)).viewer
        form = await self.form(request)
        turn_on = form.get("mode") == "on"
        acknowledged = form.get("acknowledge") == "yes"
        if turn_on and not acknowledged:
            return await self.settings_page(
                request,
                error="Convenience Mode stays off: tick the acknowledgement to turn it on.",
                status=400,
            )
        voided = await self.call(
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
