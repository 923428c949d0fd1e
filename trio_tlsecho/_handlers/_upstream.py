"""``forward``'s connection to its target: a plain non-blocking socket driven with trio's waits.

trio's ``SocketStream`` does the same behind a few more layers of Python per call
(conflict detectors, the socket wrapper's helper, two checkpoints), and a copy loop
makes two such calls per message in each direction: on a small-message load that
was a measurable share of a terminator's CPU (benchmarks/README.md, "As a terminator").

Checkpoints: every call checks for cancellation first; a call that must wait yields in
the wait.  One that completes at once does not yield: its caller, the copy loop, also
calls the TLS stream, which does, so a busy loop still lets other tasks run.
"""

from __future__ import annotations

import socket

import trio

from .._engines import take_socket


class Upstream(trio.abc.HalfCloseableStream):
    """A connected non-blocking socket (TCP, with TCP_NODELAY, or unix) as a trio stream."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    @classmethod
    def take(cls, stream: trio.SocketStream) -> Upstream:
        """Take over *stream*'s socket (trio connected it; it sets TCP_NODELAY for TCP)."""
        return cls(take_socket(stream.socket))

    @property
    def socket(self) -> socket.socket:
        """The socket, for :func:`splice`, which drives it itself while it runs."""
        return self._sock

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                return self._sock.recv(max_bytes or 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
            except OSError as exc:
                raise trio.BrokenResourceError(f"target connection: {exc}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
            except OSError as exc:
                raise trio.BrokenResourceError(f"target connection: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def send_eof(self) -> None:
        """``shutdown(SHUT_WR)``: the target reads EOF and can still answer."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(f"target connection: {exc}") from exc

    async def aclose(self) -> None:
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()
