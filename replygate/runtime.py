"""Running the parts together: gateway, engine worker, outbound worker, portal.

One asyncio loop holds whichever parts the role asks for; SIGINT/SIGTERM set
one stop event and every part finishes its current unit of work and returns.

``serve`` (role ``all``) on a machine of two cores or more runs the engine and
the outbound worker in a child process of their own (``EngineProcess``, role
``worker``) beside the gateway and portal (role ``front``): each process has
a core and a GIL of its own, and on SQLite the two take turns to write
(``dialect.write_turn``). The child is started with ``spawn`` (a fresh
interpreter, never a fork of a running loop), says it is ready on a notify
socket of the parent's, and is stopped by the parent with SIGTERM when the
service stops (Ctrl-C reaches both); if it dies, the service stops too and
``serve`` exits with status 1, for the supervisor to restart it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from replygate import logs, metrics, sdnotify
from replygate.config import Settings
from replygate.errors import ServiceFailed, StartupError
from replygate.logs import get_logger
from replygate.mail.markers import TOKEN_LENGTH
from replygate.mail.redaction import redact
from replygate.workers.drain import outbound_worker
from replygate.workers.inbound import InboundWorker
from replygate.workers.reminders import ReminderSweeper
from replygate.workers.waiting import first_of

if TYPE_CHECKING:
    from replygate.gateway.server import Gateway
    from replygate.monitoring.server import Check, OperatorServer

log = get_logger("replygate.runtime")


# Young collections after this many net allocations (CPython's 700: every few SMTP commands).
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
    # ``all`` split in two: this process's share when the engine runs beside it.
    FRONT = "front"


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
    ProcessRole.FRONT: (Part.GATEWAY, Part.PORTAL),
}


def engine_beside(role: str, *, one_process: bool = False) -> bool:
    """Whether ``serve`` runs the engine and outbound worker in a process of their own:
    for ``all``, when the machine has a second core to give them."""
    return role == ProcessRole.ALL and not one_process and (os.cpu_count() or 1) >= 2


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
    split: bool = False,
    wakes: socket.socket | None = None,
) -> None:
    """Run the parts of ``role`` until ``stop`` is set (or a signal arrives).

    With ``split`` (role ``all`` only) the engine and outbound worker run in a
    child process (``EngineProcess``) and this one runs the rest; the service
    is ready once both are, and stops both. ``wakes`` (the child's) is a
    datagram socket on which the parent's gateway says it committed mail.

    Every listening socket is bound before any part starts or logs, so a port
    already taken is one ``StartupError`` and nothing else. ``reuse_port`` lets
    the gateway share its port with other gateway processes (SO_REUSEPORT).
    ``metrics_addr`` serves ``/metrics``, ``/healthz`` and ``/readyz`` there
    (``monitoring.server``); without it a process records metrics only when
    one that serves them started it (``metrics.join_inherited``).
    """
    stop = stop or asyncio.Event()
    beside: EngineProcess | None = None
    split = split and role == ProcessRole.ALL
    if split:
        role = ProcessRole.FRONT
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
        if split:  # every port is ours: the child imports while the portal starts
            beside = EngineProcess(settings)
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
            if wakes is not None:  # the engine child; a serve killed with SIGKILL says nothing
                loop.add_reader(wakes, _woken, wakes, queued)
                loop.add_reader(multiprocessing.parent_process().sentinel, stop.set)  # type: ignore[union-attr]
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
        if beside is not None:
            await beside.until_ready(stop)
            tasks.append(asyncio.create_task(beside.watch(stop)))
            if gateway is not None:
                committed = asyncio.Event()
                gateway.handler.wake_on_commit(committed)
                tasks.append(asyncio.create_task(beside.forward_wakes(committed, stop)))
        settle_heap()
        if ready is not None:
            ready.set()
        sdnotify.ready(f"replygate {role} running")  # every part listens by now
        await stop.wait()
    finally:
        sdnotify.stopping()
        stop.set()
        if beside is not None:
            beside.terminate()  # drains its batch while the gateway drains its sessions
        if gateway is not None:
            await gateway.stop()
        if beside is not None:
            await beside.join()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if portal_sock is not None:
            portal_sock.close()
        if operator is not None:
            operator.stop()
        metrics.process_exited()
        log.info("service.stopped", role=role)
    if wakes is not None:
        loop.remove_reader(wakes)
        loop.remove_reader(multiprocessing.parent_process().sentinel)  # type: ignore[union-attr]
    if beside is not None and beside.failed:
        raise ServiceFailed(beside.failed)


def _woken(wakes: socket.socket, queued: asyncio.Event) -> None:
    """Mail was committed by the gateway of the parent process: claim it now."""
    with contextlib.suppress(OSError):
        while wakes.recv(64):
            pass
    queued.set()


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


# How long the engine process may take to start, and to stop once told.
ENGINE_START_SECONDS = 120.0
ENGINE_STOP_SECONDS = 60.0


class EngineProcess:
    """The engine and outbound worker of ``serve``, in a child process of their own."""

    def __init__(self, settings: Settings) -> None:
        self._dir = tempfile.mkdtemp(prefix="replygate-engine-")
        path = str(Path(self._dir) / "notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(path)
        self._notify.setblocking(False)
        self._wakes = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._wakes.setblocking(False)
        self.failed: str | None = None  # why the service must exit with an error
        self._stopping = False
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=run_engine_process, args=(settings, path), name="replygate-engine"
        )
        self.process.start()

    async def until_ready(self, stop: asyncio.Event) -> None:
        """Return once the child said READY=1, or at once when ``stop`` is set meanwhile
        (the caller stops it); ``StartupError`` if it exits first or is too slow."""
        loop = asyncio.get_running_loop()
        exited = asyncio.ensure_future(asyncio.to_thread(self.process.join))
        stopped = asyncio.ensure_future(stop.wait())
        said: asyncio.Future[bytes] | None = None
        try:
            deadline = loop.time() + ENGINE_START_SECONDS
            while True:
                said = asyncio.ensure_future(loop.sock_recv(self._notify, 4096))
                done, _ = await asyncio.wait(
                    {said, exited, stopped},
                    timeout=deadline - loop.time(),
                    return_when="FIRST_COMPLETED",
                )
                if said in done and b"READY=1" in said.result().split(b"\n"):
                    return
                if stopped in done:
                    return
                if exited in done:
                    raise StartupError(
                        f"the engine process stopped while starting (exit status "
                        f"{self.process.exitcode}); its log says why"
                    )
                if not done:
                    raise StartupError(
                        f"the engine process did not start within {ENGINE_START_SECONDS:.0f} s"
                    )
        finally:
            for waiter in (said, stopped, exited):
                if waiter is not None and not waiter.done():
                    waiter.cancel()  # the join thread keeps waiting; join() reaps the child

    async def forward_wakes(self, committed: asyncio.Event, stop: asyncio.Event) -> None:
        """Tell the child each time the gateway has committed mail (one datagram; one
        lost when its queue is full changes nothing, the next poll finds the mail)."""
        with contextlib.suppress(OSError):
            self._wakes.connect(str(Path(self._dir) / "wake"))
        while not stop.is_set():
            await first_of(stop, committed, timeout=3600)
            committed.clear()
            with contextlib.suppress(OSError):
                self._wakes.send(b"!")

    async def watch(self, stop: asyncio.Event) -> None:
        """Stop the service if the child exits while it runs (``failed`` says so)."""
        sentinel = self.process.sentinel
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        loop.add_reader(sentinel, gone.set)
        try:
            await asyncio.wait(
                {asyncio.ensure_future(gone.wait()), asyncio.ensure_future(stop.wait())},
                return_when="FIRST_COMPLETED",
            )
        finally:
            loop.remove_reader(sentinel)
        if gone.is_set() and not self._stopping:
            status = await asyncio.to_thread(self._exit_status)
            self.failed = f"the engine process exited (status {status})"
            log.error("engine_process.exited", status=status)
            stop.set()

    def _exit_status(self) -> int | None:
        """The child's exit status once reaped. Another thread asking ``is_alive`` (the
        readiness check) may reap it first, and a join racing with it then returns
        before the status is recorded: ask again for a moment."""
        self.process.join(ENGINE_STOP_SECONDS)
        deadline = time.monotonic() + ENGINE_STOP_SECONDS
        while self.process.exitcode is None and time.monotonic() < deadline:
            self.process.join(0.05)
        return self.process.exitcode

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM: it finishes its current batch)."""
        self._stopping = True
        if self.process.is_alive():
            self.process.terminate()

    async def join(self) -> None:
        """Wait for the child to exit (killed after ``ENGINE_STOP_SECONDS``); clean up."""
        self._stopping = True
        await asyncio.to_thread(self.process.join, ENGINE_STOP_SECONDS)
        if self.process.is_alive():
            log.error("engine_process.killed", after_seconds=ENGINE_STOP_SECONDS)
            self.process.kill()
            await asyncio.to_thread(self.process.join)
        self._notify.close()
        self._wakes.close()
        for name in ("notify", "wake"):
            with contextlib.suppress(OSError):
                os.unlink(Path(self._dir) / name)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def run_engine_process(settings: Settings, notify_path: str) -> None:
    """The child's whole life: log as ``serve`` does, run role ``worker`` until SIGTERM or
    SIGINT, and say READY=1 to the parent's socket (not to systemd's)."""
    from replygate.store import keyring
    from replygate.store.db import make_engine, session_factory

    os.environ["NOTIFY_SOCKET"] = notify_path
    logs.configure(
        json=settings.log_json,
        redact=functools.partial(redact, settings.secret_key),
        plain_below=TOKEN_LENGTH,
    )
    keyring.load(settings)
    engine = make_engine(settings.database_url)
    wakes = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    wakes.bind(str(Path(notify_path).with_name("wake")))  # before READY=1: the parent sends
    wakes.setblocking(False)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    try:
        factory = session_factory(engine)
        asyncio.run(run_service(settings, factory, role=ProcessRole.WORKER, wakes=wakes))
    finally:
        wakes.close()
        engine.dispose()
