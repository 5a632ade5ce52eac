"""The thin web portal: server-rendered pages over the domain core.

``create_app(settings, factory)`` builds the ASGI app; ``run_portal`` serves
it with uvicorn inside the caller's event loop (see ``server``);
``accounts.set_password`` backs ``replygate users set-password``.
"""

from replygate.core.accounts import set_password
from replygate.portal.app import create_app
from replygate.portal.server import run_portal

__all__ = ["create_app", "run_portal", "set_password"]
