"""The operator port: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

Served from threads of its own (prometheus-client's threading WSGI server),
so a scrape's database reads never run on the event loop that serves SMTP.
The socket is bound when the server is made, so the runtime binds it before
any part starts and a port in use is one start-up error.

- ``/metrics``: every process recording into the multiprocess directory
  (``replygate.metrics``), summed, plus the queues read from the database
  (``monitoring.backlog``);
- ``/healthz``: 200 while the process answers at all (liveness);
- ``/readyz``: 200 when every readiness check passes, else 503 with the
  failing checks, one per line (the database reachable, the gateway's
  writer thread alive, the workers running: whatever the runtime passes).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.orm import Session, sessionmaker

from replygate.monitoring.backlog import BacklogCollector
from replygate.store.db import close_reads, snapshot_reads

# A check returns None when all is well, else one line saying what is wrong.
Check = Callable[[], str | None]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
TEXT = [("Content-Type", "text/plain; charset=utf-8")]


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: probes come every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OperatorServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on ``host:port``; ``start`` then ``stop``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        directory: Path,
        factory: sessionmaker[Session],
        checks: Mapping[str, Check],
    ) -> None:
        """Bind ``host:port`` (``OSError`` when it cannot be bound), then make ``directory``."""
        self.checks = dict(checks)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server = type(
            "OperatorHTTPServer",
            (ThreadingWSGIServer,),
            {"address_family": family, "allow_reuse_address": True},
        )
        self._httpd: WSGIServer = make_server(host, port, self.app, server, handler_class=_Quiet)
        directory.mkdir(parents=True, exist_ok=True)
        self._reads = snapshot_reads(factory)
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=str(directory))
        registry.register(BacklogCollector(self._reads or factory))
        self._metrics = make_wsgi_app(registry)
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="operator-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()
        close_reads(self._reads)

    def problems(self) -> list[str]:
        """What keeps this process from being ready, one line per failing check."""
        found = []
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:  # a check that fails to run is a failing check
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                found.append(f"{name}: {problem}")
        return found

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            problems = self.problems()
            if problems:
                body = _lines("not ready", problems)
                return _text(start_response, "503 Service Unavailable", body)
            ready = [f"{name}: ok" for name in self.checks]
            return _text(start_response, "200 OK", _lines("ready", ready))
        return _text(start_response, "404 Not Found", "not found: /metrics, /healthz, /readyz\n")


def _lines(first: str, rest: list[str]) -> str:
    return "".join(f"{line}\n" for line in [first, *rest])


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    """One plain-text body with its length (one write: a probe reads it whole)."""
    data = body.encode()
    start_response(status, [*TEXT, ("Content-Length", str(len(data)))])
    return [data]
