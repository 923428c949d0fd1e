"""``serve --workers N``: N server processes sharing ports, and the supervisor that keeps them.

Theory of operation
-------------------
Python runs one thread of Python at a time, so using every core means
processes.  Each worker is a whole server (its own trio loop, listeners and
nurseries) whose listeners are bound with SO_REUSEPORT to the same addresses;
the kernel spreads new connections across them.  Nothing is shared between
workers but the listening port and a block of shared memory for metrics.

The supervisor (:class:`_Supervisor`, in the parent process):

* checks the configuration once (certificates, handler) so that a mistake is
  one line from one process, not N;
* resolves port 0 by binding the port itself, with SO_REUSEPORT but without
  ``listen``: that reservation holds the port for the workers (and for workers
  restarted later) while never receiving connections itself;
* starts the workers (``spawn``: no fork of a running trio loop), waits until
  each has bound its listeners, and only then reports the addresses;
* restarts a worker that exits while it should be running (with a pause if it
  keeps dying at once);
* reads its signals as one server process does (:mod:`._signals`: SIGTERM or
  SIGINT is a graceful stop, a second one stops at once, SIGHUP reloads) and
  relays each to every worker as SIGTERM or SIGHUP; it exits 0 once they have
  all stopped.  A worker that exits while stopping is not restarted.

Sockets the workers cannot bind each for themselves (a UNIX path, systemd's
sockets, an inherited ``fd://N``) the supervisor opens once and every worker
inherits: spawn passes a socket in a worker's arguments as the same descriptor
number, so each worker's config says ``fd://N`` for it.  They share one accept
queue; SO_REUSEPORT is not needed for them.

systemd hears from the supervisor alone (:mod:`._notify`): ``READY=1`` once every
worker serves, ``RELOADING=1`` and ``READY=1`` around a reload (the supervisor
checks the new files itself, as it does at start, before it relays SIGHUP),
``STOPPING=1``, and the connections open in all workers as ``STATUS=``.

Workers ignore SIGINT: Ctrl-C in a terminal reaches the whole process group,
and only the supervisor should decide what it means.  A worker ignores SIGHUP
until its server listens for it (a worker that is starting reads the current
files anyway).  Both must hold from the first instruction of the new process,
not from when ``_worker_main`` runs: a spawned worker spends hundreds of
milliseconds starting Python and importing before that, and with default
handling a reload relayed then would kill it, a Ctrl-C would print a
traceback from some import.  So the supervisor blocks both signals around
``_Supervisor.start``; the child inherits the mask through fork and exec,
and unblocks them once it ignores them, which discards any that arrived
meanwhile (as multiprocessing's own resource tracker does with SIGINT and
SIGTERM).  SIGTERM is not blocked: a worker stopped while it starts just ends.

A worker must not outlive its supervisor: left alone it would go on serving a
port nobody restarts, reloads or stops (a ``systemctl stop`` after the supervisor
was SIGKILLed would find nothing to signal).  On Linux each worker asks the kernel
for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``; the supervisor starts
workers from its main thread, whose end is the process's), so a worker orphaned even
by SIGKILL stops gracefully, its connections getting their grace.

A worker that does not report ready within ``_STARTUP_TIMEOUT`` is killed, so
that a hung start-up is restarted like any other death instead of leaving its
slot empty until it ends on its own.

Metrics: each worker writes its counters straight into its own slice of shared
memory (see ``ServerMetrics``); the supervisor sums the slices when scraped.  A
restarted worker takes over its predecessor's slice and keeps counting from
there, so a crash loses no counter (``connections_open`` starts from zero,
since the dead worker's connections are gone).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import attrs
import trio
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .._config import ServerConfig
from .._exceptions import TLSEchoError
from .._handlers import resolve_handler
from .._net import (
    Address,
    InheritedFd,
    ListenAddress,
    ListenSpec,
    UnixAddress,
    bind_reuse_port,
    bind_unix,
    inherited_sockets,
    listen_error,
    remove_unix_socket,
)
from .._program import PROG, run_program, setup_logging
from .._server import METRIC_SLOTS, ServerMetrics, serve_metrics
from .._tls import server_context
from ._notify import Notifier, connections_status
from ._signals import Action, SignalState, log_action
from ._single import announce_metrics, serve_until_signalled

log = logging.getLogger("trio_tlsecho")

#: A worker that dies sooner than this after starting is restarted only after a pause,
#: so that a worker that cannot run does not spin the CPU restarting.
_QUICK_DEATH = 1.0
_RESTART_PAUSE = 1.0
_STARTUP_TIMEOUT = 60.0
#: Blocked from before a worker's process exists until it ignores them (see above).
_STARTUP_BLOCKED = frozenset({signal.SIGINT, signal.SIGHUP})
#: A worker's one stop signal: it ignores SIGINT, which the terminal sends it too.
_WORKER_STOP = signal.SIGTERM

_RELAY_MESSAGES = {
    Action.RELOAD: "%s received, reloading certificates in every worker",
    Action.STOP: "%s received, stopping workers gracefully",
    Action.STOP_NOW: "%s received again, stopping workers now",
}
#: What every worker is sent for the supervisor's action.  A worker counts its own
#: SIGTERMs, so the second stop signal here is the second SIGTERM there: "stop now".
_RELAYED = {Action.RELOAD: signal.SIGHUP, Action.STOP: _WORKER_STOP, Action.STOP_NOW: _WORKER_STOP}


class _Summed(Collector):
    """Every worker's metrics, added up at scrape time; ``serving`` is the supervisor's (/healthz)."""

    def __init__(self, parts: list[ServerMetrics]) -> None:
        self.parts = parts
        self.serving = False

    def collect(self) -> Iterator[Metric]:
        return ServerMetrics.total(self.parts).collect()


@attrs.define(eq=False)
class _Worker:
    index: int
    process: Any = None  # multiprocessing.Process (spawn context): untyped in typeshed
    started_at: float = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None


async def supervise(
    config: ServerConfig,
    workers: int,
    *,
    on_started: Callable[[list[ListenAddress]], None],
    metrics_address: Address | None = None,
    log_level: str = "INFO",
    log_format: str = "text",
) -> int | None:
    """Run *workers* server processes until a stop signal, then stop them gracefully.

    Returns the signal that began the stop (``None`` if none did).
    """
    if not isinstance(config.handler, str):
        raise TLSEchoError("workers need the handler by name or module:attr (each process imports it)")
    # Fail fast, once, in the supervisor: the workers would all fail the same way.
    server_context(config)
    resolve_handler(config.handler, config.handler_options)

    reservations: list[trio.socket.SocketType] = []
    shared: list[socket.socket] = []
    made: list[UnixAddress] = []  # socket files we bound (never somebody else's)
    try:
        listen = [spec for each in config.listen for spec in await _prepare(each, reservations, shared, made)]
        worker_config = attrs.evolve(config, listen=listen, reuse_port=True)
        with _shared_metrics(workers) as (shm_name, metrics):
            supervisor = _Supervisor(worker_config, metrics, shm_name, (log_level, log_format), shared)
            await supervisor.run(on_started, metrics_address)
            return supervisor.state.stopped_by
    finally:
        for sock in reservations:
            sock.close()
        for shared_sock in shared:
            shared_sock.close()
        for path in made:
            remove_unix_socket(path)


async def _prepare(
    spec: ListenSpec,
    reservations: list[trio.socket.SocketType],
    shared: list[socket.socket],
    made: list[UnixAddress],
) -> list[ListenSpec]:
    """What the workers' configs say for *spec*: an address each binds with SO_REUSEPORT,
    or ``fd://N`` for each socket opened here and inherited (added to *shared*; a UNIX
    socket we bound to *made* too)."""
    if isinstance(spec, Address):
        return [await _reserve(spec, reservations)]
    if isinstance(spec, UnixAddress):
        try:
            sockets = [socket.socket(fileno=(await bind_unix(spec)).detach())]
        except OSError as exc:
            raise listen_error(spec, exc) from None
        made.append(spec)
    else:
        sockets = inherited_sockets(spec)
    shared += sockets
    return [InheritedFd(sock.fileno()) for sock in sockets]


async def _reserve(address: Address, held: list[trio.socket.SocketType]) -> Address:
    """Hold *address*'s port (port 0: pick one) for the workers; add the sockets to *held*."""
    try:
        if address.port:
            # SO_REUSEPORT would let us join whatever holds the port with it too (a
            # second `serve --workers`) and quietly share its clients: check first.
            for probe in await bind_reuse_port(address, listen=False, reuse_port=False):
                probe.close()
        first = await bind_reuse_port(address, listen=False)
        held += first
        if address.port or len(first) == 1:
            return Address(address.host, first[0].getsockname()[1])
        # Port 0 on a name with several addresses (IPv4 and IPv6): each socket got a
        # port of its own; the workers need one port on all of them.
        port = first[0].getsockname()[1]
        for sock in first[1:]:
            sock.close()
        again = await bind_reuse_port(Address(address.host, port), listen=False)
        again[0].close()  # that family's port is held already
        held += again[1:]
        return Address(address.host, port)
    except OSError as exc:
        raise listen_error(address, exc) from None


