"""Copying both ways between a socket-engine TLS stream and a plain socket, from one task
for all connections (:func:`splice`).

Why: a terminator copying with one task per direction crosses trio's scheduler twice
per message, and each crossing costs a wake-up, an ``epoll_ctl`` to arm the next wait
and a read that can only say EAGAIN before it (the copy loop tries before it waits).
On small messages that put ``forward`` behind stunnel (benchmarks/README.md, "As a
terminator").  Here each spliced pair's two descriptors stay registered,
level-triggered, in one ``epoll`` set per ``trio.run``, and one system task does, for
every ready descriptor, what the copy loops would: read what the socket has, pass it
on, and when the other side cannot take it all, keep the rest and stop reading until
it can (backpressure: at most one read's worth in flight per direction, as before).
A read happens only when ``epoll`` said the socket is readable, so there is no
EAGAIN read per message, and no task switch at all.

The fast path only moves bytes.  Whatever else happens ends it, and the caller gets
:class:`Spliced`: why it ended (:class:`SpliceEnd`) and the bytes it had in hand, and
carries on with its own copy loops: an EOF on either side, a failure on either side,
an error or hang-up flag on a socket it was not reading, or a TLS call that wants the
opposite direction (a TLS 1.3 KeyUpdate's reply).  Cancelling the caller ends it too.

The TLS stream's counters (``received``, ``sent``, ``send_progress``) move as they
would in ``receive_some``/``send_all``, so byte metrics and the idle sweep see the
traffic; the stream is claimed for both directions while spliced.
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import ssl

import trio

from ._base import SEND_PIECE
from ._socket import _BROKEN, _FULL_RECORD, SSLSocketStream

_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_TROUBLE = select.EPOLLERR | select.EPOLLHUP
#: Bytes of plaintext read from the TLS side per event, at most (a quarter of that per
#: read from the plain side: one ``SSL_write`` each, which a caller that must finish one
#: sends as one piece).
_TLS_READ = 262144


class SpliceEnd(enum.Enum):
    """Why a splice ended."""

    #: The TLS peer sent close_notify.
    CLIENT_EOF = "client eof"
    #: The plain socket's peer closed its side (EOF).
    TARGET_EOF = "target eof"
    #: The TLS stream broke: :attr:`Spliced.error` is the ``BrokenResourceError``.
    CLIENT_LOST = "client lost"
    #: Reading the plain socket failed: :attr:`Spliced.error` is the ``OSError``.
    TARGET_LOST = "target lost"
    #: Writing to the plain socket failed (its peer stopped reading): what the socket
    #: says next decides, and nothing more is copied to it.  :attr:`Spliced.error` is
    #: the ``OSError``.
    TARGET_STOPPED = "target stopped reading"
    #: Something the fast path leaves to the caller's copy loops (see the module docstring).
    ELSEWHERE = "elsewhere"


class Spliced:
    """How a splice ended, and what it had in hand."""

    __slots__ = ("end", "error", "to_client", "to_target")

    def __init__(
        self, end: SpliceEnd, error: BaseException | None, to_target: bytes, to_client: bytes
    ) -> None:
        self.end = end
        self.error = error
        #: Read from the TLS side and not yet sent to the plain socket.
        self.to_target = to_target
        #: Read from the plain socket and not yet sent: OpenSSL may have begun on it, so
        #: it must be the next ``send_all``, whole (it is at most ``SEND_PIECE``).
        self.to_client = to_client


class _Pair:
    """One spliced connection while the loop drives it."""

    __slots__ = (
        "cfd", "done", "end", "error", "io", "loop", "stream", "to_client", "to_target", "ufd", "up",
        "wanted",
    )  # fmt: skip

    def __init__(self, loop: _Loop, stream: SSLSocketStream, up: socket.socket) -> None:
        self.loop = loop
        self.stream = stream
        self.io = stream._io
        self.cfd = stream._fd
        self.up = up
        self.ufd = up.fileno()
        self.to_target: memoryview | None = None
        self.to_client: bytes | None = None
        #: What each descriptor is registered for now: (client, target).
        self.wanted = (_IN, _IN)
        self.end: SpliceEnd | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()

    def step(self, fd: int, events: int) -> None:
        if fd == self.cfd:
            if self.to_client is not None and events & (_OUT | _TROUBLE):
                self._flush_client()
            if self.end is None and self.to_target is None and events & (_IN | _TROUBLE):
                self._read_client()
        else:
            if self.to_target is not None and events & (_OUT | _TROUBLE):
                self._flush_target()
            if self.end is None and self.to_client is None and events & (_IN | _TROUBLE):
                self._read_target()
        if self.end is not None:
            return
        if events & _TROUBLE:
            # An error or hang-up on a side it is not reading: level-triggered, it would
            # be reported again and again.  The copy loops will meet it in its turn.
            self.finish(SpliceEnd.ELSEWHERE)
            return
        wanted = (
            (_IN if self.to_target is None else 0) | (_OUT if self.to_client is not None else 0),
            (_IN if self.to_client is None else 0) | (_OUT if self.to_target is not None else 0),
        )
        if wanted != self.wanted:
            epoll = self.loop.epoll
            if wanted[0] != self.wanted[0]:
                epoll.modify(self.cfd, wanted[0])
            if wanted[1] != self.wanted[1]:
                epoll.modify(self.ufd, wanted[1])
            self.wanted = wanted

    def _read_client(self) -> None:
        buffer, io, got = self.loop.buffer, self.io, 0
        end: SpliceEnd | None = None
        error: BaseException | None = None
        try:
            # A full record read probably has the next one behind it (a bulk sender):
            # read on while one more fits, as SSLSocketStream.receive_some does.
            while True:
                k = io.read(_TLS_READ - got, buffer[got:])
                if not k:
                    end = SpliceEnd.CLIENT_EOF
                    break
                got += k
                if k != _FULL_RECORD or got + _FULL_RECORD > _TLS_READ:
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            end = SpliceEnd.ELSEWHERE
        except ssl.SSLZeroReturnError:
            end = SpliceEnd.CLIENT_EOF
        except OSError as exc:
            end, error = SpliceEnd.CLIENT_LOST, self.stream._broken(exc)
        if got:
            self.stream.received += got
            self._send_target(buffer[:got])
        if end is not None and self.end is None:
            self.finish(end, error)

    def _send_target(self, data: memoryview) -> None:
        try:
            sent = self.up.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.finish(SpliceEnd.TARGET_STOPPED, exc)
            return
        if sent < len(data):
            self.to_target = memoryview(bytes(data[sent:]))

    def _flush_target(self) -> None:
        assert self.to_target is not None
        try:
            sent = self.up.send(self.to_target)
        except BlockingIOError:
            return
        except OSError as exc:
            self.to_target = None
            self.finish(SpliceEnd.TARGET_STOPPED, exc)
            return
        rest = self.to_target[sent:]
        self.to_target = rest if rest else None

    def _read_target(self) -> None:
        buffer = self.loop.buffer
        try:
            got = self.up.recv_into(buffer, SEND_PIECE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.finish(SpliceEnd.TARGET_LOST, exc)
            return
        if not got:
            self.finish(SpliceEnd.TARGET_EOF)
            return
        self._write_client(buffer[:got])

    def _write_client(self, data: memoryview | bytes) -> None:
        stream = self.stream
        try:
            self.io.write(data)
        except ssl.SSLWantWriteError:
            if self.to_client is None:
                self.to_client = bytes(data)
            return
        except ssl.SSLWantReadError:
            if self.to_client is None:
                self.to_client = bytes(data)
            self.finish(SpliceEnd.ELSEWHERE)
            return
        except OSError as exc:
            self.finish(SpliceEnd.CLIENT_LOST, stream._broken(exc))
            return
        stream.sent += len(data)
        self.to_client = None

    def _flush_client(self) -> None:
        assert self.to_client is not None
        self.stream.send_progress += 1  # woken writable: the peer took bytes
        self._write_client(self.to_client)

    def finish(self, end: SpliceEnd, error: BaseException | None = None) -> None:
        self.end, self.error = end, error
        try:
            self.loop.remove(self)
        finally:
            self.done.set()  # whatever happens, the caller is not left waiting

    def spliced(self) -> Spliced:
        assert self.end is not None
        to_target = bytes(self.to_target) if self.to_target is not None else b""
        return Spliced(self.end, self.error, to_target, self.to_client or b"")


class _Loop:
    """One ``trio.run``'s ``epoll`` set of spliced descriptors, and the task that serves it."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.pairs: dict[int, _Pair] = {}
        #: Shared by every pair: each step passes on or copies what it read before the next.
        self.buffer = memoryview(bytearray(_TLS_READ))
        trio.lowlevel.spawn_system_task(self._serve, name="trio_tlsecho splice loop")

    def add(self, pair: _Pair) -> None:
        self.epoll.register(pair.cfd, _IN)
        try:
            self.epoll.register(pair.ufd, _IN)
        except BaseException:
            self.epoll.unregister(pair.cfd)
            raise
        self.pairs[pair.cfd] = self.pairs[pair.ufd] = pair

    def remove(self, pair: _Pair) -> None:
        for fd in (pair.cfd, pair.ufd):
            if self.pairs.get(fd) is pair:
                del self.pairs[fd]
                if not self.epoll.closed:
                    # A descriptor closed while spliced left the set with it: nothing to undo.
                    with contextlib.suppress(OSError):
                        self.epoll.unregister(fd)

    async def _serve(self) -> None:
        epoll, pairs = self.epoll, self.pairs
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, events in epoll.poll(0):
                    pair = pairs.get(fd)
                    if pair is None:
                        continue
                    try:
                        pair.step(fd, events)
                    except Exception as exc:  # a bug: it belongs to that connection's task
                        if pair.end is None:
                            pair.finish(SpliceEnd.ELSEWHERE, exc)
        finally:
            epoll.close()


