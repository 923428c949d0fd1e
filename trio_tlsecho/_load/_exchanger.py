"""Closed-loop exchanges of all of one process's clients in one task (:class:`ExchangeLoop`).

Why: a client task that waits for its socket with ``trio.lowlevel.wait_readable`` costs,
per small round trip, one ``epoll_ctl`` to arm the wait (trio registers one-shot), a
task switch to the client and one back, and a cancel scope's deadline moved in trio's
heap.  That was half of the load generator's CPU per round trip, and it made one
loadgen process drive 0.38x what a compiled load generator drives from one core
(benchmarks/README.md, "How fast the load generator is").  Here every connection in a
steady closed loop stays registered in one ``epoll`` set of our own, level-triggered;
one task waits for that set to be readable (a single trio wait for any number of
ready sockets), then, for each ready socket, reads the echo, checks it, and sends the
next message, with no task switch and no per-exchange registration.

What stays with the client task (:class:`._client._Client`): connecting, the first
exchange of a connection, open loops, a new connection per request, large messages,
and whatever ends an exchange other than an echo (a failure, a timeout, the end of
its tickets, a connection that must be closed): the loop hands the connection back
with what happened (:class:`Handback`), and the task does what it always did.  The
bookkeeping of an exchange (counting, tickets, the recorder) is the client's too: the
loop only moves bytes, through :class:`Exchanger`.

Timeouts: each driven connection has one deadline, that of its exchange in progress,
in an ordered dict that a new exchange moves to the end (the same timeout for all, so
the dict is sorted, and it never holds more entries than connections); a watchdog
task sleeps until the oldest and hands back, as timed out, an exchange still waiting
then.
"""

from __future__ import annotations

import enum
import select
import ssl
from collections import OrderedDict
from typing import Protocol

import trio

from .._tls import ssl_io
from ._stats import ExchangeIO
from ._transport import ClientConnection

_now = trio.current_time


class Exchanger(Protocol):
    """What the loop needs of a client: its exchanges' bookkeeping, not their I/O."""

    io: ExchangeIO
    buffer: memoryview

    def begin(self, now: float) -> memoryview | None:
        """Start an exchange at *now*: the message to send, or ``None`` if none may start."""

    def completed(self, began: float, ended: float) -> bool:
        """Commit the exchange that ended at *ended*; whether the connection must close."""


class Handback(enum.Enum):
    """Why the loop gave a connection back to its client task."""

    #: No exchange may start (the client's share of ``requests`` is done).
    FINISHED = "finished"
    #: The exchange ended, was committed, and the connection must be closed (cut short
    #: or out of step).
    CLOSE = "close"
    #: An I/O call raised: :attr:`_Slot.error` says what, nothing was committed.
    FAILED = "failed"
    #: The exchange's deadline passed, nothing was committed.
    TIMED_OUT = "timed out"


class _Slot:
    """One connection while the loop drives it."""

    __slots__ = (
        "began", "client", "done", "error", "events", "fd", "handback", "payload", "sent",
        "sock", "tls",
    )  # fmt: skip

    def __init__(self, client: Exchanger, sock: ssl.SSLSocket) -> None:
        self.client = client
        self.sock = sock
        #: What reads and writes: the C object under *sock* (see ``ssl_io``).
        self.tls = ssl_io(sock)
        self.fd = sock.fileno()
        self.payload = memoryview(b"")
        self.began = 0.0
        #: Bytes of the payload written; the exchange is reading once all are.
        self.sent = 0
        #: What the ``epoll`` set waits for on this socket now: readable, but writable
        #: while OpenSSL needs to write to go on (a full send buffer, a key update).
        self.events = select.EPOLLIN
        self.done = trio.Event()
        self.handback = Handback.FINISHED
        self.error: BaseException | None = None


