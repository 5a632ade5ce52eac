"""Portal fixtures (``tests.portal_support``), shared with the browser tests."""

from tests.portal_support import client_for, live_portal, messaging, password_hash, people

__all__ = ["client_for", "live_portal", "messaging", "password_hash", "people"]
