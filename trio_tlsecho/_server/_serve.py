"""``serve()``: bind every listener, run each in a nursery of its own, stop gracefully.

Theory of operation
-------------------
``serve`` follows trio's ``serve_*`` contract: it calls
``task_status.started(addresses)`` only once *every* listener is bound, so a
caller that asked for port 0 learns the real ports and can connect at once.
All configuration is checked (certificate files loaded, handler resolved,
sockets bound) before ``started``; a failure there raises a one-line
:class:`TLSEchoError` to the caller of ``nursery.start`` and nothing is left
open.

Each listener owns one nursery, and each accepted connection runs in the
nursery of the listener that accepted it.  A connection's task is started before
its connection exists: it takes a slot (see Backpressure), accepts, reports
``started``, and serves (:func:`~._pipeline.run_connection`) - so the slot is taken
and given back by one ``async with`` in one frame.  ``run_connection`` swallows
every per-connection failure, so a nursery only ever ends by cancellation or by
running out of connections after accepting has stopped.

Two ways to stop:

* Cancel the scope around ``serve``: everything stops now.  Without a
  ``shutdown_trigger`` this is the only way, and ``serve`` never returns.
* ``shutdown_trigger`` returns: every listener is closed at once (new clients
  are refused, not queued), ``conn.stopping`` is set (the built-in handlers
  finish at a boundary), open connections get ``shutdown_grace`` seconds to
  finish, the rest are cancelled, and ``serve`` returns.

``reload_trigger`` is awaited in a loop; each time it returns, certificate,
key, CA and CRL are read again and used for connections accepted from then on.
A broken new file is logged and the previous context stays in force.

Backpressure: with ``max_connections`` a listener takes a slot *before* it
calls ``accept``, so at the limit the server stops accepting and the kernel's
backlog holds new clients until a connection closes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import trio

from .._config import ServerConfig
from .._exceptions import CertificateError
from .._net import (
    ListenAddress,
    UnixAddress,
    accept_socket,
    bound_address,
    open_listeners,
    remove_unix_socket,
)
from .._tls import server_context
from ._metrics import ServerMetrics
from ._pipeline import run_connection
from ._state import ServerState

log = logging.getLogger("trio_tlsecho")

Trigger = Callable[[], Awaitable[object]]


async def serve(
    config: ServerConfig,
    *,
    shutdown_trigger: Trigger | None = None,
    reload_trigger: Trigger | None = None,
    metrics: ServerMetrics | None = None,
    task_status: trio.TaskStatus[list[ListenAddress]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a mutual-TLS server until cancelled, or until *shutdown_trigger* returns.

    Use as ``addresses = await nursery.start(serve, config)``: *addresses* are the
    bound ``Address``es, with real ports where port 0 was asked for.  Pass *metrics*
    to read the server's counters (or serve them with :func:`serve_metrics`).
    """
    state = ServerState.build(config, metrics)
    if config.keylog is not None:
        log.warning(
            "writing TLS session secrets to %s: anyone with that file can decrypt this traffic",
            config.keylog,
        )
    listeners: list[_Listener] = []
    # An exit stack, not a loop of awaits: closing a listener inside a cancelled scope
    # raises Cancelled, which must not skip closing the ones after it.
    async with contextlib.AsyncExitStack() as stack:
        for spec in config.listen:
            for socket_listener in await open_listeners(spec, reuse_port=config.reuse_port):
                await stack.enter_async_context(socket_listener)
                listeners.append(_Listener(socket_listener, state))
            if isinstance(spec, UnixAddress):  # a socket file we made, not one we were handed
                stack.callback(remove_unix_socket, spec)
        async with trio.open_nursery() as sweeping:
            # The idle sweep outlives the control tasks: during the shutdown grace an idle
            # connection must still be closed (and counted), not kept to the grace's end.
            sweeping.start_soon(state.liveness.run)
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(listener.run)
                for listener in listeners:
                    where = str(listener.address)
                    log.info("listening on %s", where, extra={"event": "listening", "address": where})
                state.metrics.serving = True
                task_status.started([listener.address for listener in listeners])
                async with trio.open_nursery() as control:
                    if reload_trigger is not None:
                        control.start_soon(_reload_forever, reload_trigger, state)
                    if shutdown_trigger is None:
                        await trio.sleep_forever()
                    else:
                        await shutdown_trigger()
                    control.cancel_scope.cancel()
                _begin_shutdown(listeners, state)
            sweeping.cancel_scope.cancel()
    log.info("stopped", extra={"event": "stopped"})


class _Listener:
    """One listening socket and the nursery its connections run in."""

    def __init__(self, socket_listener: trio.SocketListener, state: ServerState) -> None:
        self.socket_listener = socket_listener
        self.state = state
        self.address = bound_address(socket_listener)
        self.slot = state.slot(self.address)
        self.accepting = trio.CancelScope()
        self.connections: trio.CancelScope | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as connections:
            self.connections = connections.cancel_scope
            with self.accepting:
                await self._accept_forever(connections)
            # Stopped accepting: close the socket now so that new clients are
            # refused at once instead of waiting in the backlog for a server that left.
            await trio.aclose_forcefully(self.socket_listener)

    async def _accept_forever(self, connections: trio.Nursery) -> None:
        while True:
            await connections.start(self._connection, name=_CONNECTION_TASK)

    async def _connection(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Until started() this task runs under the caller's cancel scope (trio's
        # nursery.start), so stopping the listener cancels a pending accept here.
        async with self.slot:
            sock, peer = await accept_socket(self.socket_listener, self.address)
            task_status.started()
            # The status holds the nursery that start() ran us in: an idle connection
            # must not keep it (about a kilobyte each).
            del task_status
            await run_connection(sock, peer, self.state)

    def stop(self, grace_deadline: float) -> None:
        self.accepting.cancel()
        if self.connections is not None:
            self.connections.deadline = min(self.connections.deadline, grace_deadline)


_CONNECTION_TASK = "trio_tlsecho.run_connection"


def _begin_shutdown(listeners: list[_Listener], state: ServerState) -> None:
    state.metrics.serving = False  # /healthz: 503 from now on
    grace = state.config.shutdown_grace
    count = state.metrics.connections_open
    log.info(
        "shutting down: listeners closed; %d open connection%s %gs to finish",
        count,
        " gets" if count == 1 else "s get",
        grace,
        extra={"event": "shutting_down", "connections_open": count},
    )
    deadline = trio.current_time() + grace
    for listener in listeners:
        listener.stop(deadline)
    # Handlers that watch it finish at a boundary now, rather than at the grace's end.
    state.stopping.set()


async def _reload_forever(trigger: Trigger, state: ServerState) -> None:
    while True:
        await trigger()
        try:
            state.ssl_context = server_context(state.config)
        except CertificateError as exc:
            _log_reload_failed(str(exc))
        except Exception as exc:  # whatever it is, a reload must not stop a running server
            _log_reload_failed(f"{type(exc).__name__}: {exc}")
        else:
            crl = " and CRL" if state.config.crl is not None else ""
            log.info("reloaded certificate, key, CA%s for new connections", crl, extra={"event": "reloaded"})


def _log_reload_failed(why: str) -> None:
    log.error(
        "reload failed, still using the previous certificates: %s",
        why,
        extra={"event": "reload_failed", "error": why},
    )