_LOOP: trio.lowlevel.RunVar[_Loop] = trio.lowlevel.RunVar("trio_tlsecho_splice_loop")


def _loop() -> _Loop:
    try:
        return _LOOP.get()
    except LookupError:
        loop = _Loop()
        _LOOP.set(loop)
        return loop


def can_splice(stream: trio.abc.Stream) -> bool:
    """Whether :func:`splice` can take *stream* (a socket-engine stream, on Linux)."""
    return isinstance(stream, SSLSocketStream) and hasattr(select, "epoll")


async def splice(stream: SSLSocketStream, up: socket.socket) -> Spliced:
    """Copy between *stream* and the connected non-blocking socket *up* until something
    other than bytes happens (see the module docstring); *stream* must be idle."""
    stream._claim_sending()
    if stream._receiving:
        stream._sending = False
        raise trio.BusyResourceError("another task is currently receiving data on this stream")
    stream._receiving = True
    pair = _Pair(_loop(), stream, up)
    try:
        if not stream._handshake_done:
            await stream._ensure_handshake()
        await trio.lowlevel.checkpoint_if_cancelled()
        pair.loop.add(pair)
        if stream._sock.pending():  # plaintext OpenSSL holds: epoll would not say so
            pair.step(pair.cfd, _IN)
        await pair.done.wait()
    finally:
        if pair.end is None:  # cancelled
            pair.loop.remove(pair)
            if pair.to_client is not None:
                stream._state = _BROKEN  # OpenSSL is half way through a record
        stream._receiving = stream._sending = False
    if isinstance(pair.error, Exception) and pair.end is SpliceEnd.ELSEWHERE:
        if pair.to_client is not None:
            stream._state = _BROKEN  # a bug stopped OpenSSL half way through a record
        raise pair.error
    return pair.spliced()
