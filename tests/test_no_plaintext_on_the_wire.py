"""No plaintext crosses the network: a recording TCP proxy between client and server.

The same proxy is used twice: in front of our mTLS echo server, where a known
plaintext must never show up in the recorded bytes in either direction, and in
front of a plain TCP echo, where it must -- which proves the recorder would
have seen it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl

import attrs
import pytest
import trio

from trio_tlsecho import Address, ClientConfig, client_context, open_client

from .conftest import receive_until

#: Distinctive and absent from every certificate the server or client sends.
MARKER = b"wire-secret:7d1f0c4e-plaintext-that-must-never-leak"
HANG = 60


@attrs.define
class Recording:
    """Every byte the proxy carried, per direction."""

    to_server: bytearray = attrs.Factory(bytearray)
    to_client: bytearray = attrs.Factory(bytearray)
    connections: int = 0


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, record: bytearray) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while chunk := await source.receive_some(65536):
            record += chunk
            await sink.send_all(chunk)
        # Pass the half-close on: TLS close_notify and echo-until-EOF both rely on it.
        await sink.send_eof()


async def start_recording_proxy(nursery: trio.Nursery, upstream: Address) -> tuple[Address, Recording]:
    recording = Recording()

    async def relay(client: trio.SocketStream) -> None:
        recording.connections += 1
        upstream_stream = await trio.open_tcp_stream(upstream.host, upstream.port)
        async with client, upstream_stream, trio.open_nursery() as pumps:
            pumps.start_soon(_pump, client, upstream_stream, recording.to_server)
            pumps.start_soon(_pump, upstream_stream, client, recording.to_client)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return Address("127.0.0.1", port), recording


async def start_plain_echo(nursery: trio.Nursery) -> Address:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return Address("127.0.0.1", listeners[0].socket.getsockname()[1])


def leaked_pieces(recorded: bytes) -> list[bytes]:
    """Every 12-byte slice of the marker that appears in *recorded* (12 bytes of
    ciphertext matching by chance: about 2**-96 per position)."""
    return [MARKER[i : i + 12] for i in range(len(MARKER) - 11) if MARKER[i : i + 12] in recorded]


async def exchange(stream: trio.abc.Stream, data: bytes) -> bytes:
    """Send *data* while reading its echo (an echo larger than the socket buffers would
    otherwise deadlock)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, data)
        with trio.fail_after(HANG):
            got = await receive_until(stream, len(data))
    return got


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")]
)
async def test_marker_never_crosses_the_wire_in_clear(
    nursery: trio.Nursery, server: Address, client_config: ClientConfig, version: ssl.TLSVersion, name: str
) -> None:
    proxy, recording = await start_recording_proxy(nursery, server)
    ctx = client_context(client_config)
    ctx.maximum_version = version
    stream = await open_client(proxy, client_config, ssl_context=ctx)
    assert stream.version() == name
    # One large message (many full records), then the marker alone and split in small
    # writes (one short record each).
    payload = os.urandom(1000) + MARKER * 400 + os.urandom(1000)
    for data in (payload, MARKER, MARKER[:7], MARKER[7:], MARKER):
        assert await exchange(stream, data) == data
    await stream.aclose()

    assert recording.connections == 1
    for recorded in (recording.to_server, recording.to_client):
        # The proxy really carried the conversation, as TLS records...
        assert len(recorded) > len(payload)
        assert recorded[:1] == b"\x16"  # a handshake record first
        # ... and not a recognisable piece of the plaintext.
        assert MARKER not in recorded
        assert leaked_pieces(recorded) == []


async def test_same_proxy_sees_the_marker_without_tls(nursery: trio.Nursery) -> None:
    echo_address = await start_plain_echo(nursery)
    proxy, recording = await start_recording_proxy(nursery, echo_address)
    payload = os.urandom(1000) + MARKER * 400 + os.urandom(1000)
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:
        for data in (payload, MARKER):
            assert await exchange(stream, data) == data
    got = payload + MARKER
    for recorded in (recording.to_server, recording.to_client):
        assert bytes(recorded) == got
        assert MARKER in recorded
        assert len(leaked_pieces(recorded)) == len(MARKER) - 11
