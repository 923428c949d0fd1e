"""The life of one accepted connection: handshake, identity, handler, close.

Everything that can go wrong with one peer (a bad certificate, a silent client,
a reset, a handler bug) is caught here and turned into one log line, because
the listener's nursery must never see it: one connection's failure must not
touch another.  ``trio.Cancelled`` and other ``BaseException``s are left alone so
that shutdown still works.
"""

from __future__ import annotations

import contextlib
import logging
import ssl

import attrs
import trio

from ._config import format_address
from ._handlers import Connection, Handler
from ._tls import describe_tls_error, peer_identity

log = logging.getLogger("trio_tlsecho")


@attrs.define
class ConnectionCounts:
    """Live counters for one server (all its listeners): the "N clients connected" view."""

    active: int = 0
    total: int = 0
    handshake_failures: int = 0


def _peer_address(stream: trio.SocketStream) -> tuple[str, int]:
    try:
        addr = stream.socket.getpeername()
    except OSError:  # the peer may already be gone by the time we ask
        return ("?", 0)
    return (str(addr[0]), int(addr[1]))


# How long we try to deliver a TLS alert to a peer we are refusing.  The peer may be
# a scanner that never reads; it must not hold the slot.
_ALERT_TIMEOUT = 1.0


async def _send_alert(stream: trio.SSLStream[trio.SocketStream]) -> None:
    # trio's SSLStream marks itself broken on an SSLError without sending what
    # OpenSSL queued: the alert ("certificate required", "unknown ca") that tells the
    # peer *why*.  Without it a refused client sees only a closed connection.  The
    # queue is SSLStream's private outgoing MemoryBIO, so read it defensively: if a
    # future trio renames it, we lose the alert, not the connection handling.
    outgoing = getattr(stream, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO) or not outgoing.pending:
        return
    with trio.move_on_after(_ALERT_TIMEOUT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.transport_stream.send_all(outgoing.read())


async def run_connection(
    tcp: trio.SocketStream,
    ssl_context: ssl.SSLContext,
    handler: Handler,
    handshake_timeout: float,
    counts: ConnectionCounts,
) -> None:
    """Serve one TCP connection; returns (never raises) when it is over."""
    peer = _peer_address(tcp)
    where = format_address(*peer)
    stream = trio.SSLStream(tcp, ssl_context, server_side=True)
    try:
        with trio.move_on_after(handshake_timeout) as scope:
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                counts.handshake_failures += 1
                log.warning("%s: handshake failed: %s", where, describe_tls_error(exc))
                await _send_alert(stream)
                return
        if scope.cancelled_caught:
            counts.handshake_failures += 1
            log.warning("%s: handshake timed out after %gs", where, handshake_timeout)
            return
        identity = peer_identity(stream)
        # CERT_REQUIRED makes OpenSSL fail the handshake without a certificate; this
        # guards against a context built elsewhere that forgot it.
        if identity is None:
            counts.handshake_failures += 1
            log.warning("%s: refused: no client certificate", where)
            return
        cipher = stream.cipher()
        conn = Connection(
            stream=stream,
            peer_address=peer,
            identity=identity,
            tls_version=str(stream.version()),
            cipher=cipher[0] if cipher else "?",
        )
        counts.active += 1
        counts.total += 1
        try:
            log.info(
                "%s: connected %s %s subject=%s issuer=%s sha256=%s; %d client%s connected",
                where,
                conn.tls_version,
                conn.cipher,
                identity.subject,
                identity.issuer,
                identity.fingerprint_sha256,
                counts.active,
                "" if counts.active == 1 else "s",
            )
            await handler(conn)
        except trio.BrokenResourceError as exc:
            log.info("%s: connection lost: %s", where, describe_tls_error(exc))
        except Exception as exc:
            log.error("%s: handler error: %s: %s", where, type(exc).__name__, exc)
        finally:
            counts.active -= 1
    finally:
        await trio.aclose_forcefully(stream)