@contextlib.contextmanager
def _shared_metrics(workers: int) -> Iterator[tuple[str, list[ServerMetrics]]]:
    """A new block of shared memory with a slice of metrics per worker: its name, and the slices."""
    shm = SharedMemory(create=True, size=8 * METRIC_SLOTS * workers)
    try:
        with _metric_slices(shm, range(workers)) as metrics:
            yield shm.name, metrics
    finally:
        shm.close()
        shm.unlink()


@contextlib.contextmanager
def _metric_slices(shm: SharedMemory, indexes: Iterable[int]) -> Iterator[list[ServerMetrics]]:
    """Metrics over the workers' slices of *shm*, released on exit: a block with a view
    left on it cannot be closed.  The supervisor takes every slice, a worker its own."""
    assert shm.buf is not None
    slots = shm.buf.cast("q")
    parts = [ServerMetrics(slots[i * METRIC_SLOTS : (i + 1) * METRIC_SLOTS]) for i in indexes]
    try:
        yield parts
    finally:
        for part in parts:
            part.slots.release()
        slots.release()


class _Supervisor:
    """The parent of the workers: starts them, restarts them, relays signals to them.

    ``state`` is the stop/reload state (:mod:`._signals`): once it is stopping, a
    worker that exits stays gone, and the supervisor returns when all have.
    """

    def __init__(
        self,
        config: ServerConfig,
        metrics: list[ServerMetrics],
        shm_name: str,
        log_setup: tuple[str, str],
        shared: Sequence[socket.socket] = (),
    ) -> None:
        self.config = config
        self.shared = shared
        self.notifier = Notifier.from_environment()
        self.metrics = metrics
        self.shm_name = shm_name
        self.log_setup = log_setup  # level and format
        self.workers = [_Worker(i) for i in range(len(metrics))]
        self.summed = _Summed(metrics)
        self.state = SignalState()
        self._context = multiprocessing.get_context("spawn")

    async def run(
        self, on_started: Callable[[list[ListenAddress]], None], metrics_address: Address | None
    ) -> None:
        """Start every worker, keep them running until a stop signal, return once all are gone."""
        with trio.open_signal_receiver(*self.state.signals) as signals:
            async with trio.open_nursery() as nursery:
                # The metrics port first: a port in use must fail before any worker exists.
                bound = None
                if metrics_address is not None:
                    summed = functools.partial(
                        serve_metrics, self.summed, metrics_address, workers=(self.worker_pids, self.metrics)
                    )
                    bound = await nursery.start(summed)
                try:
                    addresses = await self.start_all()
                    # Signals that came while the workers started have waited in the receiver.
                    nursery.start_soon(self.relay, signals)
                    if bound is not None:
                        announce_metrics(bound)
                    self.summed.serving = not self.state.stopping
                    on_started(addresses)
                    pids = ", ".join(str(w.process.pid) for w in self.workers)
                    log.info("%d workers serving: pids %s", len(self.workers), pids)
                    self.notifier.ready(self.status(self.connections_open()))
                    nursery.start_soon(self.notifier.report_connections, self.connections_open, self.status)
                    await self.keep_all()
                except BaseException:
                    # Whatever went wrong here, no worker may outlive its supervisor.
                    self.kill_all()
                    raise
                nursery.cancel_scope.cancel()  # every worker is gone: stop relaying signals
            log.info("all workers stopped")

    def connections_open(self) -> int:
        return sum(part.connections_open for part in self.metrics)

    def status(self, open_now: int) -> str:
        return f"{len(self.workers)} workers {connections_status(open_now)}"

    async def start_all(self) -> list[ListenAddress]:
        """Start every worker at once; the first one's addresses once all are ready."""
        readies = [self.start(worker) for worker in self.workers]
        addresses = [await self.wait_ready(w, r) for w, r in zip(self.workers, readies, strict=True)]
        return addresses[0]

    async def keep_all(self) -> None:
        """Keep every worker running; returns once stopping and every worker has exited."""
        async with trio.open_nursery() as keepers:
            for worker in self.workers:
                keepers.start_soon(self.keep, worker)

    def start(self, worker: _Worker) -> multiprocessing.connection.Connection:
        """Start *worker*'s process; returns the pipe it reports its addresses on."""
        receive, send = self._context.Pipe(duplex=False)
        worker.process = self._context.Process(
            target=_worker_main,
            # The shared sockets travel as descriptors of the same number (see above).
            args=(self.config, worker.index, self.shm_name, send, self.log_setup, self.shared),
            name=f"trio-tlsecho-worker-{worker.index}",
        )
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STARTUP_BLOCKED)
        try:
            worker.process.start()
        finally:
            # Restored, not unblocked: held ones reach trio's handlers now, as if just sent.
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        send.close()
        worker.started_at = time.monotonic()
        return receive

    async def wait_ready(
        self, worker: _Worker, ready: multiprocessing.connection.Connection
    ) -> list[ListenAddress]:
        """*worker*'s addresses once it listens; :class:`TLSEchoError` if it never will."""
        with ready:
            try:
                with trio.fail_after(_STARTUP_TIMEOUT):
                    await trio.lowlevel.wait_readable(ready.fileno())
            except trio.TooSlowError:
                # Hung, not dead: only its death lets a keeper restart it.  (A worker that
                # closed the pipe is exiting already, maybe still printing why: not killed.)
                worker.process.kill()
                raise TLSEchoError(
                    f"worker {worker.index} did not start within {_STARTUP_TIMEOUT:g}s; killed it"
                ) from None
            try:
                addresses: list[ListenAddress] = ready.recv()
            except EOFError:
                raise TLSEchoError(
                    f"worker {worker.index} exited while starting (see its error above)"
                ) from None
        return addresses

    async def keep(self, worker: _Worker) -> None:
        """Restart *worker* each time it exits; return when it exits while stopping."""
        while True:
            await trio.lowlevel.wait_readable(worker.process.sentinel)
            worker.process.join()
            if self.state.stopping:
                return
            quick = time.monotonic() - worker.started_at < _QUICK_DEATH
            log.error(
                "worker %d (pid %d) exited with %s; restarting it%s",
                worker.index,
                worker.process.pid,
                _exit_reason(worker.process.exitcode),
                f" in {_RESTART_PAUSE:g}s" if quick else "",
            )
            if quick:
                await trio.sleep(_RESTART_PAUSE)
            if self.state.stopping:
                return
            await self.restart(worker)

    async def restart(self, worker: _Worker) -> None:
        try:
            await self.wait_ready(worker, self.start(worker))
        except TLSEchoError as exc:
            if not self.state.stopping:  # a stop relayed while it started ended it on purpose
                log.error("worker %d did not come back: %s", worker.index, exc)
        else:
            log.info("worker %d restarted: pid %d", worker.index, worker.process.pid)

    async def relay(self, signals: AsyncIterator[int]) -> None:
        """Turn each signal into an action (:mod:`._signals`) and pass it on to every worker."""
        async for signum in signals:
            action = self.state.receive(signum)
            log_action(action, signum, _RELAY_MESSAGES)
            if self.state.stopping:
                self.summed.serving = False  # /healthz: 503 from the first stop signal
            if action is Action.RELOAD:
                self.reload_all()
            elif action in _RELAYED:
                if action is Action.STOP:
                    self.notifier.stopping()
                self.signal_all(_RELAYED[action])

    def reload_all(self) -> None:
        self.notifier.reloading()
        # Each worker logs its own outcome; this check is for systemd's READY=1.
        try:
            server_context(self.config)
        except Exception as exc:  # a reload must never stop the supervisor
            status = f"reload failed, still using the previous certificates: {exc}"
        else:
            status = "certificates reloaded"
        self.signal_all(signal.SIGHUP)
        self.notifier.ready(f"{len(self.workers)} workers serving, {status}")

    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in self.workers if worker.alive]

    def signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.alive:
                os.kill(worker.process.pid, signum)

    def kill_all(self) -> None:
        for worker in self.workers:
            if worker.alive:
                worker.process.kill()
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join(5)


