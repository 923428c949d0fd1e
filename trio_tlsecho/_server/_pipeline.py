"""The life of one accepted connection, as a pipeline of named steps.

    preamble (PROXY header, probe) -> handshake -> authorize -> handler -> close

Each step either hands the next one what it needs or refuses the peer by raising
:class:`Refusal` (an :class:`~._outcome.Outcome` for the metrics and one line for
the log); :func:`run_connection` counts and logs a refusal in one place, and owns
the transport, then the TLS stream, until it closes it.

Everything that can go wrong with one peer (a bad certificate, a silent client, a
reset, a handler bug) ends here, because the listener's nursery must never see it:
one connection's failure must not touch another.  A peer's fault is one log line; a
handler's exception is a bug in the handler, logged at ERROR with its traceback.  Every
connection, verified or refused, then ends with one access line once it is closed
(:func:`_log_ended`: outcome, duration, bytes), the ``connection_closed`` event of
the JSON log.
``trio.Cancelled`` and every other ``BaseException`` are left alone so that
shutdown still works.

Timeouts: the preamble and the handshake run under one total deadline (a peer
dribbling a byte a second gets no extension); the refusal that follows has its own
bounds, outside it.  The established connection is watched by the server's
:class:`~._liveness.Liveness`, which cancels the handler once no byte has moved in
either direction for the idle timeout.

How it ends: after a handler that completed (returned, or idled out) the TLS session
ends with close_notify, so that the client can tell a finished conversation from a
cut one; after a handler error, a lost connection or a cancellation (the shutdown
grace ran out) it is closed without one.
"""

from __future__ import annotations

import logging
import socket

import trio

from .._engines import TLSStream, Transport
from .._exceptions import UpstreamError, leaves
from .._handlers import Connection
from .._net import ProxyProtocolError, address_in, format_address, read_proxy_header
from .._tls import PeerIdentity, describe_tls_error
from ._outcome import Outcome, handshake_outcome
from ._state import ServerState

log = logging.getLogger("trio_tlsecho")

Peer = tuple[str, int]


#: How a verified connection ended, in the access line (a refused one ends with its Outcome).
ENDED_OK = "ok"  # the handler returned
ENDED_IDLE = "idle_timeout"
ENDED_LOST = "connection_lost"
ENDED_HANDLER_ERROR = "handler_error"
ENDED_UPSTREAM = "upstream_error"  # the handler's target failed (forward): UpstreamError
ENDED_CANCELLED = "cancelled"  # the server stopped it: the shutdown grace ran out
# Ends after which the client gets close_notify: nothing was cut (an upstream that failed
# mid-answer has closed the client itself, without one).
_COMPLETED = (ENDED_OK, ENDED_IDLE, ENDED_UPSTREAM)


class Refusal(Exception):
    """A step refused the peer: why (for the metrics) and what to log (*event*: its JSON name)."""

    def __init__(
        self,
        outcome: Outcome,
        message: str,
        *,
        alert: bool = False,
        level: int = logging.WARNING,
        event: str = "handshake_failed",
    ):
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        #: The handshake failed and OpenSSL has an alert for the peer (see TLSStream.refuse).
        self.alert = alert
        self.level = level
        self.event = event


async def run_connection(transport: Transport, peer: Peer, server: ServerState) -> None:
    """Serve one connection from *peer*; returns (never raises) when it is over.

    *transport* is an accepted socket (the server's path: the engine takes it over, no
    ``trio.SocketStream`` is built only to be detached) or ``trio.SocketStream``; any
    other stream (memory, in tests) has no TCP below it to probe or to carry a PROXY
    header, and starts at the handshake.  This is the connection task's outermost
    frame, and it holds only what the handler still needs: everything an idle
    connection keeps alive counts once per connection.
    """
    where = format_address(*peer)
    closing: trio.abc.AsyncResource | trio.socket.SocketType = transport
    stream: TLSStream | None = None
    conn: Connection | None = None
    ended: str = ENDED_CANCELLED  # unless something else is known by the end
    level = logging.INFO
    started = trio.current_time()
    try:
        with trio.move_on_after(server.config.handshake_timeout) as deadline:
            if (tcp := _socket_of(transport)) is not None:
                peer, where = await preamble(tcp, peer, where, server)
                del tcp
            closing = stream = wrap(transport, server)
            del transport  # the stream owns it now: an idle connection keeps no shell of it
            await handshake(stream)
        _check_in_time(deadline, server)
        del deadline
        assert stream is not None  # set before the handshake could finish
        identity = authorize(stream, server)
        server.metrics.handshakes[Outcome.OK] += 1
        server.metrics.handshake_seconds.observe(trio.current_time() - started)
        conn = connection(stream, peer, identity, server)
        ended = await run_handler(conn, server, where)
    except Refusal as refusal:
        ended, level = refusal.outcome, min(level, refusal.level)
        server.metrics.handshakes[refusal.outcome] += 1
        fields = {"event": refusal.event, "peer": format_address(*peer), "outcome": str(refusal.outcome)}
        log.log(refusal.level, "%s: %s", where, refusal.message, extra=fields)
        if refusal.alert and stream is not None:
            await stream.refuse()
    finally:
        try:
            await close(closing, completed=ended in _COMPLETED)
        finally:
            _log_ended(level, where, peer, stream, conn, ended, trio.current_time() - started, server)


