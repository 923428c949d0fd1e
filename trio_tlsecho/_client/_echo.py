"""The client side: open a verified mutual-TLS stream, and the one-shot echo check.

With TLS 1.3 the client finishes its handshake before the server has looked at
the client certificate, so a *rejected* certificate shows up only on the first
read after the handshake.  ``echo_once`` therefore treats any TLS failure during
the exchange the same as one during the handshake: one line saying who objected.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import attrs
import trio

from .._config import ClientConfig
from .._exceptions import ClientError, EchoMismatchError, connect_failure
from .._handlers import RECEIVE_SIZE
from .._net import Address, UnixAddress
from .._tls import PeerIdentity, client_context, describe_tls_error, peer_identity

# TLS handshake message type (RFC 8446 4.) and record content type: a server that
# wants our certificate sends CertificateRequest(13) in a handshake(22) record.
_HANDSHAKE = 22
_CERTIFICATE_REQUEST = 13
_CLOSE_TIMEOUT = 1.0
# Said where the reply suggests a server that is not an echo at all.
_NOT_AN_ECHO = " (not an echo server? client --expect any shows any reply)"


async def open_client(
    address: Address | UnixAddress,
    config: ClientConfig,
    *,
    ssl_context: ssl.SSLContext | None = None,
    proxy_header: bytes | None = None,
) -> trio.SSLStream[trio.SocketStream]:
    """Connect, complete the handshake and return the stream; the caller closes it.

    Pass *ssl_context* (from :func:`client_context`) to reuse one across many
    connections, as a load generator should; otherwise one is built from *config*.
    *proxy_header* (see ``encode_v1``/``encode_v2``) is sent before the handshake, as
    a load balancer speaking the PROXY protocol would.
    """
    ctx = ssl_context if ssl_context is not None else client_context(config)
    try:
        if isinstance(address, UnixAddress):
            tcp = await trio.open_unix_socket(address.path)
        else:
            tcp = await trio.open_tcp_stream(address.host, address.port)
    except OSError as exc:
        raise ClientError(f"cannot connect to {address}: {connect_failure(exc)}") from exc
    if proxy_header:
        try:
            await tcp.send_all(proxy_header)
        except trio.BrokenResourceError as exc:
            await tcp.aclose()
            raise ClientError(f"{address}: connection lost sending the PROXY header") from exc
    # A UNIX socket has no host name to check: the development server's is localhost.
    host = "localhost" if isinstance(address, UnixAddress) else address.host
    stream = trio.SSLStream(tcp, ctx, server_hostname=config.server_hostname or host)
    try:
        with trio.fail_after(config.handshake_timeout):
            await stream.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise ClientError(
            f"TLS handshake with {address} timed out after {config.handshake_timeout:g}s"
        ) from None
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise ClientError(f"TLS handshake with {address} failed: {describe_tls_error(exc)}") from exc
    return stream


@attrs.frozen
class EchoResult:
    """What one verified echo exchange saw."""

    address: Address | UnixAddress
    tls_version: str
    cipher: str
    server: PeerIdentity
    #: Whether the server asked for our certificate (mutual TLS); ``None`` if unknown.
    mutual: bool | None
    sent: int
    received: int
    handshake_seconds: float
    echo_seconds: float


async def echo_once(
    address: Address | UnixAddress,
    config: ClientConfig,
    payload: bytes,
    *,
    timeout: float = 30.0,
    proxy_header: bytes | None = None,
) -> EchoResult:
    """Send *payload*, read back exactly as many bytes, and check them byte for byte.

    Raises :class:`ClientError` (or :class:`EchoMismatchError`) with one line on failure.
    """
    ctx = client_context(config)
    requested: list[bool] = []
    _watch_certificate_request(ctx, requested)
    t0 = time.perf_counter()
    stream = await open_client(address, config, ssl_context=ctx, proxy_header=proxy_header)
    t1 = time.perf_counter()
    received = bytearray()
    try:
        server = peer_identity(stream)
        assert server is not None  # PROTOCOL_TLS_CLIENT verifies the server, always
        cipher = stream.cipher()
        version = str(stream.version())
        try:
            with trio.fail_after(timeout):
                await _exchange(stream, payload, received)
        except trio.TooSlowError:
            raise ClientError(
                f"{address}: no complete echo within {timeout:g}s"
                f" ({len(received)} of {len(payload)} bytes back)" + ("" if received else _NOT_AN_ECHO)
            ) from None
        except trio.BrokenResourceError as exc:
            raise ClientError(f"{address}: TLS connection failed: {describe_tls_error(exc)}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    # A clean close sends close_notify, so the server sees a finished conversation,
    # not a dropped one.  Bounded: a server that stopped reading must not hang us.
    with trio.move_on_after(_CLOSE_TIMEOUT):
        await stream.aclose()
    t2 = time.perf_counter()
    if len(received) < len(payload):
        raise ClientError(
            f"{address}: short echo: server closed after {len(received)} of {len(payload)} bytes"
        )
    if received != payload:
        at = next((i for i, (a, b) in enumerate(zip(received, payload, strict=False)) if a != b), None)
        if at is None:  # every byte we sent came back, and more after it
            raise EchoMismatchError(
                f"{address}: echo longer than what was sent: {len(received)} bytes for {len(payload)}"
                + _NOT_AN_ECHO
            )
        hint = _NOT_AN_ECHO if at == 0 else ""  # later: it began as an echo, a faulty one
        raise EchoMismatchError(f"{address}: echo differs from what was sent at byte {at}{hint}")
    return EchoResult(
        address=address,
        tls_version=version,
        cipher=cipher[0] if cipher else "?",
        server=server,
        mutual=bool(requested) if _CAN_WATCH else None,
        sent=len(payload),
        received=len(received),
        handshake_seconds=t1 - t0,
        echo_seconds=t2 - t1,
    )


async def _exchange(stream: trio.SSLStream[trio.SocketStream], payload: bytes, into: bytearray) -> None:
    # Send and receive at once: an echo larger than the socket buffers would
    # otherwise deadlock, each side blocked writing to the other.
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            while len(into) < len(payload):
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:  # closed early: stop the sender too
                    nursery.cancel_scope.cancel()
                    break
                into += chunk
    except* trio.BrokenResourceError as group:
        # Sender and receiver often both fail; the second sees only "stream broken".
        # Report the one that carries the cause (an alert, a reset).
        causes = [e for e in group.exceptions if e.__cause__ is not None]
        raise (causes or list(group.exceptions))[0]  # noqa: B904 - keep its __cause__


# CPython's SSLContext has a (private, but long-standing since 3.8) message hook; it
# is the only way to see whether the server asked for our certificate.  If it ever
# goes away we report "unknown" rather than guess.
_CAN_WATCH = hasattr(ssl.SSLContext, "_msg_callback")


def _watch_certificate_request(ctx: ssl.SSLContext, seen: list[bool]) -> None:
    if not _CAN_WATCH:
        return

    def callback(
        _conn: Any, direction: str, _version: Any, content_type: int, msg_type: int, _data: Any
    ) -> None:
        if direction == "read" and content_type == _HANDSHAKE and msg_type == _CERTIFICATE_REQUEST:
            seen.append(True)

    setattr(ctx, "_msg_callback", callback)  # noqa: B010 - private attribute, see above