class ExchangeLoop:
    """Drives connections in a closed loop from one task; see the module docstring.

    Start :meth:`serve` in a nursery, then call :meth:`drive` from client tasks.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._epoll = select.epoll()
        self._slots: dict[int, _Slot] = {}
        #: Each driven slot's deadline, oldest first (one timeout for all: the order they
        #: were set in is the order they fall due in).
        self._deadlines: OrderedDict[_Slot, float] = OrderedDict()
        self._deadline_added = trio.Event()

    @staticmethod
    def available() -> bool:
        return hasattr(select, "epoll")

    async def serve(self) -> None:
        """Run the loop and its watchdog until cancelled; then close the ``epoll`` set."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch)
                await self._poll()
        finally:
            self._epoll.close()

    async def drive(self, client: Exchanger, conn: ClientConnection) -> tuple[Handback, BaseException | None]:
        """Exchange over *conn* until something the client task must handle happens."""
        slot = _Slot(client, conn.ssl_socket)
        self._epoll.register(slot.fd, select.EPOLLIN)
        self._slots[slot.fd] = slot
        try:
            self._next(slot, _now())
            await slot.done.wait()
        finally:
            if self._slots.get(slot.fd) is slot:  # cancelled while driven
                self._remove(slot)
        return slot.handback, slot.error

    # -- the loop --------------------------------------------------------------------

    async def _poll(self) -> None:
        epoll, slots = self._epoll, self._slots
        while True:
            await trio.lowlevel.wait_readable(epoll)
            for fd, _events in epoll.poll(0):
                slot = slots.get(fd)
                if slot is not None:
                    if slot.sent < len(slot.payload):
                        self._send(slot)
                    else:
                        self._read(slot)

    def _next(self, slot: _Slot, now: float) -> None:
        payload = slot.client.begin(now)
        if payload is None:
            self._hand_back(slot, Handback.FINISHED)
            return
        slot.payload, slot.sent, slot.began = payload, 0, now
        deadlines = self._deadlines
        deadlines[slot] = now + self._timeout
        deadlines.move_to_end(slot)
        if len(deadlines) == 1:
            self._deadline_added.set()
        self._send(slot)

    def _send(self, slot: _Slot) -> None:
        payload, tls = slot.payload, slot.tls
        try:
            while slot.sent < len(payload):
                slot.sent += tls.write(payload[slot.sent :])
        except ssl.SSLWantReadError:
            self._wait_for(slot, select.EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self._wait_for(slot, select.EPOLLOUT)
            return
        except OSError as exc:
            self._hand_back(slot, Handback.FAILED, exc)
            return
        io = slot.client.io
        io.writes, io.sent = 1, len(payload)
        # The echo cannot be here yet: wait for the socket rather than try a read that
        # can only say EAGAIN (see ClientConnection.receive_into).
        if slot.events != select.EPOLLIN:
            self._wait_for(slot, select.EPOLLIN)

    def _wait_for(self, slot: _Slot, events: int) -> None:
        """Wait for *events* on *slot*'s socket next (a syscall only when that changes)."""
        if slot.events != events:
            slot.events = events
            self._epoll.modify(slot.fd, events)

    def _read(self, slot: _Slot) -> None:
        """Read what the socket has of the echo (the steps of ``read_echo``)."""
        client, tls, payload = slot.client, slot.tls, slot.payload
        io, buffer = client.io, client.buffer
        n = io.size
        while io.received < n:
            try:
                got = tls.read(n - io.received, buffer)
            except ssl.SSLEOFError:
                got = 0  # a TCP EOF without close_notify: what SSLSocket makes of it
            except ssl.SSLWantReadError:
                self._wait_for(slot, select.EPOLLIN)
                return
            except ssl.SSLWantWriteError:
                # OpenSSL must write to go on reading: read again once the socket takes it.
                self._wait_for(slot, select.EPOLLOUT)
                return
            except OSError as exc:
                self._hand_back(slot, Handback.FAILED, exc)
                return
            if not got or not io.take(buffer, got, payload):
                break
        else:
            if slot.sock.pending():
                io.mismatched = io.over_long = True
        ended = _now()
        if client.completed(slot.began, ended):
            self._hand_back(slot, Handback.CLOSE)
        else:
            self._next(slot, ended)

    def _hand_back(self, slot: _Slot, why: Handback, error: BaseException | None = None) -> None:
        self._remove(slot)
        slot.handback, slot.error = why, error
        slot.done.set()

    def _remove(self, slot: _Slot) -> None:
        del self._slots[slot.fd]
        self._deadlines.pop(slot, None)
        if not self._epoll.closed:  # at the end of a run, the loop may have ended first
            self._epoll.unregister(slot.fd)

    async def _watch(self) -> None:
        """Hand back, as timed out, each exchange still in progress at its deadline."""
        deadlines = self._deadlines
        while True:
            if not deadlines:
                self._deadline_added = trio.Event()
                await self._deadline_added.wait()
                continue
            slot, deadline = next(iter(deadlines.items()))
            if _now() < deadline:
                await trio.sleep_until(deadline)  # then look again: it may have moved
                continue
            self._hand_back(slot, Handback.TIMED_OUT)
