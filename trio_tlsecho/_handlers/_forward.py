"""The ``forward`` handler: terminate mutual TLS and pass the plaintext on to a target.

``--handler forward --handler-option target=HOST:PORT`` (or ``target=unix:/path``)
makes the server an mTLS terminator, as ghostunnel or stunnel in server mode: each
verified client gets its own connection to the target and the bytes are copied both
ways until both sides are done.

Theory of operation
-------------------
Copying: one task per direction, each a loop of one ``receive_some`` and one
``send_all``, so at most one read's worth of bytes is in flight per direction and a
slow reader slows its writer (backpressure; TCP's buffers do the rest).  With the
socket engine, the bytes are first copied by ``splice`` (from ``_engines``): the same
copying, backpressure included, from one task for every connection, which hands back
at the first event that is not just bytes (an end, a failure) with what it had in
hand, and the copy loops carry on from there.

Ends:

* the client ends its TLS session (close_notify) -> ``shutdown(SHUT_WR)`` to the
  target (it reads EOF), and the target's answer is still copied to the client;
* the target closes (EOF) -> the session ends with close_notify once its last bytes
  are sent.  Our TLS streams cannot half-close, so anything the client sends after
  that is not delivered;
* the target resets, or cannot be reached within ``connect_timeout`` (refused,
  nothing listening, never accepting) -> :class:`UpstreamError`: a warning naming the
  target and its own counter (``tlsecho_upstream_errors``), never a traceback.  A
  target that fails before answering leaves the client a clean close (close_notify:
  nothing was cut); a reset in mid-stream closes the client without one, so that it
  can tell the cut from an end;
* the client's TLS connection breaks -> the target's connection is closed at once.

``proxy_protocol=v1`` or ``v2`` sends the target a PROXY header first, naming the
client (after an outer PROXY header from a balancer: the client the balancer named).
A v2 header also carries who the client is: PP2_TYPE_SSL (verified, with the
version, CN and cipher sub-TLVs, as HAProxy sends it) and :data:`PP2_TYPE_IDENTITY`.
"""

from __future__ import annotations

import contextlib
import math
import os

import attrs
import trio

from .._engines import Spliced, SpliceEnd, TLSStream, can_splice, splice
from .._exceptions import UpstreamError, causes
from .._net import encode_tlv, encode_v1, encode_v2, ssl_tlv
from .._tls import PeerIdentity
from ._api import Connection, Handler
from ._upstream import Upstream

#: The most one read takes, in each direction: one TLS read gathers several records up
#: to this, and a bulk transfer costs a quarter of the Python turns it would at 64 KiB.
COPY_SIZE = 262144
#: The default bound on connecting to the target (seconds).
DEFAULT_CONNECT_TIMEOUT = 5.0
PROXY_PROTOCOLS = ("none", "v1", "v2")

#: A custom TLV (the spec's range 0xE0-0xEF) with the client certificate's identity.
#: Its value is sub-TLVs in the same format (a byte of type, two of length):
#: 0x01 the certificate's SHA-256 (32 raw bytes), 0x02 its subject DN (UTF-8,
#: ``CN=a,O=b``), then 0x03 once per subject alternative name (UTF-8,
#: ``DNS:x`` / ``URI:x`` / ``IP Address:x``).
PP2_TYPE_IDENTITY = 0xE0
IDENTITY_SHA256 = 0x01
IDENTITY_SUBJECT = 0x02
IDENTITY_SAN = 0x03


@attrs.frozen
class Target:
    """Where ``forward`` connects: ``host``/``port``, or a unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> Target:
        """``HOST:PORT``, ``[V6]:PORT`` or ``unix:/path``; ValueError otherwise."""
        if text.startswith("unix:"):
            if not text[5:]:
                raise ValueError(f"bad target {text!r}: expected unix:/path")
            return cls(path=text[5:])
        host, sep, port = text.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad target {text!r}: expected HOST:PORT, [V6]:PORT or unix:/path")
        return cls(host=host, port=int(port))

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def connect(self) -> trio.SocketStream:
        # trio's SocketStream sets TCP_NODELAY: a small request is not held back.
        if self.path:
            return await trio.open_unix_socket(self.path)
        return await trio.open_tcp_stream(self.host, self.port)


def forward(
    *, target: str, connect_timeout: str | float = DEFAULT_CONNECT_TIMEOUT, proxy_protocol: str = "none"
) -> Handler:
    """The ``forward`` handler's factory: options as ``--handler-option`` gives them (strings)."""
    timeout = float(connect_timeout)
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}")
    if proxy_protocol not in PROXY_PROTOCOLS:
        known = ", ".join(PROXY_PROTOCOLS)
        raise ValueError(f"proxy_protocol must be one of {known}, not {proxy_protocol!r}")
    return Forward(Target.parse(target), timeout, proxy_protocol)


