"""The client beyond echo: one request whose reply is shown, not compared, and a terminal session.

:func:`request_once` is ``client --expect any``: send a message, then take whatever
the server sends until it closes the connection (or the time is up).
:func:`talk` is ``client --stdin``, as ``openssl s_client -quiet``: what the input
gives goes to the server, what the server sends goes to the output, until both have
ended.

The end of what we send is TLS 1.3's half-close (see ``_halfclose``): our
``close_notify`` goes out and the reading goes on, so an echo or a request/response
server answers what it got, closes, and the session ends by itself.  Under TLS 1.2
there is no half-close: ``request_once`` then waits for the server's close (or the
time), and ``talk`` ends the session at the end of its input (what the server had
still to send back is lost).  ``ignore_eof`` (``openssl s_client -ign_eof``) keeps
the session open until the server closes it, whatever the version.
"""

from __future__ import annotations

import enum
import ssl
import time
from collections.abc import Awaitable, Callable

import attrs
import trio

from .._config import ClientConfig
from .._exceptions import ClientError
from .._handlers import RECEIVE_SIZE
from .._net import Address, UnixAddress, format_address
from .._tls import PeerIdentity, client_context, describe_tls_error, peer_identity
from ._echo import _CAN_WATCH, _CLOSE_TIMEOUT, _watch_certificate_request, open_client
from ._halfclose import is_peer_close, send_close_notify

#: What reads the input: returns the next bytes, ``b""`` at its end.
Source = Callable[[], Awaitable[bytes]]
#: What takes the server's bytes, as they come.
Sink = Callable[[bytes | bytearray], object]


class _AtEnd(enum.Enum):
    """What the end of what we send does to the session."""

    #: Nothing: the server's close ends it.
    KEEP_READING = enum.auto()
    #: Half-close, read on; where there is none (TLS 1.2), read on all the same.
    HALF_CLOSE = enum.auto()
    #: Half-close, read on; where there is none (TLS 1.2), end the session now.
    HALF_CLOSE_OR_CLOSE = enum.auto()


@attrs.frozen
class Reply:
    """What one request saw: the connection, and the reply as it came."""

    address: Address | UnixAddress
    tls_version: str
    cipher: str
    server: PeerIdentity
    #: Whether the server asked for our certificate (mutual TLS); ``None`` if unknown.
    mutual: bool | None
    sent: int
    reply: bytes
    #: The server ended the session (close_notify); false: the time ran out first.
    server_closed: bool
    handshake_seconds: float
    reply_seconds: float


async def request_once(
    address: Address | UnixAddress,
    config: ClientConfig,
    payload: bytes,
    *,
    timeout: float,
    half_close: bool = True,
) -> Reply:
    """Send *payload*; return what the server sends until it closes, or until *timeout* passes.

    With *half_close* (and TLS 1.3) our ``close_notify`` follows *payload*, so a server
    that answers and then closes at the end of its input ends the wait at once.

    Raises :class:`ClientError` with one line if the connection fails.
    """
    ctx = client_context(config)
    requested: list[bool] = []
    _watch_certificate_request(ctx, requested)
    t0 = time.perf_counter()
    stream = await open_client(address, config, ssl_context=ctx)
    t1 = time.perf_counter()
    reply = bytearray()
    try:
        server = peer_identity(stream)
        assert server is not None  # PROTOCOL_TLS_CLIENT verifies the server, always
        cipher = stream.cipher()
        version = str(stream.version())
        with trio.move_on_after(timeout) as waited:
            at_end = _AtEnd.HALF_CLOSE if half_close else _AtEnd.KEEP_READING
            await _send_and_read(stream, payload, reply.extend, at_end)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    with trio.move_on_after(_CLOSE_TIMEOUT):
        await stream.aclose()
    return Reply(
        address=address,
        tls_version=version,
        cipher=cipher[0] if cipher else "?",
        server=server,
        mutual=bool(requested) if _CAN_WATCH else None,
        sent=len(payload),
        reply=bytes(reply),
        server_closed=not waited.cancelled_caught,
        handshake_seconds=t1 - t0,
        reply_seconds=time.perf_counter() - t1,
    )


async def talk(
    address: Address | UnixAddress,
    config: ClientConfig,
    source: Source,
    sink: Sink,
    *,
    connected: Callable[[trio.SSLStream[trio.SocketStream]], object] | None = None,
    ignore_eof: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Send what *source* gives, hand what the server sends to *sink*, until the server closes.

    At the end of *source* our ``close_notify`` goes out (TLS 1.3; under TLS 1.2 the
    session ends there), unless *ignore_eof*.  *connected* is called with the stream
    once the handshake is done (to say so); *ssl_context* as for :func:`open_client`.
    """
    stream = await open_client(address, config, ssl_context=ssl_context)
    try:
        if connected is not None:
            connected(stream)
        at_end = _AtEnd.KEEP_READING if ignore_eof else _AtEnd.HALF_CLOSE_OR_CLOSE
        await _send_and_read(stream, source, sink, at_end)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    with trio.move_on_after(_CLOSE_TIMEOUT):
        await stream.aclose()


async def _send_and_read(
    stream: trio.SSLStream[trio.SocketStream], what: bytes | Source, sink: Sink, at_end: _AtEnd
) -> None:
    """Send *what* while reading into *sink* until the server's close_notify; then stop sending."""
    failed: trio.BrokenResourceError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send, stream, what, at_end, nursery.cancel_scope)
        try:
            while data := await stream.receive_some(RECEIVE_SIZE):
                sink(data)
        except trio.BrokenResourceError as exc:
            if not is_peer_close(exc):
                failed = exc  # raised below, outside the nursery: one error, not a group
        nursery.cancel_scope.cancel()
    if failed is not None:
        peer = stream.transport_stream.socket.getpeername()
        where = format_address(*peer[:2]) if isinstance(peer, tuple) else f"unix:{peer}"
        raise ClientError(f"{where}: TLS connection failed: {describe_tls_error(failed)}") from None


async def _send(
    stream: trio.SSLStream[trio.SocketStream], what: bytes | Source, at_end: _AtEnd, session: trio.CancelScope
) -> None:
    # A server that closed (or broke the connection) while we still sent is what the
    # reader reports: it sees the close_notify, or the error with its cause.
    try:
        if isinstance(what, bytes):
            await stream.send_all(what)
        else:
            while data := await what():
                await stream.send_all(data)
        if at_end is _AtEnd.KEEP_READING or await send_close_notify(stream):
            return
        if at_end is _AtEnd.HALF_CLOSE_OR_CLOSE:
            session.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