def _socket_of(transport: Transport) -> trio.socket.SocketType | None:
    """The TCP (or UNIX) socket below *transport*, if it has one."""
    if isinstance(transport, trio.socket.SocketType):
        return transport
    if isinstance(transport, trio.SocketStream):
        return transport.socket
    return None


def _check_in_time(deadline: trio.CancelScope, server: ServerState) -> None:
    if deadline.cancelled_caught:
        what = "PROXY header and handshake" if server.config.proxy_protocol else "handshake"
        raise Refusal(Outcome.TIMEOUT, f"{what} timed out after {server.config.handshake_timeout:g}s")


async def preamble(
    tcp: trio.socket.SocketType, peer: Peer, where: str, server: ServerState
) -> tuple[Peer, str]:
    """What comes before TLS: the PROXY header when configured, and the probe check.

    Returns the client's address (the balancer's report of it, after a PROXY header)
    and how the log names it.
    """
    config = server.config
    if config.proxy_protocol:
        if config.proxy_from and not address_in(peer[0], config.proxy_from):
            # Refused at once, before any wait: not a balancer we listen to.
            raise Refusal(
                Outcome.PROXY_HEADER,
                "refused: PROXY header not accepted from this address (--proxy-from)",
                event="refused",
            )
        await _require_first_byte(tcp)  # a plain TCP health check of the balancer's
        real = await _read_proxy_header(tcp)
        if real is not None and real != peer:
            peer, where = real, f"{format_address(*real)} (via {where})"
    await _require_first_byte(tcp)  # before TLS; after a PROXY header: HAProxy's check-send-proxy
    return peer, where


async def _require_first_byte(tcp: trio.socket.SocketType) -> None:
    """Wait until the peer sends something (without consuming it); a close first is a probe.

    A connect-and-close is a balancer's health check or a port scan: worth a count of
    its own, not a refusal (alerts on refusals must not fire on every check), and not
    a warning.
    """
    try:
        sent = bool(await tcp.recv(1, socket.MSG_PEEK))
    except OSError:
        sent = False
    if not sent:
        raise Refusal(
            Outcome.PROBE,
            "closed before sending anything (a health check?)",
            level=logging.DEBUG,
            event="probe",
        )


async def _read_proxy_header(tcp: trio.socket.SocketType) -> Peer | None:
    """The client address the balancer reports (``None``: a LOCAL header, no address)."""
    try:
        header = await read_proxy_header(tcp)
    except ProxyProtocolError as exc:
        raise Refusal(Outcome.PROXY_HEADER, f"refused: {exc}", event="refused") from None
    except OSError as exc:
        why = f"connection lost reading the PROXY header: {exc.strerror or exc}"
        raise Refusal(Outcome.PROXY_HEADER, why, event="refused") from None
    return header.source


def wrap(transport: Transport, server: ServerState) -> TLSStream:
    """The engine's TLS stream over *transport*, which it owns from now on."""
    try:
        return server.engine(transport, server.ssl_context)
    except (OSError, ValueError) as exc:
        # A peer that sent a byte and then reset can make the wrap itself fail (the
        # socket engine's getpeername(); CPython refuses a socket with unread data it
        # cannot tell is connected, CVE-2023-40217).  No TLS stream, no alert to send.
        raise Refusal(handshake_outcome(exc), f"handshake failed: {describe_tls_error(exc)}") from None


async def handshake(stream: TLSStream) -> None:
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        why = f"handshake failed: {describe_tls_error(exc)}"
        raise Refusal(handshake_outcome(exc), why, alert=True) from None


def authorize(stream: TLSStream, server: ServerState) -> PeerIdentity:
    """Who the verified peer is, if the allow-list lets it in."""
    identity = server.identities.peer_identity(stream)
    # CERT_REQUIRED makes OpenSSL fail the handshake without a certificate; this
    # guards against a context built elsewhere that forgot it.
    if identity is None:
        raise Refusal(Outcome.NO_CERT, "refused: no client certificate", event="refused")
    if not server.config.allow.permits(identity):
        sans = ",".join(identity.sans) or "-"
        why = f"subject={identity.subject} sans={sans} sha256={identity.fingerprint_sha256}"
        raise Refusal(Outcome.IDENTITY_REFUSED, f"refused: identity not allowed: {why}", event="refused")
    return identity


def connection(stream: TLSStream, peer: Peer, identity: PeerIdentity, server: ServerState) -> Connection:
    cipher = stream.cipher()
    return Connection(
        stream=stream,
        peer_address=peer,
        identity=identity,
        tls_version=str(stream.version()),
        cipher=cipher[0] if cipher else "?",
        stopping=server.stopping,
    )


