"""Structured logging set-up, the one place that touches structlog's global state.

key=value on a terminal, JSON lines in production (``--log-json``). Callers
log one canonical line per unit of work (an inbound mail, a delivery) and
never a message body.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure(*, json: bool = False, level: int = logging.INFO) -> None:
    """Route structlog (and stdlib logging, e.g. aiosmtpd's) to stderr."""
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    logger_factory: structlog.typing.WrappedLogger
    if json:
        # The gateway writes a line per message; orjson renders it in a
        # fraction of json.dumps' time, as bytes straight to the stream.
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        logger_factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    # mail-parser warns about every part type it does not handle (e.g. DSN headers).
    logging.getLogger("mailparser").setLevel(logging.ERROR)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
