"""The load clients' transport: a non-blocking ``ssl.SSLSocket`` driven by trio's I/O
waits (:class:`ClientConnection`, which says why), and where it connects (:class:`Target`)."""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .._exceptions import ClientError
from .._net import Address, UnixAddress, encode_v1, encode_v2
from ._config import LoadConfig

#: What a non-blocking OpenSSL call raises when it must wait for the socket.
_WANTS = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _wait_for(want: ssl.SSLError) -> Callable[[socket.socket], Awaitable[None]]:
    """The trio wait that answers *want*: OpenSSL may need to write for a read, and
    the reverse, so it is what was raised that says which, not the call.

    A function to call, not a coroutine to await: no extra await where a call waits.
    """
    readable = isinstance(want, ssl.SSLWantReadError)
    return trio.lowlevel.wait_readable if readable else trio.lowlevel.wait_writable


class ClientConnection:
    """One client connection: a non-blocking ``ssl.SSLSocket`` driven by trio's I/O waits.

    Why not ``trio.SSLStream`` (``open_client``)?  A load generator must not be the
    bottleneck, and on this project's 2-core machine one worker using ``SSLStream``
    spent ~52 µs of CPU per small round trip and saturated its core at ~20,000 round
    trips/s; driving OpenSSL's socket directly costs ~27 µs (benchmarks/README.md).
    The TLS policy is still the one :func:`client_context` builds.

    One task may send while another receives (large echoes); each call is atomic with
    respect to the event loop, and partial writes are retried with the same bytes.
    """

    __slots__ = ("_sock", "waits")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        #: How often a call had to wait for the socket (so callers know they yielded).
        self.waits = 0

    @classmethod
    async def open(
        cls, target: Target, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
    ) -> ClientConnection:
        raw = socket.socket(target.family, socket.SOCK_STREAM)
        try:
            await _connect(raw, target)
            if target.proxy_protocol is not None:
                _send_proxy_header(raw, target.proxy_protocol)
            sock = ctx.wrap_socket(
                raw, server_hostname=target.server_hostname, do_handshake_on_connect=False, session=session
            )
        except BaseException:
            raw.close()
            raise
        try:
            while True:
                try:
                    sock.do_handshake()
                    return cls(sock)
                except _WANTS as want:
                    await _wait_for(want)(sock)
        except BaseException:
            sock.close()
            raise

    async def send_all(self, data: memoryview) -> None:
        sock, sent, n = self._sock, 0, len(data)
        while sent < n:
            try:
                sent += sock.send(data[sent:])
            except _WANTS as want:
                self.waits += 1
                await _wait_for(want)(sock)

    async def receive_into(self, buffer: memoryview, *, reply: bool = False) -> int:
        """Read at least one byte into *buffer*; 0 means the server closed the connection.

        *reply*: the first read of a reply just asked for, which waits for the socket
        first.  Reading at once could only say EAGAIN, a failed recv and an exception
        on every exchange (unless OpenSSL already holds plaintext, which is asked
        first).  Waiting first: +21 % round trips/s per loadgen worker
        (benchmarks/README.md).
        """
        sock = self._sock
        if reply and not sock.pending():
            self.waits += 1
            await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                return sock.recv_into(buffer)
            except _WANTS as want:
                self.waits += 1
                await _wait_for(want)(sock)

    def pending(self) -> int:
        """Plaintext bytes OpenSSL already decrypted and holds (one C call, no syscall)."""
        return self._sock.pending()

    def anything_more(self, buffer: memoryview) -> bool:
        """Whether the server sent something that has arrived but was not read.

        One non-blocking read (into *buffer*, which it may overwrite): a syscall, so
        only worth it before closing, when nothing later could find those bytes.
        Plaintext only; a TLS 1.3 session ticket is taken in and is not "more".
        """
        try:
            return self._sock.recv_into(buffer, 1) > 0
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            # The echo is complete and verified; how the server treats a connection
            # we are about to close is no part of this exchange's outcome.
            return False

    @property
    def ssl_socket(self) -> ssl.SSLSocket:
        """The socket itself, for :class:`._exchanger.ExchangeLoop`, which drives it from
        its own ``epoll`` set."""
        return self._sock

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session to resume later (with TLS 1.3, known once a ticket was read)."""
        return self._sock.session

    @property
    def resumed(self) -> bool:
        return bool(self._sock.session_reused)

    def close(self) -> None:
        """Close now, with a close_notify if it can go out without waiting."""
        try:
            self._sock.unwrap()  # sends close_notify; would then wait for the server's
        except (OSError, ValueError):
            pass
        finally:
            self._sock.close()

    def abort(self) -> None:
        self._sock.close()


def _send_proxy_header(raw: socket.socket, version: int) -> None:
    encode = encode_v1 if version == 1 else encode_v2
    header = encode(raw.getsockname()[:2], raw.getpeername()[:2])
    # A fresh connection's send buffer is empty: the header (at most 108 bytes) fits.
    if raw.send(header) != len(header):
        raise OSError(errno.EAGAIN, "could not send the PROXY header at once")


async def _connect(raw: socket.socket, target: Target) -> None:
    raw.setblocking(False)
    if target.family != socket.AF_UNIX:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = raw.connect_ex(target.sockaddr)
    if err == errno.EINPROGRESS:
        await trio.lowlevel.wait_writable(raw)
        err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        # OSError(errno, ...) is ConnectionRefusedError for ECONNREFUSED, and so on.
        raise OSError(err, f"connecting to {target.address}: {os.strerror(err)}")


@attrs.frozen
class Target:
    """Where the clients connect, resolved once (a load generator has no use for happy eyeballs)."""

    address: Address | UnixAddress
    family: socket.AddressFamily
    #: What ``connect`` takes: ``(host, port, ...)``, or a UNIX socket's path.
    sockaddr: tuple[Any, ...] | str
    server_hostname: str
    proxy_protocol: int | None = None

    @classmethod
    async def resolve(cls, config: LoadConfig) -> Target:
        address = config.address
        if isinstance(address, UnixAddress):
            # No host name to check: the development server's certificate names localhost.
            hostname = config.client.server_hostname or "localhost"
            return cls(address, socket.AF_UNIX, address.path, hostname)
        try:
            infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ClientError(f"cannot connect to {address}: unknown host ({exc.strerror})") from None
        family, _type, _proto, _name, sockaddr = infos[0]
        hostname = config.client.server_hostname or address.host
        return cls(address, family, tuple(sockaddr), hostname, config.proxy_protocol)
