"""The default engine: ``trio.SSLStream``, counted, and able to say why it refuses.

``trio.SSLStream`` cannot be subclassed, so :class:`TrioTLSStream` holds one and is
what the server and handlers use: it counts the plaintext (one integer addition per
operation; the idle sweep reads the counts), and it delivers the alerts
``SSLStream`` leaves behind.  ``SSLStream`` runs OpenSSL over memory BIOs; when
OpenSSL fails a connection (a client certificate refused in the handshake, a record
with a bad MAC after it) it queues the alert that tells the peer why in the outgoing
BIO, and ``SSLStream`` marks itself broken without sending it.  The socket engine
needs none of this: there OpenSSL writes its alerts to the socket itself, and both
engines send the same alerts.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any

import trio

from ._base import SEND_PIECE, TLSStream, Transport, linger, take_socket
from ._raw import RawSocketStream

# How long we try to deliver a TLS alert to a peer we are refusing.  The peer may be
# a scanner that never reads; it must not hold the connection's slot.
ALERT_TIMEOUT = 1.0
# How long a close_notify may take to go out (as the socket engine's).
CLOSE_NOTIFY_TIMEOUT = 1.0
# What sending the alert may meet: the peer gone, or another task sending right now.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError)


class TrioTLSStream(TLSStream):
    """``trio.SSLStream`` as a :class:`TLSStream`: counted, with alerts delivered."""

    __slots__ = ("broken", "received", "sent", "transport")

    #: Always 0: ``sent`` moves with every piece already, and the sweep reads both.
    send_progress = 0

    def __init__(self, transport: trio.SSLStream[Any]) -> None:
        self.transport = transport
        self.received = 0
        self.sent = 0
        #: A send stopped between two pieces: the peer has part of a message, and no
        #: close_notify may follow it (see aclose).
        self.broken = False

    @classmethod
    def server(cls, transport: Transport, context: ssl.SSLContext) -> TrioTLSStream:
        """The engine: server-side TLS over an accepted socket or any trio stream (memory in tests).

        A socket, or a ``trio.SocketStream``'s, goes to a :class:`RawSocketStream`: the
        same bytes, with a fraction of the Python per call (see there).
        """
        if isinstance(transport, trio.socket.SocketType):
            stream: trio.abc.Stream = RawSocketStream(take_socket(transport))
        elif isinstance(transport, trio.SocketStream):
            stream = RawSocketStream.take(transport)
        else:
            stream = transport
        return cls(trio.SSLStream(stream, context, server_side=True))

    async def do_handshake(self) -> None:
        await self.transport.do_handshake()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            raise trio.BrokenResourceError("a send on this stream was cut short")
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size <= SEND_PIECE:
            await self.transport.send_all(data)
            self.sent += size
            return
        # Counted piece by piece, as the socket engine does: a long transfer to a slow
        # reader is not idle.  Every view is released however this ends (see there).
        # trio's SSLStream breaks itself when cancelled inside a send_all, not between
        # two of them: cut short between pieces, this stream breaks instead.
        with memoryview(data) as whole, whole.cast("B") as octets:
            for start in range(0, len(octets), SEND_PIECE):
                with octets[start : start + SEND_PIECE] as piece:
                    try:
                        await self.transport.send_all(piece)
                    except BaseException:
                        self.broken = start > 0  # False at entry (checked above)
                        raise
                    self.sent += len(piece)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.transport.receive_some(max_bytes)
        except trio.BrokenResourceError:
            # A fatal TLS error (a tampered record, an oversized one, a bad KeyUpdate):
            # tell the peer which, as OpenSSL does on a socket, before the caller closes.
            await self._send_alert()
            raise
        self.received += len(data)
        return data

    async def refuse(self) -> None:
        await self._send_alert()
        transport = self.transport.transport_stream
        if isinstance(transport, RawSocketStream):
            tcp = transport.socket
            await linger(tcp.fileno(), lambda: tcp.shutdown(socket.SHUT_WR))

    async def _send_alert(self) -> None:
        # The queue is SSLStream's private outgoing MemoryBIO, so read it defensively:
        # if a future trio renames it, we lose the alert, not the connection handling.
        # Shielded (and bounded): the alert is the last thing this connection says,
        # even when the caller is being cancelled.
        outgoing = getattr(self.transport, "_outgoing", None)
        if not isinstance(outgoing, ssl.MemoryBIO) or not outgoing.pending:
            return
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(ALERT_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError),
        ):
            await self.transport.transport_stream.send_all(outgoing.read())

    async def aclose(self) -> None:
        if self.broken:  # no close_notify after half a message: it would read as complete
            await trio.aclose_forcefully(self.transport)
            return
        # Bounded: a peer that stopped reading cannot hold us.  Cut short, SSLStream still
        # closes its transport (trio's aclose contract).
        with trio.move_on_after(CLOSE_NOTIFY_TIMEOUT):
            await self.transport.aclose()

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self.transport.getpeercert(binary_form)

    def cipher(self) -> tuple[str, str, int] | None:
        return self.transport.cipher()  # type: ignore[no-any-return]

    def version(self) -> str | None:
        return self.transport.version()  # type: ignore[no-any-return]

    def selected_alpn_protocol(self) -> str | None:
        return self.transport.selected_alpn_protocol()  # type: ignore[no-any-return]

    @property
    def session_reused(self) -> bool:
        return bool(self.transport.session_reused)
