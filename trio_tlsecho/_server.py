"""``serve()``: bind every listener, then run each in a nursery of its own.

Theory of operation
-------------------
``serve`` follows trio's ``serve_*`` contract: it never returns, and it calls
``task_status.started(addresses)`` only once *every* listener is bound, so a
caller that asked for port 0 learns the real ports and can connect at once.
All configuration is checked (certificate files loaded, handler resolved,
sockets bound) before ``started``; a failure there raises a one-line
:class:`TLSEchoError` to the caller of ``nursery.start`` and nothing is left
open.

Each listener owns one nursery, and each accepted connection runs in the
nursery of the listener that accepted it.  ``run_connection`` swallows every
per-connection failure, so a nursery only ever ends by cancellation: shutting
down is cancelling the scope around ``serve``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
from typing import NoReturn

import trio

from ._config import Address, ServerConfig
from ._connection import ConnectionCounts, run_connection
from ._exceptions import ListenError
from ._handlers import Handler
from ._registry import resolve_handler
from ._tls import server_context

log = logging.getLogger("trio_tlsecho")

# Temporary resource exhaustion on accept(): wait and retry rather than die (trio's
# ACCEPT_CAPACITY_ERRNOS).  Anything else is a bug or a closed socket and propagates.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_CAPACITY_PAUSE = 0.100


async def serve(
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run a mutual-TLS server until cancelled.

    Use as ``addresses = await nursery.start(serve, config)``: *addresses* are the
    bound ``Address``es, with real ports where port 0 was asked for.
    """
    ssl_context = server_context(config)
    handler = config.handler
    if isinstance(handler, str):
        handler = resolve_handler(handler)
    counts = ConnectionCounts()
    # An exit stack, not a loop of awaits: closing a listener inside a cancelled scope
    # raises Cancelled, which must not skip closing the ones after it.
    async with contextlib.AsyncExitStack() as stack:
        listeners = await _bind(config.listen, stack)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    _serve_listener,
                    listener,
                    ssl_context,
                    handler,
                    config.handshake_timeout,
                    counts,
                )
            task_status.started([_bound_address(listener) for listener in listeners])
    raise AssertionError("listeners only end by cancellation")  # pragma: no cover


async def _serve_listener(
    listener: trio.SocketListener,
    ssl_context: ssl.SSLContext,
    handler: Handler,
    handshake_timeout: float,
    counts: ConnectionCounts,
) -> NoReturn:
    async with trio.open_nursery() as connections:
        while True:
            try:
                tcp = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error(
                    "accept on %s: %s; pausing %d ms",
                    _bound_address(listener),
                    exc.strerror,
                    _CAPACITY_PAUSE * 1000,
                )
                await trio.sleep(_CAPACITY_PAUSE)
                continue
            connections.start_soon(run_connection, tcp, ssl_context, handler, handshake_timeout, counts)


async def _bind(
    addresses: tuple[Address, ...], stack: contextlib.AsyncExitStack
) -> list[trio.SocketListener]:
    bound: list[trio.SocketListener] = []
    for address in addresses:
        for listener in await _open(address):
            bound.append(await stack.enter_async_context(listener))
    return bound


async def _open(address: Address) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {address}: unknown host ({exc.strerror})") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges)"
        raise ListenError(f"cannot listen on {address}: {reason}") from None


def _bound_address(listener: trio.SocketListener) -> Address:
    sockname = listener.socket.getsockname()
    return Address(str(sockname[0]), int(sockname[1]))
