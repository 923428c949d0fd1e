"""accept() that keeps the peer's address and survives running out of descriptors."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
import weakref

import trio

from ._address import UNIX_PEER

log = logging.getLogger("trio_tlsecho")

# Temporary resource exhaustion on accept(): wait and retry rather than die (trio's
# ACCEPT_CAPACITY_ERRNOS).  Anything else is a bug or a closed socket and propagates.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_PAUSE = 0.100
# The listening socket was closed under us (as trio.SocketListener.accept reports it).
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})
# accept(2) reports an error already pending on the *new* connection (a peer that went
# away, a firewall's EPERM) as its own: that connection is lost, not the listener.
# Linux's man page lists the first ten; the others come from other systems' (as trio
# skips them too).
_PEER_ERRNO_NAMES = (
    "ECONNABORTED EPROTO EPERM ENETDOWN ENOPROTOOPT EHOSTDOWN ENONET EHOSTUNREACH EOPNOTSUPP ENETUNREACH"
    " ECONNRESET ETIMEDOUT ENOSR ESOCKTNOSUPPORT EPROTONOSUPPORT"
)
_PEER_ERRNOS = frozenset(getattr(errno, name) for name in _PEER_ERRNO_NAMES.split() if hasattr(errno, name))
#: A burst of capacity failures is over once an accept succeeds this long after the last
#: failure; while it lasts, a line every REPORT_EVERY seconds says how many more came.
BURST_GAP = 1.0
REPORT_EVERY = 60.0


class CapacityBurst:
    """Logs a listener's run of out-of-descriptor failures as a burst, not one line per try.

    At the limit, accept() fails every 100 ms pause, and succeeds now and then as a
    connection closes: a line per failure was ten a second (hundreds per burst, the
    log itself a cost when resources are short).  So: one ERROR line when a burst
    starts, a WARNING with the count every :data:`REPORT_EVERY` seconds while it lasts,
    and one when an accept succeeds :data:`BURST_GAP` after the last failure, with the
    total, or when the listener stops accepting in the middle of one.  Sans-io: the
    caller passes the time.
    """

    def __init__(self, where: object) -> None:
        self.where = where
        self.count = 0  # failures in this burst
        self.unreported = 0
        self.started = self.last_failure = self.reported = 0.0

    def failed(self, why: str, now: float) -> None:
        if not self.count:
            self.started = self.reported = now
            log.error(
                "%s: accept failed: %s; pausing %d ms between tries until descriptors are free"
                " (logged once per burst)",
                self.where,
                why,
                CAPACITY_PAUSE * 1000,
                extra={"event": "accept_paused", "address": str(self.where), "error": why},
            )
        elif now - self.reported >= REPORT_EVERY:
            log.warning(
                "%s: accept still failing: %s, %d times in %gs",
                self.where,
                why,
                self.unreported + 1,
                now - self.reported,
                extra={"event": "accept_failing", "address": str(self.where), "count": self.unreported + 1},
            )
            self.reported, self.unreported = now, -1
        self.count += 1
        self.unreported += 1
        self.last_failure = now

    def succeeded(self, now: float) -> None:
        if self.count and now - self.last_failure >= BURST_GAP:
            log.warning(
                "%s: accepting again after %d failed accept%s over %.1fs",
                self.where,
                self.count,
                "" if self.count == 1 else "s",
                self.last_failure - self.started,
                extra={"event": "accept_resumed", "address": str(self.where), "count": self.count},
            )
            self.count = self.unreported = 0

    def stopped(self) -> None:
        """Accepting stopped (the server is stopping) with a burst still going: its count."""
        if self.count:
            log.warning(
                "%s: stopped accepting after %d failed accept%s over %.1fs",
                self.where,
                self.count,
                "" if self.count == 1 else "s",
                self.last_failure - self.started,
                extra={"event": "accept_stopped", "address": str(self.where), "count": self.count},
            )
            self.count = self.unreported = 0


_bursts: weakref.WeakKeyDictionary[trio.SocketListener, CapacityBurst] = weakref.WeakKeyDictionary()


async def accept(listener: trio.SocketListener, where: object) -> tuple[trio.SocketStream, tuple[str, int]]:
    """The next connection as a ``trio.SocketStream``, and its peer's (host, port).

    As :func:`accept_socket`, with trio's stream around the socket (which sets
    ``TCP_NODELAY`` and ``TCP_NOTSENT_LOWAT`` itself).
    """
    sock, peer = await _accept_retrying(listener, where)
    return trio.SocketStream(sock), peer


async def accept_socket(
    listener: trio.SocketListener, where: object
) -> tuple[trio.socket.SocketType, tuple[str, int]]:
    """The next connection's socket and its peer's (host, port); retries while out of descriptors.

    For a caller that takes the descriptor over (every TLS engine does): the socket
    gets the options a ``trio.SocketStream`` would set (:func:`tune`), without the
    stream object that would only be thrown away.  The address is accept()'s own, not a
    later getpeername(): a peer that has already reset still has one, and it saves a
    system call per connection.
    """
    sock, peer = await _accept_retrying(listener, where)
    tune(sock)
    return sock, peer


def tune(sock: trio.socket.SocketType) -> None:
    """What ``trio.SocketStream.__init__`` sets on a TCP socket, in the same words.

    ``TCP_NODELAY``: a handshake flight or an echo must not wait for Nagle.
    ``TCP_NOTSENT_LOWAT`` (16 KiB): "writable" means the peer is near to needing more,
    not that the kernel can buffer another megabyte.
    """
    if sock.family not in _TCP_FAMILIES:  # trio tries and ignores the failure; we skip it
        return
    # As trio: ignored if refused (a peer that reset already; a kernel without LOWAT).
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    if _NOTSENT_LOWAT is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, 2**14)


_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


async def _accept_retrying(
    listener: trio.SocketListener, where: object
) -> tuple[trio.socket.SocketType, tuple[str, int]]:
    burst = _bursts.get(listener)
    try:
        return await _accept(listener, where, burst)
    except trio.Cancelled:  # the listener stops: a burst still going is counted now
        if (burst := _bursts.get(listener)) is not None:
            burst.stopped()
        raise


async def _accept(
    listener: trio.SocketListener, where: object, burst: CapacityBurst | None
) -> tuple[trio.socket.SocketType, tuple[str, int]]:
    while True:
        try:
            sock, address = await listener.socket.accept()
        except OSError as exc:
            if exc.errno in _CLOSED_ERRNOS:
                raise trio.ClosedResourceError from None
            if exc.errno in _PEER_ERRNOS:
                continue
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            if burst is None:
                burst = _bursts[listener] = CapacityBurst(where)
            burst.failed(exc.strerror or str(exc), trio.current_time())
            await trio.sleep(CAPACITY_PAUSE)
        else:
            if burst is not None:
                burst.succeeded(trio.current_time())
            if not isinstance(address, tuple):  # AF_UNIX: a path, usually empty
                return sock, (_unix_peer(sock), 0)
            return sock, (str(address[0]), int(address[1]))


_UCRED = struct.Struct("3i")


def _unix_peer(sock: trio.socket.SocketType) -> str:
    """A UNIX peer has no address worth logging; who it is, the kernel says (SO_PEERCRED)."""
    try:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return UNIX_PEER + "unknown"
    return f"{UNIX_PEER}pid={pid},uid={uid},gid={gid}"
