"""What every engine gives the server: a counted TLS stream that can refuse, and the helpers they share."""

from __future__ import annotations

import abc
import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

import trio

#: A larger send_all is encrypted and sent this much at a time, with ``sent`` counted
#: after each piece: one long transfer to a slow reader must show progress to the idle
#: sweep (``_server._liveness``), which would otherwise see nothing move until send_all returned.
SEND_PIECE = 65536

# After refusing a peer: how long, and how much, we read what it still sends.
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 256 * 1024


class TLSStream(trio.abc.Stream):
    """One TLS connection as the server core and handlers use it, whichever engine made it.

    A ``trio.abc.Stream`` of plaintext that counts what moves through it (read by the
    idle sweep and the byte metrics), says what was negotiated, and knows how to
    refuse a peer whose handshake failed.  ``aclose`` ends the session with
    close_notify, bounded (a peer that stopped reading cannot hold it);
    ``trio.aclose_forcefully`` closes without one.
    """

    __slots__ = ()

    #: Plaintext bytes received and sent so far.
    received: int
    sent: int
    #: Moves while a long send makes headway, before ``sent`` does (0 where ``sent``
    #: moves with every piece already).
    send_progress: int

    @abc.abstractmethod
    async def do_handshake(self) -> None:
        """Complete the handshake; ``trio.BrokenResourceError`` (from the ``ssl`` error) if it fails."""

    @abc.abstractmethod
    async def refuse(self) -> None:
        """After a failed handshake: deliver the alert that says why, then let the peer go.

        Bounded in time and in bytes read; never raises for the peer's faults.
        """

    @abc.abstractmethod
    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate, as ``ssl.SSLSocket.getpeercert``."""

    @abc.abstractmethod
    def cipher(self) -> tuple[str, str, int] | None: ...

    @abc.abstractmethod
    def version(self) -> str | None: ...

    @abc.abstractmethod
    def selected_alpn_protocol(self) -> str | None: ...

    @property
    @abc.abstractmethod
    def session_reused(self) -> bool: ...


#: What an engine is given: an accepted socket (the server's own path: the engine takes
#: its descriptor over), or any trio stream (a ``trio.SocketStream``; memory, in tests).
Transport = trio.abc.Stream | trio.socket.SocketType

#: An engine: makes a server-side :class:`TLSStream` (handshake not yet done) of an
#: accepted transport, with the server's context.  Raises ``OSError``/``ValueError``
#: when the transport is already unusable (a peer that reset before the wrap).
Engine = Callable[[Transport, ssl.SSLContext], TLSStream]


async def linger(fd: int, shutdown_write: Callable[[], None]) -> None:
    """Half-close, then read (and drop) what the peer still sends until it closes too.

    Closing a socket with unread bytes in it makes the kernel send a reset, and a reset
    can overtake the alert we just sent: a refused client would then read "connection
    reset" instead of "certificate required".  Bounded by ``LINGER_TIMEOUT`` and
    ``LINGER_BYTES``.  The socket is non-blocking and ours alone: the TLS layer above
    it failed, so nothing else reads it any more.
    """
    with trio.move_on_after(LINGER_TIMEOUT):
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            shutdown_write()
            drained = 0
            while drained < LINGER_BYTES:
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    break
                drained += len(data)


def take_socket(sock: trio.socket.SocketType | socket.socket) -> socket.socket:
    """*sock*'s descriptor in a non-blocking stdlib socket of its own; *sock* is left detached.

    At every moment exactly one object owns the descriptor: a failure here closes it.
    A closed *sock* (``fileno() == -1``) is ``ClosedResourceError``.
    """
    family, type_, proto = sock.family, sock.type, sock.proto
    fd = sock.detach()
    if fd < 0:
        raise trio.ClosedResourceError("the socket was already closed")
    try:
        raw = socket.socket(family, type_, proto, fileno=fd)
    except BaseException:
        os.close(fd)
        raise
    raw.setblocking(False)
    return raw