async def run_handler(conn: Connection, server: ServerState, where: str) -> str:
    """Run the handler; how it ended (``ENDED_*``): completed (returned, or idled out) or failed."""
    metrics = server.metrics
    verified = trio.current_time()
    metrics.connections_open += 1
    metrics.connections_total += 1
    peer = {"peer": format_address(*conn.peer_address)}
    try:
        _log_connected(conn, server, where)
        with server.liveness.watching(conn.stream) as idle:
            await server.handler(conn)
        if idle.cancelled_caught:
            metrics.idle_closed += 1
            log.info(
                "%s: closed: idle for %gs",
                where,
                server.config.idle_timeout,
                extra={"event": ENDED_IDLE, **peer},
            )
            return ENDED_IDLE
        return ENDED_OK
    except trio.BrokenResourceError as exc:
        why = describe_tls_error(exc)
        log.info("%s: connection lost: %s", where, why, extra={"event": ENDED_LOST, "error": why, **peer})
        return ENDED_LOST
    except UpstreamError as exc:  # the handler's target failed, not the handler: no traceback
        metrics.upstream_errors += 1
        log.warning("%s: %s", where, exc, extra={"event": ENDED_UPSTREAM, "error": str(exc), **peer})
        return ENDED_UPSTREAM  # a clean close for the client (a handler that cut it closed it already)
    except BaseExceptionGroup as group:  # before Exception: an ExceptionGroup is one
        # A handler's own nursery (perhaps cancelled, the grace over, while a child
        # failed): log the failures by name, let the rest (the cancellation, a
        # KeyboardInterrupt) go on.
        errors, rest = group.split(Exception)
        if errors is not None:
            metrics.handler_errors += 1
            described = "; ".join(f"{type(e).__name__}: {e}" for e in leaves(errors))
            log.error(
                "%s: handler error: %s",
                where,
                described,
                exc_info=errors,
                extra={"event": ENDED_HANDLER_ERROR, "error": described, **peer},
            )
        if rest is not None:
            raise rest from None
    except Exception as exc:
        # A bug in the handler, not the peer's doing: its author needs the traceback.
        metrics.handler_errors += 1
        described = f"{type(exc).__name__}: {exc}"
        log.error(
            "%s: handler error: %s",
            where,
            described,
            exc_info=exc,
            extra={"event": ENDED_HANDLER_ERROR, "error": described, **peer},
        )
    finally:
        metrics.connections_open -= 1
        metrics.connection_seconds.observe(trio.current_time() - verified)
    return ENDED_HANDLER_ERROR


def _log_connected(conn: Connection, server: ServerState, where: str) -> None:
    if not log.isEnabledFor(logging.INFO):  # --log-level warning: build no fields either
        return
    count = server.metrics.connections_open
    resumed = conn.tls.session_reused
    log.info(
        "%s: connected %s %s%s subject=%s issuer=%s sha256=%s; %d client%s connected",
        where,
        conn.tls_version,
        conn.cipher,
        " resumed" if resumed else "",
        conn.identity.subject,
        conn.identity.issuer,
        conn.identity.fingerprint_sha256,
        count,
        "" if count == 1 else "s",
        extra={
            "event": "connection_opened",
            "peer": format_address(*conn.peer_address),
            **_identity_fields(conn),
            "issuer": conn.identity.issuer,
            "resumed": resumed,
            "connections_open": count,
        },
    )


def _identity_fields(conn: Connection) -> dict[str, object]:
    return {
        "subject": conn.identity.subject,
        "fingerprint": conn.identity.fingerprint_sha256,
        "tls_version": conn.tls_version,
        "cipher": conn.cipher,
    }


def _log_ended(
    level: int,
    where: str,
    peer: Peer,
    stream: TLSStream | None,
    conn: Connection | None,
    ended: str,
    duration: float,
    server: ServerState,
) -> None:
    """The access line: one per accepted connection, verified or refused, once it is closed.

    Bytes are application bytes (TLS plaintext), as in the metrics; a refused
    connection has none.  The count is of verified connections still open.
    """
    if not log.isEnabledFor(level):  # filtered out: build no fields either
        return
    received, sent = (stream.received, stream.sent) if stream is not None else (0, 0)
    count = server.metrics.connections_open
    who = (
        ""
        if conn is None
        else f"; {conn.tls_version} subject={conn.identity.subject} sha256={conn.identity.fingerprint_sha256}"
    )
    log.log(
        level,
        "%s: ended %s after %.3fs: %d bytes in, %d out%s; %d client%s connected",
        where,
        ended,
        duration,
        received,
        sent,
        who,
        count,
        "" if count == 1 else "s",
        extra={
            "event": "connection_closed",
            "peer": format_address(*peer),
            **(_identity_fields(conn) if conn is not None else {}),
            "outcome": str(ended),
            "duration_s": round(duration, 6),
            "bytes_in": received,
            "bytes_out": sent,
            "connections_open": count,
        },
    )


async def close(resource: trio.abc.AsyncResource | trio.socket.SocketType, *, completed: bool) -> None:
    """Close with close_notify after a completed handler (bounded by the engine), else at once.

    A bare socket (refused before the wrap) is closed at once, as ``aclose_forcefully``
    would close its stream.
    """
    if isinstance(resource, trio.socket.SocketType):
        resource.close()
    elif completed:
        await resource.aclose()
    else:
        await trio.aclose_forcefully(resource)
