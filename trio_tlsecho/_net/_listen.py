"""Listening sockets: bound as trio does, or with SO_REUSEPORT for --workers."""

from __future__ import annotations

import errno
import socket

import trio

from .._exceptions import ListenError
from ._address import Address


async def open_listeners(address: Address, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    try:
        if reuse_port:
            return await open_reuse_port_listeners(address)
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {address}: unknown host ({exc.strerror})") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges)"
        raise ListenError(f"cannot listen on {address}: {reason}") from None


# Accept-queue length asked for; the kernel caps it at net.core.somaxconn.
_BACKLOG = 4096


async def open_reuse_port_listeners(address: Address) -> list[trio.SocketListener]:
    """Like ``trio.open_tcp_listeners``, with SO_REUSEPORT set before ``bind``.

    trio's helper sets only SO_REUSEADDR; sharing a port between processes needs the
    option on every socket of the group, set before ``bind``.
    """
    return [trio.SocketListener(sock) for sock in await bind_reuse_port(address, listen=True)]


async def bind_reuse_port(
    address: Address, *, listen: bool, reuse_port: bool = True
) -> list[trio.socket.SocketType]:
    """Sockets bound with SO_REUSEPORT to every address *address* resolves to.

    With ``listen=False`` a socket only holds the port (a supervisor's reservation):
    it never joins the accept group, so the kernel hands it no connections.  With
    ``reuse_port=False`` the bind fails where anything holds the port already.
    """
    infos = await trio.socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    bound: list[trio.socket.SocketType] = []
    unsupported: OSError | None = None
    try:
        for family, type_, proto, _, sockaddr in infos:
            try:
                sock = trio.socket.socket(family, type_, proto)
            except OSError as exc:
                # A name can resolve to ::1 on a host without IPv6: skip that family,
                # as trio.open_tcp_listeners does; fail only if no family is left.
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
                unsupported = exc
                continue
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(sockaddr)
            if listen:
                sock.listen(_BACKLOG)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    if not bound and unsupported is not None:
        raise unsupported
    return bound


def bound_address(listener: trio.SocketListener) -> Address:
    sockname = listener.socket.getsockname()
    return Address(str(sockname[0]), int(sockname[1]))