@attrs.frozen
class Forward:
    """Copies each verified connection to and from :attr:`target`."""

    target: Target
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    proxy_protocol: str = "none"

    async def __call__(self, conn: Connection) -> None:
        upstream = await self._connect()
        async with upstream:
            if self.proxy_protocol != "none":
                await _send(upstream, proxy_header(conn, self.proxy_protocol))
            await self._splice(conn.stream, upstream)

    async def _connect(self) -> Upstream:
        with trio.move_on_after(self.connect_timeout):
            try:
                return Upstream.take(await self.target.connect())
            except OSError as exc:
                raise UpstreamError(f"target {self.target}: cannot connect: {_why(exc)}") from None
        why = f"timed out after {self.connect_timeout:g}s"
        raise UpstreamError(f"target {self.target}: cannot connect: {why}")

    async def _splice(self, client: TLSStream, upstream: Upstream) -> None:
        carry = Spliced(SpliceEnd.ELSEWHERE, None, b"", b"")
        if can_splice(client):
            # The fast path (socket engine): no task per direction while only bytes move.
            carry = await splice(client, upstream.socket)  # type: ignore[arg-type]
            if carry.end is SpliceEnd.TARGET_EOF:
                return  # the target is done: so is the conversation
            if carry.end is SpliceEnd.TARGET_LOST:
                assert carry.error is not None
                await trio.aclose_forcefully(client)  # no close_notify: the answer was cut
                raise UpstreamError(f"target {self.target}: connection lost: {_why(carry.error)}")
            if carry.end is SpliceEnd.CLIENT_LOST:
                assert carry.error is not None
                raise carry.error
        lost: list[trio.BrokenResourceError] = []
        error: Exception | None = None  # stays None if the client's side cancels the copy
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._client_to_target, client, upstream, nursery.cancel_scope, lost, carry)
            error = await self._target_to_client(upstream, client, carry.to_client)
            nursery.cancel_scope.cancel()  # the target is done: so is the conversation
        if isinstance(error, UpstreamError):
            await trio.aclose_forcefully(client)  # no close_notify: the answer was cut
        if error is not None:
            raise error
        if lost:
            raise lost[0]

    async def _client_to_target(
        self,
        client: TLSStream,
        upstream: Upstream,
        done: trio.CancelScope,
        lost: list[trio.BrokenResourceError],
        carry: Spliced,
    ) -> None:
        """Copy the client's bytes to the target, after what *carry* holds for it; at
        the client's close_notify (maybe already in *carry*), end the target's input."""
        if carry.end is SpliceEnd.TARGET_STOPPED:
            return  # the target stopped reading: what it says next decides
        try:
            if carry.to_target and not await _send(upstream, carry.to_target):
                return
            if carry.end is not SpliceEnd.CLIENT_EOF:
                while data := await client.receive_some(COPY_SIZE):
                    if not await _send(upstream, data):
                        return  # the target stopped reading: what it says next decides
        except trio.BrokenResourceError as exc:  # the client is gone: so is the target's connection
            lost.append(exc)
            done.cancel()
            return
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await upstream.send_eof()

    async def _target_to_client(
        self, upstream: Upstream, client: TLSStream, first: bytes
    ) -> Exception | None:
        """Copy the target's bytes to the client, *first* first (see ``Spliced.to_client``)."""
        if first:
            try:
                await client.send_all(first)
            except trio.BrokenResourceError as exc:
                return exc
        while True:
            try:
                data = await upstream.receive_some(COPY_SIZE)
            except trio.BrokenResourceError as exc:
                return UpstreamError(f"target {self.target}: connection lost: {_why(exc)}")
            if not data:
                return None
            try:
                await client.send_all(data)
            except trio.BrokenResourceError as exc:
                return exc


async def _send(upstream: Upstream, data: bytes | bytearray) -> bool:
    try:
        await upstream.send_all(data)
    except trio.BrokenResourceError:
        return False
    return True


def _why(exc: BaseException) -> str:
    """The operating system's words for *exc* ("Connection refused"), found under trio's wrappers."""
    for cause in causes(exc):
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
    return str(exc) or type(exc).__name__


def proxy_header(conn: Connection, version: str) -> bytes:
    """The PROXY header that tells the target who is calling (``version``: v1 or v2)."""
    source, destination = conn.peer_address, _local_address(conn.stream)
    if destination is not None and (":" in source[0]) != (":" in destination[0]):
        source, destination = _as_v6(source), _as_v6(destination)
    if version == "v1":
        if destination is None:
            return b"PROXY UNKNOWN\r\n"
        return encode_v1(source, destination)
    tlvs = ssl_tlv(
        version=conn.tls_version,
        cipher=conn.cipher,
        common_name=conn.identity.common_name,
        resumed=conn.stream.session_reused,
    ) + identity_tlv(conn.identity)
    return encode_v2(source if destination else None, destination, tlvs)


def identity_tlv(identity: PeerIdentity) -> bytes:
    """:data:`PP2_TYPE_IDENTITY` for *identity*."""
    sub = encode_tlv(IDENTITY_SHA256, bytes.fromhex(identity.fingerprint_sha256))
    sub += encode_tlv(IDENTITY_SUBJECT, identity.subject.encode())
    for san in identity.sans:
        sub += encode_tlv(IDENTITY_SAN, san.encode())
    return encode_tlv(PP2_TYPE_IDENTITY, sub)


def _local_address(stream: TLSStream) -> tuple[str, int] | None:
    """The address the client connected to, where the engine's stream has a socket below it."""
    sock = getattr(stream, "socket", None)  # the socket engine's ssl.SSLSocket
    if sock is None:  # the trio engine: SSLStream over a SocketStream
        sock = getattr(getattr(getattr(stream, "transport", None), "transport_stream", None), "socket", None)
    try:
        name = sock.getsockname() if sock is not None else None
    except OSError:
        return None
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None


def _as_v6(address: tuple[str, int]) -> tuple[str, int]:
    return address if ":" in address[0] else (f"::ffff:{address[0]}", address[1])
