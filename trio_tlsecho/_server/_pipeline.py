"""The life of one accepted connection: handshake, identity, policy, handler, close.

Everything that can go wrong with one peer (a bad certificate, a silent client,
a reset, a handler bug) is caught here and turned into one log line, because
the listener's nursery must never see it: one connection's failure must not
touch another.  ``trio.Cancelled`` and other ``BaseException``s are left alone so
that shutdown still works.

Timeouts: the handshake runs under one total deadline (a peer dribbling a byte
a second gets no extension); the established connection is watched by the
server's :class:`~._liveness.Liveness`, which cancels it once no byte has moved in
either direction for the idle timeout, so a peer that stops reading is as idle
as one that stops writing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from .._config import ServerConfig
from .._engines import Meter, SSLSocketStream
from .._handlers import Connection, Handler
from .._net import ProxyProtocolError, address_in, format_address, read_proxy_header
from .._tls import IdentityCache, classify_tls_error, describe_tls_error
from ._liveness import Liveness
from ._metrics import ServerMetrics

log = logging.getLogger("trio_tlsecho")

# How long we try to deliver a TLS alert to a peer we are refusing.  The peer may be
# a scanner that never reads; it must not hold the slot.
_ALERT_TIMEOUT = 1.0


@attrs.define(eq=False)
class ServerState:
    """What every connection of one ``serve()`` shares.  Mutable on purpose, and only here:
    a reload swaps ``ssl_context`` for new connections; running ones keep theirs."""

    config: ServerConfig
    handler: Handler
    ssl_context: ssl.SSLContext
    metrics: ServerMetrics = attrs.Factory(ServerMetrics)
    #: Free connection slots when ``max_connections`` is set.
    slots: trio.Semaphore | None = None
    liveness: Liveness = attrs.field(init=False)
    identities: IdentityCache = attrs.Factory(IdentityCache)

    def __attrs_post_init__(self) -> None:
        self.liveness = Liveness(self.metrics, self.config.idle_timeout)


async def _send_alert(stream: trio.SSLStream[Any] | SSLSocketStream) -> None:
    # trio's SSLStream marks itself broken on an SSLError without sending what
    # OpenSSL queued: the alert ("certificate required", "unknown ca") that tells the
    # peer *why*.  Without it a refused client sees only a closed connection.  The
    # queue is SSLStream's private outgoing MemoryBIO, so read it defensively: if a
    # future trio renames it, we lose the alert, not the connection handling.
    # (The socket engine needs none of this: OpenSSL writes its alerts to the socket.)
    if not isinstance(stream, trio.SSLStream):
        return
    outgoing = getattr(stream, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO) or not outgoing.pending:
        return
    with trio.move_on_after(_ALERT_TIMEOUT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.transport_stream.send_all(outgoing.read())


# How long a close_notify may take to go out after the handler is done.
_CLOSE_NOTIFY_TIMEOUT = 1.0

# After refusing a peer: how long, and how much, we read what it still sends.
_LINGER_TIMEOUT = 1.0
_LINGER_BYTES = 256 * 1024


async def _linger(stream: trio.SSLStream[Any] | SSLSocketStream) -> None:
    # Closing a socket with unread bytes in it makes the kernel send a reset, and a
    # reset can overtake the alert we just sent: a refused client then reads
    # "connection reset" instead of "certificate required".  So: FIN after the alert,
    # and read (bounded) until the peer closes too.  Sockets below TLS, either engine.
    with trio.move_on_after(_LINGER_TIMEOUT):
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            if isinstance(stream, trio.SSLStream):
                tcp = stream.transport_stream.socket
                tcp.shutdown(socket.SHUT_WR)
                drained = 0
                while drained < _LINGER_BYTES and (data := await tcp.recv(65536)):
                    drained += len(data)
            else:
                raw = stream.socket  # the handshake failed: plain socket calls from here
                socket.socket.shutdown(raw, socket.SHUT_WR)
                drained = 0
                while drained < _LINGER_BYTES:
                    await trio.lowlevel.wait_readable(raw)
                    try:
                        data = socket.socket.recv(raw, 65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        break
                    drained += len(data)


async def run_connection(tcp: trio.SocketStream, peer: tuple[str, int], server: ServerState) -> None:
    """Serve one TCP connection from *peer*; returns (never raises) when it is over.

    Releases one of ``server.slots`` (when there are slots) as it ends.  It is the
    connection task's outermost frame, and holds only what the handler still needs:
    everything an idle connection keeps alive counts once per connection.
    """
    config, metrics = server.config, server.metrics
    stream: trio.SSLStream[Any] | SSLSocketStream | None = None
    # What handlers read and write, and what the byte counters count: application bytes.
    # The socket engine counts them itself; trio's SSLStream gets a meter on top.
    counted: Meter | SSLSocketStream | None = None
    failed: Exception | None = None
    handled = False
    closing: trio.abc.AsyncResource = tcp
    try:
        started = trio.current_time()
        where = format_address(*peer)
        # One deadline for the PROXY header and the handshake together: a peer gets
        # handshake_timeout to become a verified client, however it spends it.
        with trio.move_on_after(config.handshake_timeout) as scope:
            if config.proxy_protocol:
                if config.proxy_from and not address_in(peer[0], config.proxy_from):
                    # Refused at once, before any wait: not a balancer we listen to.
                    log.warning(
                        "%s: refused: PROXY header not accepted from this address (--proxy-from)", where
                    )
                    metrics.handshakes["proxy_header"] += 1
                    return
                if await _closed_silently(tcp, metrics, where):  # a plain TCP check
                    return
                real = await _read_proxy_header(tcp, peer, where, config)
                if real is None:
                    metrics.handshakes["proxy_header"] += 1
                    return
                if real != peer:
                    peer, where = real, f"{format_address(*real)} (via {where})"
            # Before any TLS (after a PROXY header: HAProxy's check-send-proxy).
            if await _closed_silently(tcp, metrics, where):
                return
            if config.engine == "socket":
                try:
                    stream = counted = SSLSocketStream.from_socket_stream(
                        tcp, server.ssl_context, server_side=True
                    )
                except (OSError, ValueError) as exc:
                    # wrap_socket() itself can fail: a peer that sent a byte and then
                    # reset makes getpeername() fail, and CPython (CVE-2023-40217)
                    # refuses a socket with unread data it cannot tell is connected.
                    # The fd is closed already; *tcp* is an empty shell.
                    failed = exc
                else:
                    closing = stream
                    del tcp  # closed and detached: the stream owns the file descriptor
            else:
                stream = closing = trio.SSLStream(tcp, server.ssl_context, server_side=True)
                # Closed through the meter, which knows when a send was cut short.
                counted = closing = Meter(stream)
            if stream is not None:
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    failed = exc
        if failed is not None:
            # Outside the handshake deadline: the alert and the linger have their own
            # bounds, and a refusal must not also be counted as a timeout.
            metrics.handshakes[classify_tls_error(failed)] += 1
            log.warning("%s: handshake failed: %s", where, describe_tls_error(failed))
            if stream is not None:  # no TLS stream, no alert to send
                await _send_alert(stream)
                await _linger(stream)
            return
        if scope.cancelled_caught:
            metrics.handshakes["timeout"] += 1
            what = "PROXY header and handshake" if config.proxy_protocol else "handshake"
            log.warning("%s: %s timed out after %gs", where, what, config.handshake_timeout)
            return
        del scope
        # Both were set before the handshake ran.
        assert stream is not None
        assert counted is not None
        identity = server.identities.peer_identity(stream)
        # CERT_REQUIRED makes OpenSSL fail the handshake without a certificate; this
        # guards against a context built elsewhere that forgot it.
        if identity is None:
            metrics.handshakes["no_cert"] += 1
            log.warning("%s: refused: no client certificate", where)
            return
        if not config.allow.permits(identity):
            metrics.handshakes["identity_refused"] += 1
            log.warning(
                "%s: refused: identity not allowed: subject=%s sans=%s sha256=%s",
                where,
                identity.subject,
                ",".join(identity.sans) or "-",
                identity.fingerprint_sha256,
            )
            return
        metrics.handshakes["ok"] += 1
        verified = trio.current_time()
        metrics.handshake_seconds.observe(verified - started)
        conn = Connection(
            stream=counted,
            tls=stream,
            peer_address=peer,
            identity=identity,
            tls_version=str(stream.version()),
            cipher=_cipher_name(stream),
        )
        try:
            handled = await _run_handler(conn, server, where, counted)
        finally:
            metrics.connection_seconds.observe(trio.current_time() - verified)
    finally:
        try:
            if counted is not None:
                server.liveness.forget(counted)  # before closing: the peer's EOF means "counted"
            if handled:
                # The handler returned (or the connection idled out): end the TLS session
                # with close_notify, as TLS asks, so that the client can tell a finished
                # conversation from a cut one.  Not after a handler error or a lost
                # connection, nor when the grace ran out (cancelled).  Bounded: a peer
                # that stopped reading must not hold the slot.
                with trio.move_on_after(_CLOSE_NOTIFY_TIMEOUT):
                    await closing.aclose()
        finally:
            try:
                await trio.aclose_forcefully(closing)
            finally:
                if server.slots is not None:
                    server.slots.release()


def _cipher_name(stream: trio.SSLStream[Any] | SSLSocketStream) -> str:
    cipher = stream.cipher()
    return cipher[0] if cipher else "?"


async def _closed_silently(tcp: trio.SocketStream, metrics: ServerMetrics, where: str) -> bool:
    """Whether the peer closed without sending (anything more): counted as a probe.

    A connect-and-close is a balancer's health check or a port scan: worth a count of
    its own, not a refusal (alerts on refusals must not fire on every check), and not
    a warning.
    """
    if await _first_byte(tcp):
        return False
    metrics.handshakes["probe"] += 1
    log.debug("%s: closed before sending anything (a health check?)", where)
    return True


async def _first_byte(tcp: trio.SocketStream) -> bool:
    """Wait until the peer sends something (without consuming it); ``False`` on EOF."""
    try:
        return bool(await tcp.socket.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


async def _read_proxy_header(
    tcp: trio.SocketStream, peer: tuple[str, int], where: str, config: ServerConfig
) -> tuple[str, int] | None:
    """The client address the balancer reports, or ``None`` (logged) if refused."""
    try:
        header = await read_proxy_header(tcp.socket)
    except ProxyProtocolError as exc:
        log.warning("%s: refused: %s", where, exc)
        return None
    except OSError as exc:
        log.warning("%s: connection lost reading the PROXY header: %s", where, exc.strerror or exc)
        return None
    return header.source or peer


async def _run_handler(
    conn: Connection, server: ServerState, where: str, counted: Meter | SSLSocketStream
) -> bool:
    """Run the handler; whether it completed (returned, or idled out) rather than failed."""
    metrics, idle_timeout = server.metrics, server.config.idle_timeout
    metrics.connections_open += 1
    metrics.connections_total += 1
    try:
        log.info(
            "%s: connected %s %s%s subject=%s issuer=%s sha256=%s; %d client%s connected",
            where,
            conn.tls_version,
            conn.cipher,
            " resumed" if getattr(conn.tls, "session_reused", False) else "",
            conn.identity.subject,
            conn.identity.issuer,
            conn.identity.fingerprint_sha256,
            metrics.connections_open,
            "" if metrics.connections_open == 1 else "s",
        )
        with trio.CancelScope() as idle_scope:
            server.liveness.watch(counted, idle_scope, trio.current_time())
            await server.handler(conn)
        if idle_scope.cancelled_caught:
            metrics.idle_closed += 1
            log.info("%s: closed: idle for %gs", where, idle_timeout)
        return True
    except trio.BrokenResourceError as exc:
        log.info("%s: connection lost: %s", where, describe_tls_error(exc))
    except Exception as exc:
        metrics.handler_errors += 1
        log.error("%s: handler error: %s: %s", where, type(exc).__name__, exc)
    except BaseExceptionGroup as group:
        # A handler's own nursery, e.g. cancelled (grace over) while a child failed: log
        # the failures, let the rest (the cancellation, a KeyboardInterrupt) go on.
        errors, rest = group.split(Exception)
        if errors is not None:
            metrics.handler_errors += 1
            described = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(errors))
            log.error("%s: handler error: %s", where, described)
        if rest is not None:
            raise rest from None
    finally:
        metrics.connections_open -= 1
    return False


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The exceptions in *group* and its nested groups: what a log line should name."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
