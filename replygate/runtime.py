"""Running the parts together: gateway, engine worker, outbound worker, portal.

One asyncio loop holds whichever parts the role asks for; SIGINT/SIGTERM set
one stop event and every part finishes its current unit of work and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from enum import StrEnum

from sqlalchemy.orm import Session, sessionmaker

from replygate import sdnotify
from replygate.config import Settings
from replygate.errors import StartupError
from replygate.logs import get_logger
from replygate.workers.drain import outbound_worker
from replygate.workers.inbound import InboundWorker

log = get_logger("replygate.runtime")


# The youngest generation is collected after this many net allocations;
# CPython's 700 means a collection every few SMTP commands under load.
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once every part has started: what start-up built (modules, mappers,
    settings) lives as long as the process, so collections stop re-walking
    it (``gc.freeze``), and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class ProcessRole(StrEnum):
    """What one ``serve`` process runs (``--role``)."""

    ALL = "all"
    GATEWAY = "gateway"
    WORKER = "worker"
    PORTAL = "portal"


class Part(StrEnum):
    GATEWAY = "gateway"
    ENGINE = "engine"
    OUTBOUND = "outbound"
    PORTAL = "portal"


PARTS: dict[ProcessRole, tuple[Part, ...]] = {
    ProcessRole.ALL: (Part.GATEWAY, Part.ENGINE, Part.OUTBOUND, Part.PORTAL),
    ProcessRole.GATEWAY: (Part.GATEWAY,),
    ProcessRole.WORKER: (Part.ENGINE, Part.OUTBOUND),
    ProcessRole.PORTAL: (Part.PORTAL,),
}


async def run_service(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    role: str = "all",
    smtp_addr: tuple[str, int] | None = None,
    portal_addr: tuple[str, int] | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Run the parts of ``role`` until ``stop`` is set (or a signal arrives).

    Every listening socket is bound before any part starts or logs, so a port
    already taken is one ``StartupError`` and nothing else. ``reuse_port`` lets
    the gateway share its port with other gateway processes (SO_REUSEPORT).
    """
    stop = stop or asyncio.Event()
    parts = PARTS[ProcessRole(role)]
    portal_addr = portal_addr or (settings.portal_host, settings.portal_port)
    portal_sock = bind_portal(*portal_addr) if Part.PORTAL in parts else None
    gateway = None
    if Part.GATEWAY in parts:
        from replygate.gateway.server import start_gateway

        host, port = smtp_addr or (settings.smtp_host, settings.smtp_port)
        try:
            gateway = await start_gateway(
                settings, factory, host=host, port=port, reuse_port=reuse_port
            )
        except BaseException:
            if portal_sock is not None:
                portal_sock.close()
            raise
        log.info("gateway.listening", host=host, port=gateway.port, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    try:
        # Set by the engine when it has written notifications; the outbound
        # worker of this process then delivers them without waiting to poll.
        notified = asyncio.Event()
        if Part.ENGINE in parts:
            # Set by the gateway of this process once mail is committed, so the
            # engine claims it at once (on PostgreSQL it also LISTENs for other
            # processes' mail; across SQLite processes it polls).
            queued = asyncio.Event()
            if gateway is not None:
                gateway.handler.wake_on_commit(queued)
            engine = InboundWorker(factory, settings)
            tasks.append(asyncio.create_task(engine.run(stop, notified=notified, wake=queued)))
        if Part.OUTBOUND in parts:
            worker = outbound_worker(settings, factory)
            tasks.append(
                asyncio.create_task(worker.run(stop, settings.worker_poll_seconds, wake=notified))
            )
        if Part.PORTAL in parts:
            from replygate.portal.server import run_portal

            host, port = portal_addr
            started = asyncio.Event()
            portal = asyncio.create_task(
                run_portal(
                    settings, factory, stop, host=host, port=port, started=started, sock=portal_sock
                )
            )
            tasks.append(portal)
            await _until_started(portal, started)
            log.info("portal.listening", url=f"http://{host}:{port}")
        settle_heap()
        if ready is not None:
            ready.set()
        sdnotify.ready(f"replygate {role} running")  # every part listens by now
        await stop.wait()
    finally:
        sdnotify.stopping()
        stop.set()
        if gateway is not None:
            await gateway.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if portal_sock is not None:
            portal_sock.close()
        log.info("service.stopped", role=role)


def bind_portal(host: str, port: int) -> socket.socket:
    """The portal's listening socket, bound (uvicorn listens on it); ``StartupError``
    with one sentence when the address is taken or refused."""
    from replygate.gateway.server import listen_failure

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupError(listen_failure(host, port, exc, "another web server")) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(listen_failure(host, port, exc, "another web server")) from exc
    sock.set_inheritable(True)
    return sock


async def _until_started(task: asyncio.Task[None], started: asyncio.Event) -> None:
    """Wait until the part says it listens; if it ends first (port taken), raise its error."""
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not started.is_set():
        waiter.cancel()
        task.result()  # raises what stopped it
        raise RuntimeError("the portal stopped before it listened")
