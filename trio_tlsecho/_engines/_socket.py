"""A second TLS engine: a ``trio.abc.Stream`` over a non-blocking ``ssl.SSLSocket``.

Theory of operation
-------------------
``trio.SSLStream`` runs OpenSSL over two ``MemoryBIO``s and moves bytes between
them and a ``SocketStream`` in Python: every round trip pays for ``_retry``, two
locks, the BIO shuffling and two stream layers.  Here OpenSSL owns the socket:
``SSL_read``/``SSL_write`` call ``recv``/``send`` themselves, and trio is used only
to *wait* (``wait_readable``/``wait_writable`` on the file descriptor).  The
syscalls per round trip are the same; the Python on the way is a fraction.

Ownership of the file descriptor.  :meth:`SSLSocketStream.from_socket` detaches
the fd from the trio socket (which is then closed: ``fileno() == -1``), wraps it
in a stdlib socket with explicit family/type/proto, and ``wrap_socket`` detaches
*that* into the ``SSLSocket``.  At every moment exactly one object owns the fd,
and only :meth:`aclose` closes it, after ``notify_closing`` has woken any task
waiting on it.  The fd number never changes, so trio's epoll registration for it
stays valid.

Every OpenSSL call is non-blocking and retried after a wait:

* ``SSLWantReadError``: wait until the socket is readable, call again.
* ``SSLWantWriteError``: wait until it is writable, call again.  ``SSL_write``
  must then be retried with the *same* data (CPython sets
  ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``, not partial writes), so a ``send_all``
  that is interrupted between the two calls leaves OpenSSL half way through a
  record: the stream is then BROKEN, exactly as trio's ``SSLStream``.
  A ``receive_some`` can be cancelled anywhere: OpenSSL keeps a partly read
  record inside and the next call continues it, so the stream stays usable.
* Either may happen in either direction: a read can need to write (an alert, a
  reply to a TLS 1.3 KeyUpdate) and, with TLS 1.2 renegotiation, a write can
  need to read.  trio allows one waiter per direction per fd, so a second task
  of ours that needs the same direction parks on a ``ParkingLot`` until the
  first one's wait ends, then retries (and may become the waiter itself).

``pending()``.  We always *try* ``SSL_read`` before waiting, and wait only when
it says WANT_READ.  Data already decrypted inside OpenSSL (a record bigger than
``max_bytes``) is therefore returned without touching the socket, and WANT_READ
means OpenSSL holds no plaintext.  CPython never enables read-ahead, so OpenSSL
also never holds undecrypted bytes that the socket will not signal again.

Post-handshake messages (TLS 1.3 NewSessionTicket, KeyUpdate) are consumed by
``SSL_read`` itself: it reads the record, handles it, and reports WANT_READ
because no application data came; we wait and read again.  A server with
``num_tickets > 0`` writes its tickets straight to the socket at the end of its
handshake; that is harmless on a real socket (the MemoryBIO deadlock of trio
#819 needs the tickets to be sent by a separate await).  A KeyUpdate *with
update_requested* that arrives while our own ``SSL_write`` is blocked half way
could, in principle, make OpenSSL fail the reply with BAD_WRITE_RETRY (the stream
would then become BROKEN); OpenSSL 3.0.19 defers the reply to the next write
instead, and a 64 MiB send under ``openssl s_client``'s ``K`` finished intact.
CPython cannot send KeyUpdate at all, and our server context disables
renegotiation.

End of stream, as ``trio.SSLStream(https_compatible=False)``: the peer's
close_notify makes ``receive_some`` return ``b""`` (now and on every later
call); a TCP EOF without it (``SSLEOFError``), a reset or any other error makes
the stream BROKEN and raises ``BrokenResourceError`` from the cause.  CPython
reports a reset (or any failed syscall) under ``SSL_read_ex`` as a bare
``SSLEOFError``; the TCP state tells it apart from a FIN, and it is reported as
the ``ConnectionResetError`` it was.  A closed
stream raises ``ClosedResourceError``; a second task calling ``send_all`` /
``wait_send_all_might_not_block`` or ``receive_some`` concurrently gets
``BusyResourceError``.

Closing is bounded.  :meth:`aclose` sends close_notify once (``SSL_shutdown``)
and does *not* wait for the peer's: a peer that never answers cannot hold us.
Only if the socket buffer is full does it wait for writability, for at most
``close_notify_timeout`` seconds.  It sends nothing when the handshake never
finished, when the stream is broken, while another task is half way through a
``send_all``, or when the caller is already cancelled
(``trio.aclose_forcefully``) - the last makes a forceful close look like a
ragged EOF to the peer, which is what it is.

Checkpoints follow trio's ``SocketStream``: ``checkpoint_if_cancelled()`` before
the first OpenSSL call, so a cancelled caller consumes or sends nothing; then,
if the call completed without ever waiting, ``cancel_shielded_checkpoint()`` so
the operation still yields.  A wait is itself a checkpoint.  Errors are raised
without an extra yield, as trio does.

Received bytes are decrypted into one buffer shared by every stream of the
thread and copied out before the next ``await``, so an idle connection holds no
receive buffer of its own.  When a read returns a full 16 KiB record and the
caller asked for more, we read again at once (a bulk sender has usually queued
the next record already): large transfers take a quarter of the calls (256 KiB
echo in one process, CPU time: 440 MB/s with, 340 without).  Tried and dropped:
waiting for readability *before* the first read after a read that had to wait
(saves a recv() that says EAGAIN in request/response traffic; no measurable gain).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import math
import operator
import os
import socket
import ssl
import threading
from typing import Any

import trio

from .._tls import SSLIO, ssl_io
from ._base import SEND_PIECE, TLSStream, Transport, linger, take_socket

__all__ = [
    "DEFAULT_RECEIVE_SIZE",
    "SSLSocketStream",
    "TLSStream",
    "open_ssl_socket_stream",
]

#: ``receive_some()`` without ``max_bytes`` asks for this much, as ``SocketStream``.
DEFAULT_RECEIVE_SIZE = 65536
# The most one receive_some returns (larger max_bytes are capped), and the size of
# the shared decryption buffer.
_MAX_RECEIVE = 262144
# The largest TLS plaintext record (RFC 8446 5.1); a read that returns exactly this
# much has probably got a bulk sender's next record waiting too.
_FULL_RECORD = 16384

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
# What a non-blocking OpenSSL call asked for, as a number below any byte count.
_WANT_READ, _WANT_WRITE = -1, -2
# What we wait for, as bits of SSLSocketStream._waiting, and how.
_READABLE, _WRITABLE = 1, 2
_WAIT = {_READABLE: trio.lowlevel.wait_readable, _WRITABLE: trio.lowlevel.wait_writable}
# Linux's TCP_INFO starts with the TCP state; TCP_CLOSE is 7 (include/net/tcp_states.h).
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_TCP_CLOSE = 7


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


_OK, _BROKEN, _CLOSED = _State.OK, _State.BROKEN, _State.CLOSED


class _SharedBuffer(threading.local):
    def __init__(self) -> None:
        self.view = memoryview(bytearray(_MAX_RECEIVE))


_shared = _SharedBuffer()


class _ClosedIO:
    """``SSLIO`` of a closed stream: it holds no reference to the SSL object."""

    __slots__ = ()

    def read(self, n: int, buffer: memoryview, /) -> int:
        raise trio.ClosedResourceError("this stream was already closed")

    def write(self, data: Any, /) -> int:
        raise trio.ClosedResourceError("this stream was already closed")


_CLOSED_IO = _ClosedIO()


class SSLSocketStream(TLSStream):
    """TLS over a non-blocking ``ssl.SSLSocket``, driven by trio's I/O waits.

    Build one with :meth:`from_socket_stream` (an accepted or connected
    ``trio.SocketStream``), :meth:`from_socket`, or :func:`open_ssl_socket_stream`.
    It is a ``trio.abc.Stream`` and offers what handlers use of ``trio.SSLStream``:
    ``do_handshake``, ``getpeercert``, ``cipher``, ``version``,
    ``selected_alpn_protocol``, ``session_reused``, ``pending``.  There is no
    ``transport_stream``; :attr:`socket` is the ``ssl.SSLSocket`` itself.
    """

    __slots__ = (
        "_cause",
        "_fd",
        "_handshake_done",
        "_handshaking",
        "_io",
        "_lot",
        "_receiving",
        "_sending",
        "_sock",
        "_state",
        "_waiting",
        "close_notify_timeout",
        "received",
        "send_progress",
        "sent",
    )

    def __init__(self, sock: ssl.SSLSocket, *, close_notify_timeout: float = 1.0) -> None:
        """Take over *sock*: non-blocking, connected, handshake not yet done.

        Prefer the ``from_*`` constructors, which build *sock* correctly.
        """
        if sock.gettimeout() != 0.0:
            raise ValueError("SSLSocketStream needs a non-blocking SSLSocket (settimeout(0))")
        if getattr(sock, "suppress_ragged_eofs", False):  # not in typeshed
            raise ValueError("SSLSocketStream needs suppress_ragged_eofs=False to see a ragged EOF")
        self._sock = sock
        self._fd = sock.fileno()
        self._state = _OK
        #: What broke the stream, re-raised as the cause on every later call.
        self._cause: BaseException | None = None
        self._handshake_done = False
        self._handshaking: trio.Event | None = None
        self._receiving = False
        self._sending = False
        #: The directions (_READABLE, _WRITABLE) one of our tasks waits for in trio, which
        #: allows one waiter per direction per fd; other tasks of ours park on ``_lot``.
        self._waiting = 0
        self._lot: trio.lowlevel.ParkingLot | None = None
        # What the hot path calls: the C object (+4 % round trips/s against a load
        # generator that saturates the server, benchmarks/README.md), with
        # suppress_ragged_eofs off as the Python layer would have it.  The object
        # itself, not its two bound methods: those would cost 144 B per connection.
        self._io: SSLIO = ssl_io(sock)
        self.close_notify_timeout = close_notify_timeout
        #: Plaintext bytes received and sent so far (OpenSSL does the wire I/O, so
        #: wire bytes are not seen; these are what a meter can count instead).
        self.received = 0
        self.sent = 0
        #: Times a blocked send found the socket writable again: the peer took bytes,
        #: though ``sent`` only moves when a piece is done.  The idle sweep reads it,
        #: so that a slow reader of a long send is not idle.
        self.send_progress = 0

    # ------------------------------------------------------------------ building

    @classmethod
    def from_socket(
        cls,
        sock: trio.socket.SocketType | socket.socket,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        close_notify_timeout: float = 1.0,
    ) -> SSLSocketStream:
        """Wrap a connected TCP socket; *sock* is detached (closed) and its fd is ours.

        *ssl_context* is used as is, never modified.  Sets ``TCP_NODELAY``.
        """
        if server_side and server_hostname is not None:
            raise ValueError("server_hostname is for the client side only")
        raw = take_socket(sock)
        try:
            with contextlib.suppress(OSError):  # not TCP (a Unix socket, in tests)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A peer that reset already: found here, while *raw* owns the fd.  CPython's
            # wrap_socket would find it after taking the fd over, and then raise
            # without closing it (3.11: the recv(1) probe of an unconnected socket).
            raw.getpeername()
            # wrap_socket detaches *raw* into the SSLSocket (and closes the fd itself
            # if it fails after that); closing a detached *raw* below is a no-op.
            ssl_sock = ssl_context.wrap_socket(
                raw,
                server_side=server_side,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=False,
                server_hostname=server_hostname,
            )
        except BaseException:
            raw.close()
            raise
        try:
            return cls(ssl_sock, close_notify_timeout=close_notify_timeout)
        except BaseException:
            ssl_sock.close()
            raise

    @classmethod
    def server(cls, transport: Transport, context: ssl.SSLContext) -> SSLSocketStream:
        """The engine: takes over an accepted socket, bare (as ``serve`` accepts them: no
        ``trio.SocketStream`` built only to be taken apart) or in a ``trio.SocketStream``
        (see :meth:`from_socket`)."""
        if isinstance(transport, trio.socket.SocketType):
            return cls.from_socket(transport, context, server_side=True)
        if not isinstance(transport, trio.SocketStream):
            raise TypeError(f"the socket engine needs a socket, not {type(transport).__name__}")
        return cls.from_socket_stream(transport, context, server_side=True)

    @classmethod
    def from_socket_stream(
        cls,
        transport: trio.SocketStream,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        close_notify_timeout: float = 1.0,
    ) -> SSLSocketStream:
        """Take over *transport*'s socket.

        *transport* is left closed (its ``aclose`` is then a harmless no-op), so ask it
        for the peer address, or read a PROXY header from it, *before* this call.
        """
        return cls.from_socket(
            transport.socket,
            ssl_context,
            server_side=server_side,
            server_hostname=server_hostname,
            close_notify_timeout=close_notify_timeout,
        )

    # ------------------------------------------------------------------ state

    @property
    def socket(self) -> ssl.SSLSocket:
        """The ``ssl.SSLSocket``, for ``getpeername``/``getsockopt``/``setsockopt``.

        Never read from, write to or close it yourself.
        """
        return self._sock

    def _raise_status(self) -> None:
        if self._state is _CLOSED:
            raise trio.ClosedResourceError("this stream was already closed")
        raise trio.BrokenResourceError("this TLS stream is broken") from self._cause

    def _broken(self, exc: BaseException) -> BaseException:
        """Mark the stream broken (unless closed meanwhile) and return what to raise."""
        if self._state is _CLOSED:
            return trio.ClosedResourceError("this stream was already closed")
        exc = self._refine(exc)
        self._state, self._cause = _BROKEN, exc
        return trio.BrokenResourceError(f"TLS connection broken: {exc}")

    def _refine(self, exc: BaseException) -> BaseException:
        # CPython reads with SSL_read_ex, and reports *any* failed syscall under it
        # (ECONNRESET, EPIPE) as a bare SSLEOFError with the errno lost; OpenSSL 3's
        # own EOF carries the reason UNEXPECTED_EOF_WHILE_READING.  A reset leaves the
        # TCP socket in state CLOSE (a FIN only in CLOSE_WAIT), so ask the kernel, on
        # this error path only, and report a reset as one.
        if not isinstance(exc, ssl.SSLEOFError) or exc.reason is not None or _TCP_INFO is None:
            return exc
        try:
            state = self._sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
        except OSError:
            return exc
        if state != _TCP_CLOSE:
            return exc
        reset = ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
        reset.__cause__ = exc
        return reset

    # ------------------------------------------------------------------ waiting

    async def _wait(self, direction: int) -> None:
        """Wait until the socket is readable or writable (*direction*), or another task of
        ours that waits in trio is woken (then return early: the caller retries anyway)."""
        if self._waiting & direction:  # another of our tasks holds trio's one slot for it
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            await self._lot.park()
        else:
            self._waiting |= direction
            try:
                await _WAIT[direction](self._fd)
            finally:
                self._waiting &= ~direction
                if self._lot:
                    self._lot.unpark_all()
        if self._state is _CLOSED:
            raise trio.ClosedResourceError("another task closed this stream")

    # ------------------------------------------------------------------ handshake

    async def do_handshake(self) -> None:
        """Complete the TLS handshake (once; later calls only checkpoint).

        Called implicitly by the first ``receive_some``/``send_all``.  Call it first to
        look at the peer's certificate before talking.  Cancelling it breaks the stream.
        """
        if self._state is not _OK:
            self._raise_status()
        if self._handshake_done:
            await trio.lowlevel.checkpoint()
            return
        await self._ensure_handshake()

    async def _ensure_handshake(self) -> None:
        if self._handshaking is not None:  # another task is at it: wait for its outcome
            await self._handshaking.wait()
            if self._state is not _OK:
                self._raise_status()
            return
        handshaking = self._handshaking = trio.Event()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                try:
                    self._sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    want_write = False
                except ssl.SSLWantWriteError:
                    want_write = True
                waited = True
                await self._wait(_WRITABLE if want_write else _READABLE)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._handshake_done = True
        except trio.ClosedResourceError:
            raise
        except (OSError, ValueError) as exc:  # SSLError and CertificateError are OSErrors
            raise self._broken(exc) from self._cause
        except BaseException:  # cancelled half way: no way back into the handshake
            if self._state is _OK:
                self._state = _BROKEN
            raise
        finally:
            # Every later call sees _handshake_done or a broken state first; dropping
            # the Event saves an idle connection its memory.
            self._handshaking = None
            handshaking.set()

    # ------------------------------------------------------------------ receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Up to *max_bytes* (capped at 256 KiB) of plaintext; ``b""`` after close_notify."""
        if self._receiving:
            raise trio.BusyResourceError("another task is currently receiving data on this stream")
        if self._state is not _OK:
            self._raise_status()
        if max_bytes is None:
            n = DEFAULT_RECEIVE_SIZE
        else:
            n = operator.index(max_bytes)
            if n < 1:
                raise ValueError("max_bytes must be >= 1")
            if n > _MAX_RECEIVE:
                n = _MAX_RECEIVE
        self._receiving = True
        try:
            if not self._handshake_done:
                await self._ensure_handshake()
            await trio.lowlevel.checkpoint_if_cancelled()
            view = _shared.view
            got = self._try_read(n, view)
            # The loop is here, not in a helper coroutine: an idle connection sits in
            # it, and one coroutine less is ~250 B less per idle connection.
            # Cancelled while waiting: OpenSSL keeps any partial record, nothing is lost.
            waited = got < 0  # a wait is a checkpoint: then no other one is needed
            while got < 0:
                if got == _WANT_WRITE or self._waiting & _READABLE:
                    await self._wait(_WRITABLE if got == _WANT_WRITE else _READABLE)
                else:  # _wait(_READABLE) inlined, for the same reason
                    self._waiting |= _READABLE
                    try:
                        await trio.lowlevel.wait_readable(self._fd)
                    finally:
                        self._waiting &= _WRITABLE
                        if self._lot:
                            self._lot.unpark_all()
                    if self._state is _CLOSED:
                        raise trio.ClosedResourceError("another task closed this stream")
                got = self._try_read(n, view)
            if got == _FULL_RECORD and n > got:
                got = self._read_more(got, n, view)
            # Copy out of the shared buffer before yielding: other streams use it.
            data = bytes(view[:got])
            self.received += got
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    def _try_read(self, n: int, view: memoryview) -> int:
        """Bytes read into *view*, 0 at close_notify, or _WANT_READ/_WANT_WRITE.

        A plain function, not inline in receive_some: OpenSSL says "would block" by
        raising, and an exception gives every frame it passes through a frame object
        that lives as long as the frame.  Caught here, it costs this short-lived frame,
        not a coroutine that an idle connection keeps (~220 B).  Nor does it outlive
        the call: a caught exception held across a wait would keep its traceback.
        """
        try:
            return self._io.read(n, view)
        except ssl.SSLWantReadError:
            return _WANT_READ
        except ssl.SSLWantWriteError:
            return _WANT_WRITE
        except ssl.SSLZeroReturnError:
            return 0  # the peer's close_notify
        except OSError as exc:
            raise self._broken(exc) from self._cause

    def _read_more(self, got: int, n: int, view: memoryview) -> int:
        # Best effort, never blocks: the bytes already read are returned whatever
        # happens; an error found here breaks the stream for the *next* call.
        while got < n:
            try:
                k = self._io.read(n - got, view[got:])
            except _WANT:
                break
            except ssl.SSLZeroReturnError:
                break  # the next read sees close_notify again and returns b""
            except OSError as exc:
                if self._state is _OK:
                    self._state, self._cause = _BROKEN, self._refine(exc)
                break
            got += k
            if k != _FULL_RECORD:  # 0 (close_notify) or the tail of a burst
                break
        return got

    # ------------------------------------------------------------------ sending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of *data*.  Cancelling it half way breaks the stream."""
        self._claim_sending()
        try:
            if not self._handshake_done:
                await self._ensure_handshake()
            if not data:  # SSL_write(b"") would mean something else: do nothing, yield
                await trio.lowlevel.checkpoint()
                return
            await trio.lowlevel.checkpoint_if_cancelled()
            size = data.nbytes if isinstance(data, memoryview) else len(data)
            if size > SEND_PIECE:
                await self._send_pieces(data)
                return
            # The common case, inline: no coroutine more per send.
            waits = self._try_write(data)
            if waits:
                await self._send_after_wait(data, waits == _WANT_WRITE)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self.sent += size
        finally:
            self._sending = False

    def _claim_sending(self) -> None:
        """The send side is ours until ``_sending`` is cleared (in the caller's ``finally``)."""
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this stream")
        if self._state is not _OK:
            self._raise_status()
        self._sending = True

    async def _send_pieces(self, data: bytes | bytearray | memoryview) -> None:
        # SEND_PIECE bytes at a time, each counted as it goes.  Only the first piece
        # may be cancelled cleanly (send_all's checkpoint); after it only a wait can
        # be, and that breaks the stream.  Every view is released however this ends
        # (the with blocks): a view kept alive by a traceback would stop the caller
        # from resizing its bytearray.
        with memoryview(data) as whole, whole.cast("B") as octets:
            for start in range(0, len(octets), SEND_PIECE):
                with octets[start : start + SEND_PIECE] as piece:
                    waits = self._try_write(piece)
                    if waits:
                        await self._send_after_wait(piece, waits == _WANT_WRITE)
                    else:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    self.sent += len(piece)

    def _try_write(self, data: bytes | bytearray | memoryview) -> int:
        """0 once OpenSSL took all of *data*, else what it waits for (_WANT_WRITE/_WANT_READ).

        A plain function for the reason given at :meth:`_try_read`.
        """
        try:
            self._io.write(data)
        except ssl.SSLWantWriteError:
            return _WANT_WRITE
        except ssl.SSLWantReadError:
            return _WANT_READ
        except OSError as exc:
            raise self._broken(exc) from self._cause
        return 0

    async def _send_after_wait(self, data: bytes | bytearray | memoryview, want_write: bool) -> None:
        # OpenSSL has started on *data*; it must be finished with the same bytes, so
        # anything that stops us here (cancellation included) breaks the stream.
        try:
            while True:
                await self._wait(_WRITABLE if want_write else _READABLE)
                self.send_progress += want_write  # the peer took bytes: not idle
                try:
                    self._io.write(data)
                    return
                except ssl.SSLWantWriteError:
                    want_write = True
                except ssl.SSLWantReadError:
                    want_write = False
        except trio.ClosedResourceError:
            raise
        except OSError as exc:
            raise self._broken(exc) from self._cause
        except BaseException:
            if self._state is _OK:
                self._state = _BROKEN
            raise

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket is writable (may return early, never late)."""
        self._claim_sending()
        try:
            await self._wait(_WRITABLE)
        finally:
            self._sending = False

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Send close_notify (bounded, never waiting for the peer's) and close the socket."""
        if self._state is _CLOSED:
            await trio.lowlevel.checkpoint()
            return
        polite = (
            self._state is _OK
            and self._handshake_done
            and not self._sending
            and trio.current_effective_deadline() != -math.inf
        )
        self._state = _CLOSED
        try:
            if polite:
                await self._send_close_notify()
        finally:
            trio.lowlevel.notify_closing(self._fd)
            self._sock.close()
            self._io = _CLOSED_IO  # drop our reference to the SSL object
        await trio.lowlevel.checkpoint()

    async def _send_close_notify(self) -> None:
        try:
            # SSL_shutdown sends close_notify, then CPython calls it once more to look
            # for the peer's, which raises SSLWantReadError: the expected outcome.
            self._sock.unwrap()
        except ssl.SSLWantWriteError:
            pass  # the socket buffer is full: wait a little below
        except (OSError, ValueError):
            return  # sent, or the peer is gone: either way we are done
        else:
            return
        with trio.move_on_after(self.close_notify_timeout):
            try:
                await trio.lowlevel.wait_writable(self._fd)
            except (trio.BusyResourceError, trio.ClosedResourceError):
                return
            with contextlib.suppress(OSError, ValueError):
                self._sock.unwrap()

    async def refuse(self) -> None:
        """After a failed handshake: OpenSSL has written its alert already; let the peer go."""
        # The handshake failed: plain socket calls from here (no TLS object is involved).
        raw = self._sock
        await linger(self._fd, lambda: socket.socket.shutdown(raw, socket.SHUT_WR))

    # ------------------------------------------------------------------ TLS details

    def _require_handshake(self, name: str) -> None:
        if self._state is _CLOSED:
            raise trio.ClosedResourceError("this stream was already closed")
        if not self._handshake_done:
            raise trio.NeedHandshakeError(f"call do_handshake() before calling {name!r}")

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate, as ``ssl.SSLSocket.getpeercert``."""
        self._require_handshake("getpeercert")
        return self._sock.getpeercert(binary_form)

    def cipher(self) -> tuple[str, str, int] | None:
        self._require_handshake("cipher")
        return self._sock.cipher()

    def version(self) -> str | None:
        self._require_handshake("version")
        return self._sock.version()

    def selected_alpn_protocol(self) -> str | None:
        self._require_handshake("selected_alpn_protocol")
        return self._sock.selected_alpn_protocol()

    @property
    def session_reused(self) -> bool:
        self._require_handshake("session_reused")
        return bool(self._sock.session_reused)

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session, to resume later; set it before the handshake to resume one."""
        return self._sock.session

    @session.setter
    def session(self, session: ssl.SSLSession | None) -> None:
        self._sock.session = session

    @property
    def server_side(self) -> bool:
        return self._sock.server_side

    @property
    def context(self) -> ssl.SSLContext:
        return self._sock.context

    def pending(self) -> int:
        """Plaintext bytes decrypted inside OpenSSL and not yet returned."""
        if self._state is _CLOSED:
            return 0
        return self._sock.pending()


async def open_ssl_socket_stream(
    host: str | bytes,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    close_notify_timeout: float = 1.0,
) -> SSLSocketStream:
    """Connect over TCP and wrap the socket (as ``trio.open_ssl_over_tcp_stream``).

    The handshake is not done yet: call :meth:`SSLSocketStream.do_handshake` (under a
    timeout of your choosing) or let the first send/receive do it.  *server_hostname*
    defaults to *host*.
    """
    tcp = await trio.open_tcp_stream(host, port)
    if server_hostname is None:
        server_hostname = host.decode("ascii") if isinstance(host, bytes) else host
    try:
        return SSLSocketStream.from_socket_stream(
            tcp,
            ssl_context,
            server_hostname=server_hostname,
            close_notify_timeout=close_notify_timeout,
        )
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
