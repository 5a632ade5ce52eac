"""Structured logging set-up, the one place that touches structlog's global state.

key=value on a terminal, JSON lines in production (``--log-json``). Callers
log one canonical line per unit of work (an inbound mail, a delivery) and
never a message body, a subject or an attachment's name; they bind reply
addresses as fingerprints.

The last line of defence is ``redact``, which the caller passes in (this
module knows nothing of tokens): every string of every event, the rendered
traceback included, and every line of stdlib logging (aiosmtpd's, asyncio's)
goes through it just before it is written. Tracebacks are rendered by
``format_exc_info``, as plain text without local variables (structlog's
``dict_tracebacks`` and rich would show locals, such as a raw message).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import structlog

Redact = Callable[[str], str]

# structlog's configuration waiting for the first logger (see ``configure``).
_pending: Callable[[], None] | None = None

_PLAIN = (int, float, bool, type(None))
# The same, as exact types: a set lookup costs less than ``isinstance`` with a tuple,
# and a subclass (an IntEnum) still goes the long way, through ``_redacted``.
_PLAIN_TYPES = frozenset(_PLAIN)


def configure(
    *, json: bool = False, level: int = logging.INFO, redact: Redact, plain_below: int = 0
) -> None:
    """Route structlog (and stdlib logging, e.g. aiosmtpd's) to stderr, through ``redact``.

    ``plain_below``: ``redact`` returns every string without a "+" that is
    shorter than this as it is, so an event's processor need not call it for
    them (most strings of a line: levels, conditions, peers); 0 calls it for all.

    structlog (and rich, which it loads) costs a command line start more than
    most commands take, and a listing never logs: unless structlog is loaded
    already, its configuration waits for the first ``get_logger``.
    """
    global _pending
    _configure_stdlib(redact)
    # mail-parser warns about every part type it does not handle (e.g. DSN headers).
    logging.getLogger("mailparser").setLevel(logging.ERROR)
    _pending = functools.partial(_configure_structlog, json, level, redact, plain_below)
    if "structlog" in sys.modules:
        _apply_pending()


def _apply_pending() -> None:
    global _pending
    if _pending is not None:
        apply, _pending = _pending, None
        apply()


def _configure_structlog(json: bool, level: int, redact: Redact, plain_below: int) -> None:
    import structlog

    processors: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info,
        # After the traceback is rendered, before anything is written.
        redacting(redact, plain_below),
        # Ours, holding no secret: added after the redaction, which need not read them.
        structlog.processors.add_log_level,
        _timestamp(),
    ]
    renderer: structlog.typing.Processor
    logger_factory: structlog.typing.WrappedLogger
    if json:
        # The gateway writes a line per message; orjson renders it in a
        # fraction of json.dumps' time, as bytes straight to the stream.
        import orjson

        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory = _one_logger(structlog.BytesLogger(sys.stderr.buffer))
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        logger_factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )


def _timestamp() -> structlog.typing.Processor:
    """A processor adding ``timestamp``, UTC in ISO 8601 to the microsecond
    (``2026-12-03T18:36:23.601221Z``), as structlog's ``TimeStamper(fmt="iso",
    utc=True)`` writes it (but always with the microseconds).

    The text up to the second is made once a second: TimeStamper builds a
    timezone-aware datetime and formats it whole for every line, which cost a
    gateway's canonical line a fifth of its time.
    """
    last = (-1, "")  # the second, and its text; replaced whole, so threads share it safely

    def processor(
        logger: structlog.typing.WrappedLogger, method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        nonlocal last
        now = time.time()
        second = int(now)
        if last[0] != second:
            last = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        event["timestamp"] = f"{last[1]}.{int((now - second) * 1_000_000):06d}Z"
        return event

    return processor


def _one_logger(logger: Any) -> Callable[..., Any]:
    """A logger factory handing out ``logger`` itself: the loggers are not cached
    (so a new configuration applies at once), and a line would otherwise pay
    for a new writer of the same stream."""

    def factory(*args: Any) -> Any:
        return logger

    return factory


def redacting(redact: Redact, plain_below: int = 0) -> structlog.typing.Processor:
    """A processor passing every string of an event (nested ones too) through ``redact``,
    but for the top-level and listed strings ``redact`` returns as they are (``configure``'s
    ``plain_below``), which it passes without the call.

    The event is structlog's own copy, made for this call, so its values are
    replaced in place; the lists and dicts in it may be the caller's, and are
    copied by ``_redacted``.
    """

    def processor(
        logger: structlog.typing.WrappedLogger, method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        for key, value in event.items():
            kind = type(value)
            if kind is str:
                if "+" in value or len(value) >= plain_below:
                    event[key] = redact(value)
            elif kind is list:
                event[key] = _redacted_list(value, redact, plain_below)
            elif kind not in _PLAIN_TYPES:
                event[key] = _redacted(value, redact)
        return event

    return processor


def _redacted_list(items: list[Any], redact: Redact, plain_below: int = 0) -> list[Any]:
    """A list's copy, redacted: the canonical lines carry short lists of addresses and
    ids, for which a comprehension calling ``_redacted`` per item costs more than this."""
    out = []
    for item in items:
        kind = type(item)
        if kind is str:
            out.append(redact(item) if "+" in item or len(item) >= plain_below else item)
        elif kind in _PLAIN_TYPES:
            out.append(item)
        else:
            out.append(_redacted(item, redact))
    return out


def _redacted(value: Any, redact: Redact) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {key: _redacted(item, redact) for key, item in value.items()}
    if isinstance(value, list):
        return _redacted_list(value, redact)
    if isinstance(value, tuple):
        return tuple(_redacted(item, redact) for item in value)
    # Anything else is rendered by its str or repr: hide what either would show.
    for shown in (str(value), repr(value)):
        if redact(shown) != shown:
            return redact(shown)
    return value


class RedactingFormatter(logging.Formatter):
    """Stdlib log records, tracebacks included, formatted and then passed through ``redact``."""

    def __init__(self, redact: Redact) -> None:
        super().__init__("%(name)s: %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def _configure_stdlib(redact: Redact) -> None:
    """As ``logging.basicConfig`` (nothing if the root logger has handlers of its own),
    with our formatter; configuring again gives our handler the new ``redact``."""
    root = logging.getLogger()
    ours = [h.formatter for h in root.handlers if isinstance(h.formatter, RedactingFormatter)]
    for formatter in ours:
        formatter.redact = redact
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter(redact))
        logging.basicConfig(level=logging.WARNING, handlers=[handler])


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    import structlog

    _apply_pending()
    return cast("structlog.typing.FilteringBoundLogger", Logger(structlog, name))


class Logger:
    """A logger bound once per configuration of structlog, not once per line.

    structlog's own lazy proxy (``structlog.get_logger``) assembles a new
    bound logger at every call, so that a new configuration applies at once;
    that costs a gateway's canonical line more than its redaction. This one
    keeps the logger it assembled while the configuration it was assembled
    from stays (the same processors list, wrapper class, logger factory and
    context class, by identity: what the proxy's ``bind`` reads), and
    assembles another once it changes. ``capture_logs`` changes the processors list in place, so a
    kept logger sees it at once too.
    """

    __slots__ = ("_bound", "_context", "_factory", "_name", "_processors", "_structlog", "_wrapper")

    def __init__(self, structlog: Any, name: str) -> None:
        self._structlog = structlog
        self._name = name
        self._processors = self._wrapper = self._factory = self._context = self._bound = None

    def current(self) -> Any:
        """The bound logger for structlog's configuration now."""
        config = self._structlog.get_config()
        processors = config["processors"]
        wrapper = config["wrapper_class"]
        factory = config["logger_factory"]
        context = config["context_class"]
        if (
            self._bound is None
            or processors is not self._processors
            or wrapper is not self._wrapper
            or factory is not self._factory
            or context is not self._context
        ):
            self._bound = self._structlog.get_logger(self._name).bind()
            self._processors, self._wrapper = processors, wrapper
            self._factory, self._context = factory, context
        return self._bound

    def bind(self, **values: Any) -> Any:
        return self.current().bind(**values)

    debug = property(lambda self: self.current().debug)
    info = property(lambda self: self.current().info)
    warning = property(lambda self: self.current().warning)
    error = property(lambda self: self.current().error)
    critical = property(lambda self: self.current().critical)
    exception = property(lambda self: self.current().exception)
    msg = property(lambda self: self.current().msg)
