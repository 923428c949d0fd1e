"""The default engine's transport: ``trio.SSLStream`` over :class:`RawSocketStream`.

It takes no checkpoints of its own and hands ``SSLStream`` a view of one receive
buffer shared by every stream of the run (see its module): trio's own conformance
checks for a two-way stream, run on ``SSLStream`` over it on both ends, check that
the pair still checkpoints, cancels, closes and moves every byte as a trio stream must,
with many streams receiving into the one buffer at once.
"""

from __future__ import annotations

import ssl

import trio
import trio.testing
import trustme

from trio_tlsecho._engines import TrioTLSStream
from trio_tlsecho._engines._raw import RawSocketStream


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


SERVER, CLIENT = _contexts()


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    return client, server


async def _ssl_pair() -> tuple[trio.SSLStream[RawSocketStream], trio.SSLStream[RawSocketStream]]:
    client_tcp, server_tcp = await _tcp_pair()
    client = trio.SSLStream(RawSocketStream.take(client_tcp), CLIENT, server_hostname="localhost")
    server = trio.SSLStream(RawSocketStream.take(server_tcp), SERVER, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def test_sslstream_over_it_passes_trios_stream_checks() -> None:
    await trio.testing.check_two_way_stream(_ssl_pair, None)


async def test_many_streams_share_the_receive_buffer_without_mixing_bytes() -> None:
    # 32 connections at once, each echoing its own pattern in pieces up to 200 KiB:
    # a byte read into the shared buffer by one stream and overwritten by another
    # before SSLStream copied it would show up as a mismatch.
    async def one(index: int) -> None:
        client, server = await _ssl_pair()
        payload = bytes([index]) * 50_000 + bytes(range(256)) * (index * 500 + 1)

        async def echo() -> None:
            while data := await server.receive_some():
                await server.send_all(data)
            await server.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            nursery.start_soon(client.send_all, payload)
            got = bytearray()
            while len(got) < len(payload):
                got += await client.receive_some()
            assert got == payload
            await client.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(32):
                nursery.start_soon(one, index)


async def test_the_trio_engine_runs_sslstream_over_it() -> None:
    client_tcp, server_tcp = await _tcp_pair()
    stream = TrioTLSStream.server(server_tcp, SERVER)
    assert isinstance(stream.transport.transport_stream, RawSocketStream)
    assert server_tcp.socket.fileno() == -1  # the fd moved: one owner at a time
    await stream.aclose()
    await client_tcp.aclose()
