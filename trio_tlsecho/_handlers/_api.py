"""What a handler is, what it is given, and how it learns that the server is stopping.

A handler is any ``async def handler(conn: Connection) -> None``.  It owns the
conversation but not the connection: the runner in :mod:`trio_tlsecho._server._pipeline` closes
the stream when the handler returns or raises, so a handler never needs a
``finally`` just to clean up.

Graceful stop
-------------
When ``serve`` begins a graceful stop it sets ``conn.stopping``, one per server and
shared by every connection; after ``shutdown_grace`` seconds the handlers still
running are cancelled.  A handler that reaches a boundary of its protocol (a reply
sent, nothing half read) should return then, so that its client gets close_notify at
once instead of a cut at the end of the grace.

Echo has no messages, so "nothing in flight" is read from time: once the stop has
begun, a peer that has sent nothing for :data:`STOP_QUIET` seconds while the handler
waits for it is at a boundary.  :class:`Receiver` implements that for the built-ins
(and for any handler that wants it) without a cancel scope per read (one costs about
as much as a checkpoint, on every read of every connection):
one scope per conversation, whose deadline is set only while the handler waits and
only once the stop has begun.  Cancelling a wait in ``receive_some`` is safe with
both engines: nothing has been read yet, and OpenSSL keeps a partial record for the
next read, so the stream can still send its close_notify.  A cancellation that lands
while the task is already resuming with data does not raise (there is no checkpoint
left on that path); the data is returned and :attr:`Receiver.cut` says that the
scope is spent.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Protocol

import attrs
import trio

from .._engines import TLSStream
from .._tls import PeerIdentity

# One TLS record carries at most 16 KiB of plaintext; asking for more per read
# lets trio's SSLStream hand back everything already decrypted in one call.
RECEIVE_SIZE = 65536

#: Once a stop has begun, a peer that has sent nothing for this long while its handler
#: waits is at a boundary.  Far above the gap between two reads of a transfer in
#: flight; small enough that idle connections let a server stop in well under a second.
STOP_QUIET = 0.25


class Stopping:
    """A server's graceful stop as its handlers see it: ``is_set()`` and ``wait()``, as ``trio.Event``.

    Set once, when ``serve`` stops accepting (the shutdown trigger returned, or
    SIGTERM); the connections then have ``shutdown_grace`` seconds to finish.
    """

    __slots__ = ("_event", "_receivers")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._receivers: set[Receiver] = set()

    def is_set(self) -> bool:
        """Whether the stop has begun."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once the stop has begun (at once if it has)."""
        await self._event.wait()

    def set(self) -> None:
        """Begin the stop: wake every task in ``wait()``, and end the quiet waits of receivers."""
        if self._event.is_set():
            return
        self._event.set()
        for receiver in self._receivers:
            receiver._stop_began()


class Receiver:
    """Reads for a handler that ends at a boundary when the server stops.

    ``with conn.receiver() as peer:`` a cancel scope; inside it ``await peer.receive()``
    is ``conn.stream.receive_some()``, but once the stop has begun a wait in which the
    peer sends nothing for :data:`STOP_QUIET` seconds cancels the scope: the ``with``
    block ends, and the handler returns (its client gets close_notify).  If bytes came
    just as the wait was cut, they are returned and :attr:`cut` is true: the scope is
    spent, so leave the block before sending them (see the built-in ``echo``).
    """

    __slots__ = ("_scope", "_since", "_stopping", "_stream")

    def __init__(self, stream: trio.abc.ReceiveStream, stopping: Stopping) -> None:
        self._stream = stream
        self._stopping = stopping
        self._scope = trio.CancelScope()
        #: When the current wait began; ``None`` when not waiting.
        self._since: float | None = None

    def __enter__(self) -> Receiver:
        self._scope.__enter__()
        self._stopping._receivers.add(self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._stopping._receivers.discard(self)
        return self._scope.__exit__(kind, exc, tb)

    @property
    def cut(self) -> bool:
        """The stop cut a wait short: leave the ``with`` block (what was returned still counts)."""
        return self._scope.cancel_called

    async def receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes | bytearray:
        """The next bytes from the peer; ``b""`` once it has closed."""
        self._since = now = trio.current_time()
        if self._stopping.is_set():
            self._scope.deadline = now + STOP_QUIET
        try:
            return await self._stream.receive_some(max_bytes)
        finally:
            self._since = None
            # The stop may have begun during this wait: a deadline left behind would cut
            # the send that follows.
            if self._stopping.is_set() and not self._scope.cancel_called:
                self._scope.deadline = math.inf

    def _stop_began(self) -> None:
        if self._since is not None:  # waiting now: the quiet counts from when the wait began
            self._scope.deadline = self._since + STOP_QUIET


@attrs.frozen
class Connection:
    """One accepted, verified mutual-TLS connection."""

    #: Read and write the plaintext here (``receive_some``/``send_all``/``aclose``).  It is
    #: also the TLS layer, whichever engine made it: ``getpeercert()``, ``cipher()``,
    #: ``version()``, ``session_reused``.  Every byte through it is counted (metrics, idle
    #: timeout).
    stream: TLSStream
    #: ``(host, port)`` of the peer as the socket sees it.
    peer_address: tuple[str, int]
    #: The verified client certificate.
    identity: PeerIdentity
    #: ``"TLSv1.3"`` or ``"TLSv1.2"``.
    tls_version: str
    #: The negotiated cipher suite, e.g. ``"TLS_AES_256_GCM_SHA384"``.
    cipher: str
    #: Set when the server begins a graceful stop (``conn.stopping.is_set()``,
    #: ``await conn.stopping.wait()``): finish at a boundary and return.
    stopping: Stopping = attrs.field(factory=Stopping, kw_only=True, eq=False)

    @property
    def tls(self) -> TLSStream:
        """The TLS layer: the same object as :attr:`stream` (kept for handlers that say ``conn.tls``)."""
        return self.stream

    def receiver(self) -> Receiver:
        """Reads of :attr:`stream` that end at a boundary once the server stops (see :class:`Receiver`)."""
        return Receiver(self.stream, self.stopping)


class Handler(Protocol):
    """Serves one connection; returns when the conversation is over."""

    async def __call__(self, conn: Connection, /) -> None: ...