def _exit_reason(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


def _worker_main(
    config: ServerConfig,
    index: int,
    shm_name: str,
    ready: multiprocessing.connection.Connection,
    log_setup: tuple[str, str],
    shared: Sequence[socket.socket],
) -> None:
    """A worker process: one server, reporting its addresses once bound."""
    for sock in shared:
        sock.detach()  # the config's fd://N listener owns the descriptor now
    for signum in _STARTUP_BLOCKED:
        signal.signal(signum, signal.SIG_IGN)
    # Blocked since before exec (see the module's docstring): ignored from now on,
    # so unblocking discards what arrived while we started.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STARTUP_BLOCKED)
    _stop_with_parent()
    level, log_format = log_setup
    setup_logging(level, log_format=log_format, worker=index)
    # Attaching registers the name with the resource tracker again (Python < 3.13);
    # the tracker is the supervisor's, shared, and the supervisor unlinks the segment.
    shm = SharedMemory(name=shm_name)
    try:
        with _metric_slices(shm, [index]) as [metrics], metrics.counting_gc():
            metrics.connections_open = 0  # a predecessor's connections died with it
            # A key or certificate that broke after the supervisor checked it (a restart
            # reads it again) is still the user's mistake: one line, like the supervisor's.
            serving = functools.partial(_serve_worker, config, metrics, ready)
            status = run_program(serving, who=f"{PROG}: worker {index}")
    finally:
        shm.close()
    if status:
        raise SystemExit(status)


_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """Have Linux send us SIGTERM when the supervisor dies, however it dies (best effort)."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() != parent.pid:  # it died before we asked: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def _serve_worker(
    config: ServerConfig, metrics: ServerMetrics, ready: multiprocessing.connection.Connection
) -> int:
    def started(addresses: list[ListenAddress]) -> None:
        ready.send(addresses)
        ready.close()

    trio.run(
        functools.partial(
            serve_until_signalled,
            config,
            on_started=started,
            metrics=metrics,
            stop_signals=(_WORKER_STOP,),
            notify=False,
        )
    )
    return 0
