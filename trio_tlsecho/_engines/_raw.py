"""The transport under the default engine's ``trio.SSLStream``: a TCP socket, thinly.

``trio.SocketStream`` is a general-purpose stream: each call takes a conflict
detector and goes through trio's socket wrapper, which checkpoints and retries of its
own.  Under ``SSLStream`` none of that is needed: ``SSLStream`` serialises its own
transport calls (its own locks and conflict detectors) and is the only user of the
socket once the handshake begins.  :class:`RawSocketStream` is that socket and little
more: try the syscall, wait for readiness only when it would block.  It is a
transport for ``SSLStream`` only, because of two things it leaves to it:

* Checkpoints: none of its own.  ``SSLStream`` calls its transport only while holding
  one of its two ``StrictFIFOLock``s, and acquiring one already is a full checkpoint
  (cancel check, then a yield): a second one per call would only send the task through
  the scheduler twice for each record.
* Receiving: up to 256 KiB per ``recv`` (as asyncio's transports read) into one buffer
  shared by every stream of the trio run, returned as a ``memoryview`` of what came.
  ``SSLStream`` copies it into its incoming ``MemoryBIO`` before it awaits anything
  again (``_retry``: the transport's ``receive_some``, then ``_incoming.write``), so no
  other stream can overwrite it first.  ``SSLStream`` asks for no size, and
  ``recv(65536)`` would allocate 64 KiB and shrink it on every call.  A buffer per
  stream would cost 256 KiB per idle connection; one per run is safe because a trio
  run is one thread.

tests/test_raw_transport.py runs trio's own stream conformance checks on ``SSLStream``
over it.  Measured (benchmarks/README, "default engine"): more round trips and MB per
server CPU-second than ``SSLStream`` over ``trio.SocketStream``.

Ownership of the file descriptor is as in the socket engine: :meth:`take` detaches it
from the trio socket into a stdlib socket, which only :meth:`aclose` closes, after
``notify_closing`` has woken any task waiting on it.  Errors: a failed syscall is
``BrokenResourceError`` from the ``OSError`` (what ``SSLStream`` expects of its
transport), a closed stream ``ClosedResourceError``.
"""

from __future__ import annotations

import socket

import trio

from ._base import take_socket

# One receive buffer per trio run, as large as asyncio's reads.
_SHARED_SIZE = 256 * 1024
_SHARED = trio.lowlevel.RunVar[memoryview]("trio_tlsecho.receive_buffer")


class RawSocketStream(trio.abc.Stream):
    """A connected, non-blocking socket as the transport of one ``trio.SSLStream``."""

    __slots__ = ("_closed", "_fd", "_shared", "socket")

    def __init__(self, sock: socket.socket) -> None:
        #: The stdlib socket (non-blocking): ours alone.
        self.socket = sock
        self._fd = sock.fileno()
        self._closed = False
        self._shared = _shared_buffer()

    @classmethod
    def take(cls, transport: trio.SocketStream) -> RawSocketStream:
        """Take over *transport*'s socket; *transport* is left closed (its ``aclose`` a no-op)."""
        return cls(take_socket(transport.socket))

    async def receive_some(self, max_bytes: int | None = None) -> memoryview:  # type: ignore[override]
        # *max_bytes* is None from SSLStream; the shared buffer's size bounds the read.
        while True:
            self._check_open()
            try:
                return self._shared[: self.socket.recv_into(self._shared, max_bytes or 0)]
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                self._check_open()
                try:
                    sent += self.socket.send(view[sent:])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._fd)
                except OSError as exc:
                    raise trio.BrokenResourceError(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            self.socket.close()
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")


def _shared_buffer() -> memoryview:
    try:
        return _SHARED.get()
    except LookupError:
        buffer = memoryview(bytearray(_SHARED_SIZE))
        _SHARED.set(buffer)
        return buffer
