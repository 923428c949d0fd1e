"""accept() that keeps the peer's address and survives running out of descriptors."""

from __future__ import annotations

import errno
import logging
import socket
import struct

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


async def accept(listener: trio.SocketListener, where: object) -> tuple[trio.SocketStream, tuple[str, int]]:
    """The next connection and its peer's (host, port); retries while out of descriptors.

    The address is accept()'s own, not a later getpeername(): a peer that has already
    reset still has one, and it saves a system call per connection.
    """
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
            log.error("%s: accept failed: %s; pausing %d ms", where, exc.strerror, CAPACITY_PAUSE * 1000)
            await trio.sleep(CAPACITY_PAUSE)
        else:
            if not isinstance(address, tuple):  # AF_UNIX: a path, usually empty
                return trio.SocketStream(sock), (_unix_peer(sock), 0)
            return trio.SocketStream(sock), (str(address[0]), int(address[1]))


_UCRED = struct.Struct("3i")


def _unix_peer(sock: trio.socket.SocketType) -> str:
    """A UNIX peer has no address worth logging; who it is, the kernel says (SO_PEERCRED)."""
    try:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return UNIX_PEER + "unknown"
    return f"{UNIX_PEER}pid={pid},uid={uid},gid={gid}"
