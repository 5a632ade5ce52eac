"""Running the parts together: gateway, engine worker, outbound worker, portal.

One asyncio loop holds whichever parts the role asks for; SIGINT/SIGTERM set
one stop event and every part finishes its current unit of work and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from replygate import metrics, sdnotify
from replygate.config import Settings
from replygate.errors import StartupError
from replygate.logs import get_logger
from replygate.workers.drain import outbound_worker
from replygate.workers.inbound import InboundWorker
from replygate.workers.reminders import ReminderSweeper

if TYPE_CHECKING:
    from replygate.gateway.server import Gateway
    from replygate.monitoring.server import Check, OperatorServer

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
    metrics_addr: tuple[str, int] | None = None,
) -> None:
    """Run the parts of ``role`` until ``stop`` is set (or a signal arrives).

    Every listening socket is bound before any part starts or logs, so a port
    already taken is one ``StartupError`` and nothing else. ``reuse_port`` lets
    the gateway share its port with other gateway processes (SO_REUSEPORT).
    ``metrics_addr`` serves ``/metrics``, ``/healthz`` and ``/readyz`` there
    (``monitoring.server``); without it a process records metrics only when
    one that serves them started it (``metrics.join_inherited``).
    """
    stop = stop or asyncio.Event()
    parts = PARTS[ProcessRole(role)]
    portal_addr = portal_addr or (settings.portal_host, settings.portal_port)
    operator = bind_operator(settings, factory, metrics_addr) if metrics_addr else None
    if operator is None:
        metrics.join_inherited()
    try:
        portal_sock = bind_portal(*portal_addr) if Part.PORTAL in parts else None
    except BaseException:
        if operator is not None:
            operator.stop()
        raise
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
            if operator is not None:
                operator.stop()
            raise
        log.info("gateway.listening", host=host, port=gateway.port, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    running: dict[Part, asyncio.Task[None]] = {}  # the parts that must keep running
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
            running[Part.ENGINE] = asyncio.create_task(
                engine.run(stop, notified=notified, wake=queued)
            )
            tasks.append(running[Part.ENGINE])
            # Unread reminders fall due with time alone: every worker process sweeps.
            sweeper = ReminderSweeper(factory, settings)
            tasks.append(asyncio.create_task(sweeper.run(stop, notified=notified)))
        if Part.OUTBOUND in parts:
            worker = outbound_worker(settings, factory)
            running[Part.OUTBOUND] = asyncio.create_task(
                worker.run(stop, settings.worker_poll_seconds, wake=notified)
            )
            tasks.append(running[Part.OUTBOUND])
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
            running[Part.PORTAL] = portal
            await _until_started(portal, started)
            log.info("portal.listening", url=f"http://{host}:{port}")
        found = metrics.instruments()
        if gateway is not None and found is not None:
            tasks.append(asyncio.create_task(publish_gateway(found, gateway, stop)))
        if operator is not None:
            operator.checks.update(readiness(factory, gateway, running))
            operator.start()
            log.info("metrics.listening", port=operator.port)
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
        if operator is not None:
            operator.stop()
        metrics.process_exited()
        log.info("service.stopped", role=role)


# How often a gateway's tallies are copied into the metrics (``metrics`` says why).
PUBLISH_SECONDS = 1.0


def bind_operator(
    settings: Settings, factory: sessionmaker[Session], addr: tuple[str, int]
) -> OperatorServer:
    """The operator port bound, and metrics recorded from now on in a directory of its
    own (``<var_dir>/metrics/<port>``), emptied first; ``StartupError`` when it is taken."""
    from replygate.gateway.server import listen_failure
    from replygate.monitoring.server import OperatorServer

    host, port = addr
    directory = settings.var_dir / "metrics" / str(port or os.getpid())
    try:
        operator = OperatorServer(host, port, directory=directory, factory=factory, checks={})
    except OSError as exc:
        raise StartupError(listen_failure(host, port, exc, "another exporter")) from exc
    # Only once the port is ours: no other process serves this directory.
    metrics.enable(directory, owner=True)
    return operator


def readiness(
    factory: sessionmaker[Session], gateway: Gateway | None, running: dict[Part, asyncio.Task[None]]
) -> dict[str, Check]:
    """What ``/readyz`` checks: the database answers, the gateway's writer thread lives,
    and every part of this process is still running."""
    from replygate.store.db import database_problem

    checks: dict[str, Check] = {"database": lambda: database_problem(factory)}
    if gateway is not None:
        checks["writer"] = lambda: None if gateway.writer_alive() else "the writer thread died"
    for part, task in running.items():
        checks[str(part)] = _still_running(task)
    return checks


def _still_running(task: asyncio.Task[None]) -> Check:
    return lambda: "stopped" if task.done() else None


async def publish_gateway(
    found: metrics.Instruments, gateway: Gateway, stop: asyncio.Event
) -> None:
    """Copy the gateway's tallies into the metrics every ``PUBLISH_SECONDS``, and once more
    at the end."""
    try:
        while not stop.is_set():
            found.publish_smtp(*gateway.figures())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PUBLISH_SECONDS)
    finally:
        found.publish_smtp(*gateway.figures())


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
