"""replygate: secure client-portal messaging with an inbound email gateway."""

__version__ = "0.1.0"
