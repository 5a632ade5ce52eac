"""MIME parsing into a plain record (``ParsedMail``), independent of any library type."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    payload: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True)
class ParsedMail:
    """What the engine needs of one message, decoded to ``str`` throughout.

    ``headers`` keeps every header (names lower-cased, values decoded, in order);
    ``text_plain``/``text_html`` are the decoded body parts joined, or ``None``.
    """

    headers: tuple[tuple[str, str], ...]
    from_address: str
    from_name: str
    subject: str
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    text_plain: str | None
    text_html: str | None
    attachments: tuple[Attachment, ...] = ()
    defects: tuple[str, ...] = ()
    content_type: str = "text/plain"
    report_parts: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str | None:
        """First value of ``name`` (case-insensitive), or ``None``."""
        lname = name.lower()
        for key, value in self.headers:
            if key == lname:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key == lname]


def parse_message(raw: bytes) -> ParsedMail:
    """Parse raw RFC 5322 bytes. Never raises on malformed mail: problems land in ``defects``."""
    raise NotImplementedError
