"""``splice`` (``_engines/_splice.py``): a socket-engine TLS stream copied to and from a
plain socket by one task, until something that is not just bytes happens.

Each test builds a real pair: a TLS client and a socket-engine server stream over
loopback TCP, and a TCP connection from the server side (the "up" socket that
``forward`` would have) to the test, which plays the target.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_tlsecho import ClientConfig, ServerConfig, TLSFiles, client_context, server_context
from trio_tlsecho._engines import Spliced, SpliceEnd, SSLSocketStream, can_splice, splice, take_socket
from trio_tlsecho._engines import _socket as socket_engine
from trio_tlsecho._engines import _splice as splice_module

from .conftest import receive_until
from .test_socket_engine import tcp_pair, tls_pair

MiB = 1 << 20

#: (server, client) contexts of the test PKI.
Contexts = tuple[ssl.SSLContext, ssl.SSLContext]


@pytest.fixture(scope="module")
def contexts(pki: Path) -> Contexts:
    return (
        server_context(ServerConfig(tls=TLSFiles.from_dir(pki, "server"))),
        client_context(ClientConfig(tls=TLSFiles.from_dir(pki, "client"))),
    )


@attrs.define
class Rig:
    client: SSLSocketStream
    server: SSLSocketStream
    #: The server's plain socket ("up") and the test's end of it (the target).
    up: socket.socket
    target: trio.SocketStream
    result: list[Spliced] = attrs.Factory(list)
    done: trio.Event = attrs.Factory(trio.Event)

    async def run_splice(self) -> None:
        self.result.append(await splice(self.server, self.up))
        self.done.set()

    async def spliced(self) -> Spliced:
        await self.done.wait()
        return self.result[0]


@asynccontextmanager
async def rig(contexts: Contexts, *, start: bool = True) -> AsyncIterator[Rig]:
    client, server = await tls_pair(*contexts)
    up_stream, target = await tcp_pair()
    assert isinstance(client, SSLSocketStream)
    assert isinstance(server, SSLSocketStream)
    up = take_socket(up_stream.socket)
    r = Rig(client, server, up, target)
    try:
        async with trio.open_nursery() as nursery:
            if start:
                nursery.start_soon(r.run_splice)
            yield r
            nursery.cancel_scope.cancel()
    finally:
        up.close()
        for stream in (client, server, target):
            await trio.aclose_forcefully(stream)


async def test_bytes_cross_both_ways_and_are_counted(contexts: Contexts) -> None:
    async with rig(contexts) as r:
        for i in range(20):
            message = f"message {i}".encode()
            await r.client.send_all(message)
            assert await receive_until(r.target, len(message)) == message
            await r.target.send_all(message.upper())
            assert await receive_until(r.client, len(message)) == message.upper()
        total = sum(len(f"message {i}") for i in range(20))
        assert (r.server.received, r.server.sent) == (total, total)


async def test_the_stream_is_claimed_while_spliced(contexts: Contexts) -> None:
    async with rig(contexts) as r:
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await r.server.receive_some(10)
        with pytest.raises(trio.BusyResourceError):
            await r.server.send_all(b"x")


async def test_a_target_that_does_not_read_stops_reading_the_client(contexts: Contexts) -> None:
    # Backpressure: the client's send blocks once the target's buffers are full and the
    # splice holds one read's worth; then everything arrives, in order.
    data = bytes(range(256)) * (32 * MiB // 256)
    async with rig(contexts) as r:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.client.send_all, data)
            await trio.testing.wait_all_tasks_blocked()
            assert r.server.received < len(data)  # not all read: held back
            got = await receive_until(r.target, len(data))
        assert got == data


async def test_a_client_that_does_not_read_stops_reading_the_target(contexts: Contexts) -> None:
    data = bytes(range(256)) * (32 * MiB // 256)
    async with rig(contexts) as r:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.target.send_all, data)
            await trio.testing.wait_all_tasks_blocked()
            assert r.server.sent < len(data)
            progress = r.server.send_progress
            got = await receive_until(r.client, len(data))
        assert got == data
        assert r.server.sent == len(data)
        assert r.server.send_progress > progress  # the idle sweep saw the slow send move


async def test_plaintext_openssl_already_holds_is_passed_on(contexts: Contexts) -> None:
    async with rig(contexts, start=False) as r:
        await r.client.send_all(b"0123456789")
        assert await r.server.receive_some(1) == b"0"  # nine bytes stay inside OpenSSL
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.run_splice)
            assert await receive_until(r.target, 9) == b"123456789"
            nursery.cancel_scope.cancel()


async def test_close_notify_ends_it_with_what_was_in_hand(contexts: Contexts) -> None:
    async with rig(contexts) as r:
        await r.client.send_all(b"last words")
        await r.client.aclose()
        spliced = await r.spliced()
        assert (spliced.end, spliced.error) == (SpliceEnd.CLIENT_EOF, None)
        assert await receive_until(r.target, 10) == b"last words"
        # The stream is free again and still usable for what the caller does next.
        assert await r.server.receive_some(10) == b""
        await r.server.send_all(b"answer")  # our side may still speak (half-close)


async def test_the_targets_eof_ends_it(contexts: Contexts) -> None:
    async with rig(contexts) as r:
        await r.target.send_all(b"bye")
        await r.target.send_eof()
        spliced = await r.spliced()
        assert (spliced.end, spliced.to_client) == (SpliceEnd.TARGET_EOF, b"")
        assert await receive_until(r.client, 3) == b"bye"


async def test_a_reset_target_ends_it_with_the_error(contexts: Contexts) -> None:
    async with rig(contexts) as r:
        await trio.testing.wait_all_tasks_blocked()
        r.target.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await r.target.aclose()  # RST
        spliced = await r.spliced()
        assert spliced.end is SpliceEnd.TARGET_LOST
        assert isinstance(spliced.error, ConnectionResetError)


async def test_a_client_gone_ends_it_with_a_broken_stream(contexts: Contexts) -> None:
    async with rig(contexts) as r:
        await trio.testing.wait_all_tasks_blocked()
        r.client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(r.client)  # RST, no close_notify
        spliced = await r.spliced()
        assert spliced.end is SpliceEnd.CLIENT_LOST
        assert isinstance(spliced.error, trio.BrokenResourceError)
        with pytest.raises(trio.BrokenResourceError):
            await r.server.receive_some(1)


async def test_cancelled_it_leaves_the_loop_and_the_stream_usable(contexts: Contexts) -> None:
    async with rig(contexts, start=False) as r:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_blocked, scope)
                await splice(r.server, r.up)
        assert scope.cancelled_caught
        loop = splice_module._LOOP.get()
        assert not loop.pairs
        await r.client.send_all(b"after")
        assert await receive_until(r.server, 5) == b"after"


async def test_a_bug_in_a_step_is_raised_in_the_caller(
    contexts: Contexts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(splice_module._Pair, "_read_target", broken)
    async with rig(contexts, start=False) as r:
        await r.target.send_all(b"x")
        with pytest.raises(RuntimeError, match="a bug"):
            await splice(r.server, r.up)


async def test_only_socket_engine_streams_can_be_spliced(contexts: Contexts) -> None:
    client, server = await tls_pair(*contexts, server="trio")
    assert not can_splice(server)
    assert can_splice(client)
    for stream in (client, server):
        await trio.aclose_forcefully(stream)


async def _cancel_when_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


class RefusingUp:
    """The plain socket, but every send fails as one to a peer that stopped reading."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_into(self, buffer: memoryview, n: int) -> int:
        return self.sock.recv_into(buffer, n)

    def send(self, data: memoryview) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_a_target_that_stops_reading_ends_it_for_the_copy_loops_to_decide(contexts: Contexts) -> None:
    async with rig(contexts, start=False) as r:
        await r.client.send_all(b"unwanted")
        spliced = await splice(r.server, RefusingUp(r.up))  # type: ignore[arg-type]
        assert spliced.end is SpliceEnd.TARGET_STOPPED
        assert isinstance(spliced.error, BrokenPipeError)
        assert spliced.to_target == b""  # nothing more goes to a target that stopped reading


async def test_a_bug_half_way_through_a_record_breaks_the_stream(
    contexts: Contexts, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(splice_module._Pair, "_flush_client", broken)
    data = bytes(32 * MiB)
    async with rig(contexts, start=False) as r:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.target.send_all, data)
            nursery.start_soon(_drain_when_blocked, r.client)
            with pytest.raises(RuntimeError, match="a bug"):
                await splice(r.server, r.up)
            nursery.cancel_scope.cancel()
        # Broken, so that closing it sends no close_notify after a cut record.
        assert r.server._state is socket_engine._BROKEN


async def _drain_when_blocked(stream: SSLSocketStream) -> None:
    # Once the splice holds a record OpenSSL could not finish writing, the client reads
    # (all it can: a small read would not reopen the TCP window), the socket becomes
    # writable and the (broken) flush runs.
    await trio.testing.wait_all_tasks_blocked()
    while await stream.receive_some(262144):
        pass
