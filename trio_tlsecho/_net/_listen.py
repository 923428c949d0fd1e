"""Listening sockets: bound as trio does, with SO_REUSEPORT for --workers, on a UNIX path,
or handed over by systemd (socket activation) or a parent process (an inherited descriptor).

systemd's protocol (``sd_listen_fds(3)``): ``LISTEN_PID`` is the process the sockets are
for, ``LISTEN_FDS`` how many there are, from descriptor 3 on, and ``LISTEN_FDNAMES`` their
``FileDescriptorName=``s, colon-separated.  A socket taken over is not re-bound and is
never unlinked: its owner (systemd) keeps it, and clients queue in it across restarts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

import trio

from .._exceptions import ListenError
from ._address import Address, InheritedFd, ListenAddress, ListenSpec, SystemdSockets, UnixAddress

#: sd_listen_fds(3): the first passed descriptor.
SD_LISTEN_FDS_START = 3


async def open_listeners(spec: ListenSpec, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    """Listeners for *spec*: bound now (an address, a UNIX path) or taken over (systemd, fd://N)."""
    if isinstance(spec, (SystemdSockets, InheritedFd)):
        return [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in inherited_sockets(spec)]
    try:
        if isinstance(spec, UnixAddress):
            return [trio.SocketListener(await bind_unix(spec))]
        if reuse_port:
            return await open_reuse_port_listeners(spec)
        return await trio.open_tcp_listeners(spec.port, host=spec.host)
    except OSError as exc:
        raise listen_error(spec, exc) from None


def listen_error(spec: Address | UnixAddress, exc: OSError) -> ListenError:
    """The one wording of "cannot listen", whichever process (one, or a supervisor) bound it."""
    if isinstance(exc, socket.gaierror):
        return ListenError(f"cannot listen on {spec}: unknown host ({exc.strerror})")
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use"
    elif exc.errno == errno.EACCES:
        privileged = "" if isinstance(spec, UnixAddress) else " (ports below 1024 need privileges)"
        reason = "permission denied" + privileged
    return ListenError(f"cannot listen on {spec}: {reason}")


async def bind_unix(address: UnixAddress) -> trio.socket.SocketType:
    """A listening UNIX stream socket at *address*, replacing a stale socket file.

    A socket file nobody accepts on is what a server that was killed leaves behind
    (gunicorn and uvicorn replace it too); a live one, or a file that is not a
    socket, is somebody's: "address already in use".
    """
    await _remove_stale(address.path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(address.path)
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def _remove_stale(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            await probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def remove_unix_socket(address: UnixAddress) -> None:
    """Remove the socket file a listener of ours bound (at shutdown, as nginx does)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address.path)


def inherited_sockets(spec: SystemdSockets | InheritedFd) -> list[socket.socket]:
    """The listening sockets *spec* names, taken over (closed with their listener)."""
    fds = [spec.fd] if isinstance(spec, InheritedFd) else systemd_fds(spec.name)
    sockets = []
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ListenError(f"cannot listen on {spec}: descriptor {fd}: {exc.strerror or exc}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ListenError(f"cannot listen on {spec}: descriptor {fd} is not a listening stream socket")
        # Passed without close-on-exec; nothing we start should hold the port open.
        sock.set_inheritable(False)
        sockets.append(sock)
    return sockets


def systemd_fds(name: str | None) -> list[int]:
    """The descriptors systemd passed this process (named *name*, if given)."""
    count = os.environ.get("LISTEN_FDS")
    pid = os.environ.get("LISTEN_PID")
    where = "systemd" if name is None else f"systemd:{name}"
    if not count or not count.isdigit() or int(count) == 0:
        raise ListenError(
            f"cannot listen on {where}: systemd passed no sockets (LISTEN_FDS is not set: start this"
            " from a .socket unit, or with systemd-socket-activate)"
        )
    if pid != str(os.getpid()):
        raise ListenError(f"cannot listen on {where}: the sockets are for process {pid}, not this one")
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))
    if name is None:
        return list(fds)
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    named = [fd for fd, fd_name in zip(fds, names, strict=False) if fd_name == name]
    if not named:
        known = ", ".join(sorted(set(names) - {""}))
        hint = f"names: {known}" if known else f"name one with FileDescriptorName={name} in the .socket unit"
        raise ListenError(f"cannot listen on {where}: systemd passed no socket of that name ({hint})")
    return named


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


def bound_address(listener: trio.SocketListener) -> ListenAddress:
    sockname = listener.socket.getsockname()
    if listener.socket.family == socket.AF_UNIX:
        # An abstract name starts with a NUL byte; a path is text.
        return UnixAddress(sockname if isinstance(sockname, str) else "@" + sockname[1:].decode())
    return Address(str(sockname[0]), int(sockname[1]))
