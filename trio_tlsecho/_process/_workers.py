"""``serve --workers N``: N server processes sharing ports, and the supervisor that keeps them.

Theory of operation
-------------------
Python runs one thread of Python at a time, so using every core means
processes.  Each worker is a whole server (its own trio loop, listeners and
nurseries) whose listeners are bound with SO_REUSEPORT to the same addresses;
the kernel spreads new connections across them.  Nothing is shared between
workers but the listening port and a block of shared memory for metrics.

The supervisor (this module, in the parent process):

* checks the configuration once (certificates, handler) so that a mistake is
  one line from one process, not N;
* resolves port 0 by binding the port itself, with SO_REUSEPORT but without
  ``listen``: that reservation holds the port for the workers (and for workers
  restarted later) while never receiving connections itself;
* starts the workers (``spawn``: no fork of a running trio loop), waits until
  each has bound its listeners, and only then reports the addresses;
* restarts a worker that exits while it should be running (with a pause if it
  keeps dying at once);
* forwards SIGTERM (graceful stop; a second one stops at once) and SIGHUP
  (reload) to every worker, and exits 0 once they have all stopped.

Workers ignore SIGINT: Ctrl-C in a terminal reaches the whole process group,
and only the supervisor should decide what it means.  A worker ignores SIGHUP
until its server listens for it (a worker that is starting reads the current
files anyway).  Both must hold from the first instruction of the new process,
not from when ``_worker_main`` runs: a spawned worker spends hundreds of
milliseconds starting Python and importing before that, and with default
handling a reload relayed then would kill it, a Ctrl-C would print a
traceback from some import.  So the supervisor blocks both signals around
``start()``; the child inherits the mask through fork and exec, and unblocks
them once it ignores them, which discards any that arrived meanwhile (as
multiprocessing's own resource tracker does with SIGINT and SIGTERM).

A worker that does not report ready within ``_STARTUP_TIMEOUT`` is killed, so
that a hung start-up is restarted like any other death instead of leaving its
slot empty until it ends on its own.

Metrics: each worker writes its counters straight into its own slice of shared
memory (see :mod:`._metrics`); the supervisor sums the slices when scraped.  A
restarted worker takes over its predecessor's slice and keeps counting from
there, so a crash loses no counter (``connections_open`` starts from zero,
since the dead worker's connections are gone).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import attrs
import trio
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .._config import ServerConfig
from .._exceptions import ListenError, TLSEchoError
from .._handlers import resolve_handler
from .._net import Address, bind_reuse_port
from .._program import PROG, run_program, setup_logging
from .._server import METRIC_SLOTS, ServerMetrics, serve_metrics
from .._tls import server_context
from ._single import serve_until_signalled

log = logging.getLogger("trio_tlsecho")

#: A worker that dies sooner than this after starting is restarted only after a pause,
#: so that a worker that cannot run does not spin the CPU restarting.
_QUICK_DEATH = 1.0
_RESTART_PAUSE = 1.0
_STARTUP_TIMEOUT = 60.0
#: Blocked from before a worker's process exists until it ignores them (see above).
_STARTUP_BLOCKED = frozenset({signal.SIGINT, signal.SIGHUP})


class _Summed(Collector):
    """Every worker's metrics, added up at scrape time."""

    def __init__(self, parts: list[ServerMetrics]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        return ServerMetrics.total(self.parts).collect()


@attrs.define(eq=False)
class _Worker:
    index: int
    process: Any = None  # multiprocessing.Process (spawn context): untyped in typeshed
    started_at: float = 0.0


async def supervise(
    config: ServerConfig,
    workers: int,
    *,
    on_started: Callable[[list[Address]], None],
    metrics_address: Address | None = None,
    log_level: str = "INFO",
) -> None:
    """Run *workers* server processes until a stop signal, then stop them gracefully."""
    if not isinstance(config.handler, str):
        raise TLSEchoError("workers need the handler by name or module:attr (each process imports it)")
    # Fail fast, once, in the supervisor: the workers would all fail the same way.
    server_context(config)
    resolve_handler(config.handler)

    reservations: list[trio.socket.SocketType] = []
    shm = SharedMemory(create=True, size=8 * METRIC_SLOTS * workers)
    try:
        listen: list[Address] = []
        for address in config.listen:
            listen.append(await _reserve(address, reservations))
        worker_config = attrs.evolve(config, listen=listen, reuse_port=True)
        assert shm.buf is not None
        slots = shm.buf.cast("q")
        metrics = [ServerMetrics(slots[i * METRIC_SLOTS : (i + 1) * METRIC_SLOTS]) for i in range(workers)]
        try:
            await _run(worker_config, metrics, shm.name, on_started, metrics_address, log_level)
        finally:
            for part in metrics:
                part.slots.release()
            slots.release()
    finally:
        for sock in reservations:
            sock.close()
        shm.close()
        shm.unlink()


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
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None


async def _run(
    config: ServerConfig,
    metrics: list[ServerMetrics],
    shm_name: str,
    on_started: Callable[[list[Address]], None],
    metrics_address: Address | None,
    log_level: str,
) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [_Worker(i) for i in range(len(metrics))]
    stopping = trio.Event()

    def start(worker: _Worker) -> multiprocessing.connection.Connection:
        receive, send = context.Pipe(duplex=False)
        worker.process = context.Process(
            target=_worker_main,
            args=(config, worker.index, len(metrics), shm_name, send, log_level),
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

    async def wait_ready(worker: _Worker, ready: multiprocessing.connection.Connection) -> list[Address]:
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
                addresses: list[Address] = ready.recv()
            except EOFError:
                raise TLSEchoError(
                    f"worker {worker.index} exited while starting (see its error above)"
                ) from None
        return addresses

    async def keep(worker: _Worker) -> None:
        while True:
            await trio.lowlevel.wait_readable(worker.process.sentinel)
            worker.process.join()
            code = worker.process.exitcode
            if stopping.is_set():
                return
            quick = time.monotonic() - worker.started_at < _QUICK_DEATH
            log.error(
                "worker %d (pid %d) exited with %s; restarting it%s",
                worker.index,
                worker.process.pid,
                f"signal {-code}" if code < 0 else f"status {code}",
                f" in {_RESTART_PAUSE:g}s" if quick else "",
            )
            if quick:
                await trio.sleep(_RESTART_PAUSE)
            if stopping.is_set():
                return
            ready = start(worker)
            try:
                await wait_ready(worker, ready)
            except TLSEchoError as exc:
                if not stopping.is_set():  # a stop relayed while it started ended it on purpose
                    log.error("worker %d did not come back: %s", worker.index, exc)
            else:
                log.info("worker %d restarted: pid %d", worker.index, worker.process.pid)

    async def relay(signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("SIGHUP received, reloading certificates in every worker")
            elif stopping.is_set():
                log.warning("%s received again, stopping workers now", signal.Signals(signum).name)
                signum = signal.SIGTERM
            else:
                log.info("%s received, stopping workers gracefully", signal.Signals(signum).name)
                stopping.set()
                signum = signal.SIGTERM
            signal_all(signum)

    def signal_all(signum: int) -> None:
        for worker in workers:
            if worker.process is not None and worker.process.exitcode is None:
                os.kill(worker.process.pid, signum)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            # The metrics port first: a port in use must fail before any worker exists.
            bound = None
            if metrics_address is not None:
                bound = await nursery.start(serve_metrics, _Summed(metrics), metrics_address)
            try:
                readies = [start(worker) for worker in workers]
                addresses = [await wait_ready(w, r) for w, r in zip(workers, readies, strict=True)]
                nursery.start_soon(relay, signals)
                if bound is not None:
                    print(f"metrics on http://{bound}/metrics", flush=True)
                on_started(addresses[0])
                log.info(
                    "%d workers serving: pids %s",
                    len(workers),
                    ", ".join(str(w.process.pid) for w in workers),
                )
                # Keepers return only once stopping and their worker has exited.
                async with trio.open_nursery() as keepers:
                    for worker in workers:
                        keepers.start_soon(keep, worker)
            except BaseException:
                # Whatever went wrong here, no worker may outlive its supervisor.
                _kill_all(workers)
                raise
            nursery.cancel_scope.cancel()  # every worker is gone: stop relaying signals
        log.info("all workers stopped")


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process is not None and worker.process.exitcode is None:
            worker.process.kill()
    for worker in workers:
        if worker.process is not None:
            worker.process.join(5)


def _worker_main(
    config: ServerConfig,
    index: int,
    count: int,
    shm_name: str,
    ready: multiprocessing.connection.Connection,
    log_level: str,
) -> None:
    """A worker process: one server, reporting its addresses once bound."""
    for signum in _STARTUP_BLOCKED:
        signal.signal(signum, signal.SIG_IGN)
    # Blocked since before exec (see the module's docstring): ignored from now on,
    # so unblocking discards what arrived while we started.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STARTUP_BLOCKED)
    setup_logging(log_level, tag=f"[worker {index}]")
    # Attaching registers the name with the resource tracker again (Python < 3.13);
    # the tracker is the supervisor's, shared, and the supervisor unlinks the segment.
    shm = SharedMemory(name=shm_name)
    assert shm.buf is not None
    slots = shm.buf.cast("q")[index * METRIC_SLOTS : (index + 1) * METRIC_SLOTS]
    metrics = ServerMetrics(slots)
    metrics.connections_open = 0  # a predecessor's connections died with it

    def started(addresses: list[Address]) -> None:
        ready.send(addresses)
        ready.close()

    run = functools.partial(
        serve_until_signalled, config, on_started=started, metrics=metrics, stop_signals=(signal.SIGTERM,)
    )
    try:
        # A key or certificate that broke after the supervisor checked it (a restart
        # reads it again) is still the user's mistake: one line, like the supervisor's.
        status = run_program(functools.partial(_run_to_zero, run), who=f"{PROG}: worker {index}")
        if status:
            raise SystemExit(status)
    finally:
        # Every view of the segment must go before it can be closed.
        del run, metrics
        slots.release()
        shm.close()


def _run_to_zero(main: Callable[[], Awaitable[object]]) -> int:
    trio.run(main)
    return 0
