"""The socket engine (``_engines/_socket.py``, SSLSocketStream): trio's generic stream
checks, then the TLS edge cases one by one, some beside trio's SSLStream (the trio engine).

Every pair is a real loopback TCP connection with the test PKI's contexts; a
relay between the two sides splits TLS records where a test needs a partial one.
"""

from __future__ import annotations

import array
import errno
import gc
import os
import random
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import trio
import trio.testing

from trio_tlsecho import ClientConfig, ServerConfig, TLSFiles, client_context, server_context
from trio_tlsecho._engines import SEND_PIECE, SSLSocketStream, TrioTLSStream, open_ssl_socket_stream
from trio_tlsecho._engines._socket import _READABLE
from trio_tlsecho._tls import describe_tls_error
from trio_tlsecho._tls._sslio import _PublicIO

from .conftest import receive_until
from .processes import Lines
from .tools import require_tool

Kind = Literal["engine", "trio"]
AnyStream = SSLSocketStream | trio.SSLStream[Any]

MiB = 1 << 20


@pytest.fixture(scope="module")
def server_ctx(pki: Path) -> ssl.SSLContext:
    return server_context(ServerConfig(tls=TLSFiles.from_dir(pki, "server")))


@pytest.fixture(scope="module")
def client_ctx(pki: Path) -> ssl.SSLContext:
    return client_context(ClientConfig(tls=TLSFiles.from_dir(pki, "client")))


@pytest.fixture(scope="module")
def client_ctx12(pki: Path) -> ssl.SSLContext:
    ctx = client_context(ClientConfig(tls=TLSFiles.from_dir(pki, "client")))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def tcp_pair(bufsize: int | None = None) -> tuple[trio.SocketStream, trio.SocketStream]:
    """(client, server) TCP streams over 127.0.0.1; *bufsize* pins both kernel buffers."""
    listener = trio.socket.socket()
    client = trio.socket.socket()
    try:
        for sock in (listener, client):
            if bufsize is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    except BaseException:
        client.close()
        raise
    finally:
        listener.close()
    return trio.SocketStream(client), trio.SocketStream(server)


def wrap(tcp: trio.SocketStream, ctx: ssl.SSLContext, kind: Kind, *, server_side: bool) -> AnyStream:
    hostname = None if server_side else "localhost"
    if kind == "engine":
        return SSLSocketStream.from_socket_stream(tcp, ctx, server_side=server_side, server_hostname=hostname)
    return trio.SSLStream(tcp, ctx, server_side=server_side, server_hostname=hostname)


async def handshake_both(*streams: AnyStream) -> None:
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(stream.do_handshake)


async def tls_pair(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    client: Kind = "engine",
    server: Kind = "engine",
    handshake: bool = True,
    bufsize: int | None = None,
) -> tuple[AnyStream, AnyStream]:
    """(client, server) TLS streams, handshaken unless told otherwise."""
    client_tcp, server_tcp = await tcp_pair(bufsize)
    c = wrap(client_tcp, client_ctx, client, server_side=False)
    s = wrap(server_tcp, server_ctx, server, server_side=True)
    if handshake:
        try:
            await handshake_both(c, s)
        except BaseException:
            await trio.aclose_forcefully(c)
            await trio.aclose_forcefully(s)
            raise
    return c, s


async def engine_pair(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, **kwargs: Any
) -> tuple[SSLSocketStream, SSLSocketStream]:
    c, s = await tls_pair(server_ctx, client_ctx, **kwargs)
    assert isinstance(c, SSLSocketStream)
    assert isinstance(s, SSLSocketStream)
    return c, s


def causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


# ---------------------------------------------------------------- trio's generic checks


@pytest.mark.parametrize(
    ("client", "server"),
    [("engine", "engine"), ("engine", "trio"), ("trio", "engine")],
)
@pytest.mark.parametrize("version", ["1.3", "1.2"])
async def test_two_way_stream(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    client_ctx12: ssl.SSLContext,
    client: Kind,
    server: Kind,
    version: str,
) -> None:
    ctx = client_ctx if version == "1.3" else client_ctx12

    async def maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        c, s = await tls_pair(server_ctx, ctx, client=client, server=server)
        assert c.version() == f"TLSv{version}"
        return c, s

    await trio.testing.check_two_way_stream(maker, None)


async def test_two_way_stream_lazy_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """The first send/receive does the handshake when nobody called do_handshake."""

    async def maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        return await tls_pair(server_ctx, client_ctx, handshake=False)

    await trio.testing.check_two_way_stream(maker, None)


async def test_two_way_stream_through_public_methods(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """The fallback for an SSLSocket without the C object (``_sslobj``) is a stream too."""

    async def maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        c, s = await engine_pair(server_ctx, client_ctx)
        for stream in (c, s):
            stream._io = _PublicIO(stream._sock)
        return c, s

    await trio.testing.check_two_way_stream(maker, None)


async def test_one_way_stream(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    async def maker() -> tuple[trio.abc.SendStream, trio.abc.ReceiveStream]:
        return await tls_pair(server_ctx, client_ctx)

    await trio.testing.check_one_way_stream(maker, None)


# ---------------------------------------------------------------- identity and ownership


async def test_handshake_details(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    c, s = await engine_pair(server_ctx, client_ctx)
    async with c, s:
        assert s.server_side
        assert not c.server_side
        assert s.version() == c.version() == "TLSv1.3"
        assert s.cipher() == c.cipher()
        assert s.selected_alpn_protocol() is None
        assert not s.session_reused
        assert s.getpeercert(binary_form=True)
        subject = dict(rdn[0] for rdn in s.getpeercert()["subject"])
        assert subject["commonName"] == "client"
        assert s.socket.getpeername() == c.socket.getsockname()
        assert s.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert s.context is server_ctx


async def test_details_need_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    c, s = await engine_pair(server_ctx, client_ctx, handshake=False)
    async with c, s:
        with pytest.raises(trio.NeedHandshakeError):
            s.getpeercert()
        with pytest.raises(trio.NeedHandshakeError):
            c.cipher()


async def test_fd_is_owned_once(server_ctx: ssl.SSLContext) -> None:
    client_tcp, server_tcp = await tcp_pair()
    async with client_tcp:
        fd = server_tcp.socket.fileno()
        stream = SSLSocketStream.from_socket_stream(server_tcp, server_ctx, server_side=True)
        assert server_tcp.socket.fileno() == -1
        assert stream.socket.fileno() == fd
        await server_tcp.aclose()  # harmless: it no longer owns anything
        assert stream.socket.fileno() == fd
        await stream.aclose()
        assert stream.socket.fileno() == -1


def live_want_errors() -> int:
    gc.collect()
    return sum(isinstance(o, ssl.SSLWantReadError | ssl.SSLWantWriteError) for o in gc.get_objects())


async def test_waiting_holds_no_exception(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    # An SSLWant*Error kept across a wait keeps its traceback's frames alive: about
    # 1.5 KB on every idle connection.  Waits must happen outside the except clause.
    c, s = await engine_pair(server_ctx, client_ctx, bufsize=16384)
    async with c, s, trio.open_nursery() as nursery:
        before = live_want_errors()
        nursery.start_soon(s.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert live_want_errors() == before  # a receive parked on an empty socket
        await c.send_all(b"x")
        await trio.testing.wait_all_tasks_blocked()
        # A send parked on a full socket (the peer reads nothing).
        nursery.start_soon(s.send_all, b"y" * MiB)
        await trio.testing.wait_all_tasks_blocked()
        assert live_want_errors() == before
        nursery.cancel_scope.cancel()


async def test_open_ssl_socket_stream(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        client = await open_ssl_socket_stream("127.0.0.1", port, client_ctx, server_hostname="localhost")
        server = SSLSocketStream.from_socket_stream(await listeners[0].accept(), server_ctx, server_side=True)
        async with client, server:
            await handshake_both(client, server)
            await client.send_all(b"ping")
            assert await server.receive_some() == b"ping"


async def test_session_tickets_are_consumed_by_reads(
    pki: Path, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """TLS 1.3 NewSessionTicket messages are consumed by the client's reads, invisibly."""
    ticketing = server_context(ServerConfig(tls=TLSFiles.from_dir(pki, "server"), session_tickets=True))
    ticketing.num_tickets = 2
    for server in ("engine", "trio"):
        c, s = await tls_pair(ticketing, client_ctx, server=server)  # type: ignore[arg-type]
        async with c, s:
            await s.send_all(b"after the tickets")
            assert await c.receive_some() == b"after the tickets"
            assert c.session is not None
            await c.send_all(b"back")
            assert await s.receive_some() == b"back"


# ---------------------------------------------------------------- data paths


async def test_pending_plaintext_is_returned_without_waiting(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record read 1 byte at a time: the rest is inside OpenSSL, not on the socket."""
    c, s = await engine_pair(server_ctx, client_ctx)
    async with c, s:
        message = bytes(range(100))
        await c.send_all(message)
        got = await s.receive_some(1)
        assert s.pending() == 99

        async def no_waiting(_fd: object) -> None:
            raise AssertionError("waited for the socket with plaintext pending")

        monkeypatch.setattr(trio.lowlevel, "wait_readable", no_waiting)
        while len(got) < len(message):
            with trio.testing.assert_checkpoints():
                got += await s.receive_some(1)
        assert got == message
        assert s.pending() == 0
        assert s.received == 100
        assert c.sent == 100


@pytest.mark.parametrize(("client", "server"), [("engine", "engine"), ("engine", "trio"), ("trio", "engine")])
async def test_8_mib_both_ways_at_once(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, client: Kind, server: Kind
) -> None:
    c, s = await tls_pair(server_ctx, client_ctx, client=client, server=server)
    to_server = random.Random(1).randbytes(8 * MiB)
    to_client = random.Random(2).randbytes(8 * MiB)
    got: dict[str, bytes] = {}

    async def receive(side: str, stream: AnyStream, size: int) -> None:
        got[side] = await receive_until(stream, size)

    async with c, s, trio.open_nursery() as nursery:
        nursery.start_soon(c.send_all, to_server)
        nursery.start_soon(s.send_all, to_client)
        nursery.start_soon(receive, "c", c, len(to_client))
        nursery.start_soon(receive, "s", s, len(to_server))
    assert got["s"] == to_server
    assert got["c"] == to_client


@pytest.mark.parametrize("server", ["engine", "trio"])
async def test_a_long_send_counts_its_progress(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server: Kind
) -> None:
    # The idle sweep reads these counts: a send_all far larger than the socket buffers,
    # to a reader, must show bytes moving before it returns (trio's SSLStream is counted
    # by the trio engine's wrapper, as the server does).
    c, s = await tls_pair(server_ctx, client_ctx, server=server, bufsize=65536)
    counted = s if isinstance(s, SSLSocketStream) else TrioTLSStream(s)
    total = 4 * MiB
    seen_while_sending: list[int] = []
    sending = True

    async def send() -> None:
        nonlocal sending
        await counted.send_all(bytes(total))
        sending = False

    async with c, s, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        received = 0
        while received < total:
            received += len(await c.receive_some())
            if sending:
                seen_while_sending.append(counted.sent)
    assert any(0 < sent < total for sent in seen_while_sending)
    assert counted.sent == total


async def test_a_blocked_send_shows_progress_before_it_is_done(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    # One piece, to a reader slower than the buffers: sent moves only at its end, but
    # every time the peer takes bytes the idle sweep must see that something moved.
    c, s = await engine_pair(server_ctx, client_ctx, bufsize=4096)
    size = SEND_PIECE
    progress_while_unsent: list[int] = []
    async with c, s, trio.open_nursery() as nursery:
        nursery.start_soon(s.send_all, bytes(size))
        received = 0
        while received < size:
            received += len(await c.receive_some(4096))
            if s.sent == 0:
                progress_while_unsent.append(s.send_progress)
    assert max(progress_while_unsent) > 0
    assert s.sent == size


@pytest.mark.parametrize("server", ["engine", "trio"])
@pytest.mark.parametrize("ending", ["reset", "cancelled"])
async def test_a_long_send_that_fails_leaves_the_callers_buffer_free(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server: Kind, ending: str
) -> None:
    # trio's streams let a caller resize its bytearray after a send_all, however it
    # ended; a piece's memoryview kept alive by the exception's traceback would not.
    c, s = await tls_pair(server_ctx, client_ctx, server=server, bufsize=65536)
    counted = s if isinstance(s, SSLSocketStream) else TrioTLSStream(s)
    data = bytearray(4 * MiB)
    async with s:
        with trio.fail_after(30):
            if ending == "reset":
                c.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await trio.aclose_forcefully(c)
                with pytest.raises(trio.BrokenResourceError) as info:
                    await counted.send_all(data)
                del info  # as a handler's except clause would drop it
            else:
                # No reader, 64 KiB buffers: stuck in a piece until the timeout cancels it.
                with trio.move_on_after(0.2) as stuck:
                    await counted.send_all(data)
                assert stuck.cancelled_caught
        try:
            data += b"more"  # raises BufferError while a view of it is still exported
        finally:
            await trio.aclose_forcefully(c)
    assert len(data) == 4 * MiB + 4


@pytest.mark.parametrize("server", ["engine", "trio"])
async def test_sent_counts_bytes_not_items(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server: Kind
) -> None:
    c, s = await tls_pair(server_ctx, client_ctx, server=server)
    counted = s if isinstance(s, SSLSocketStream) else TrioTLSStream(s)
    for items in (1000, 70_000):  # under and over one piece
        wide = memoryview(array.array("I", range(items)))  # 4-byte items
        received = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(counted.send_all, wide)
            while received < wide.nbytes:
                received += len(await c.receive_some())
        assert received == wide.nbytes
    assert counted.sent == (1000 + 70_000) * 4
    await trio.aclose_forcefully(c)
    await trio.aclose_forcefully(s)


async def test_a_peer_that_reset_before_the_wrap_leaves_no_descriptor(server_ctx: ssl.SSLContext) -> None:
    client, server = await tcp_pair()
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()  # linger 0: a reset, before any byte
    await trio.lowlevel.wait_readable(server.socket)  # the reset has arrived
    fd = server.socket.fileno()
    with pytest.raises(OSError, match=r"not connected|reset"):
        SSLSocketStream.from_socket_stream(server, server_ctx, server_side=True)
    with pytest.raises(OSError, match="Bad file descriptor") as info:
        os.fstat(fd)  # closed then, not left to the garbage collector
    assert info.value.errno == errno.EBADF


async def test_large_echo(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """An echo server on the engine, an 8 MiB message sent while its echo comes back."""
    c, s = await engine_pair(server_ctx, client_ctx)
    payload = random.Random(3).randbytes(8 * MiB)
    echoed = b""

    async def echo() -> None:
        while data := await s.receive_some(65536):
            await s.send_all(data)
        await s.aclose()

    async def client_side() -> None:
        nonlocal echoed
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.send_all, payload)
            echoed = await receive_until(c, len(payload))
        await c.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        nursery.start_soon(client_side)
    assert echoed == payload


# ---------------------------------------------------------------- ends of a stream


async def after_last_words(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, polite: bool, **kinds: Kind
) -> AnyStream:
    """The server side of a pair whose client sent its last words and closed, with
    close_notify if *polite* (else forcefully: a TCP FIN alone); the words already read."""
    c, s = await tls_pair(server_ctx, client_ctx, **kinds)
    await c.send_all(b"last words")
    if polite:
        await c.aclose()
    else:
        await trio.aclose_forcefully(c)
    assert await s.receive_some() == b"last words"
    return s


@pytest.mark.parametrize("client", ["engine", "trio"])
async def test_close_notify_is_eof(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, client: Kind
) -> None:
    async with await after_last_words(server_ctx, client_ctx, polite=True, client=client) as s:
        assert await s.receive_some() == b""
        with trio.testing.assert_checkpoints():
            assert await s.receive_some() == b""  # and stays at EOF


@pytest.mark.parametrize("server", ["engine", "trio"])
async def test_ragged_eof_is_broken(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server: Kind
) -> None:
    """A TCP FIN without close_notify (our forceful close) is a broken stream, not EOF."""
    async with await after_last_words(server_ctx, client_ctx, polite=False, server=server) as s:
        with pytest.raises(trio.BrokenResourceError) as info:
            await s.receive_some()
        assert any(isinstance(e, ssl.SSLError) and "EOF" in str(e) for e in causes(info.value))
        with pytest.raises(trio.BrokenResourceError):
            await s.receive_some()


async def test_engine_receives_ragged_eof_from_raw_close(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    c, s = await tls_pair(server_ctx, client_ctx, client="trio")
    assert isinstance(c, trio.SSLStream)
    async with s:
        await c.transport_stream.aclose()  # TCP close under a live TLS session
        with pytest.raises(trio.BrokenResourceError) as info:
            await s.receive_some()
        assert "without a TLS close_notify" in describe_tls_error(info.value) or "EOF" in describe_tls_error(
            info.value
        )


async def test_reset_is_broken(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    c, s = await engine_pair(server_ctx, client_ctx)
    async with s:
        c.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(c)  # linger 0: close sends RST
        with pytest.raises(trio.BrokenResourceError) as info:
            await s.receive_some()
        assert any(isinstance(e, ConnectionResetError) for e in causes(info.value)), causes(info.value)
        assert describe_tls_error(info.value) == "connection reset by peer"
        with pytest.raises(trio.BrokenResourceError):
            await s.send_all(b"anyone?")


async def test_closed_stream(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    c, s = await engine_pair(server_ctx, client_ctx)
    async with c:
        await s.aclose()
        for op in (s.receive_some, s.wait_send_all_might_not_block, s.do_handshake):
            with pytest.raises(trio.ClosedResourceError):
                await op()
        with pytest.raises(trio.ClosedResourceError):
            await s.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            s.getpeercert()
        assert s.pending() == 0
        await s.aclose()
        assert await c.receive_some() == b""  # we sent close_notify


async def test_aclose_does_not_wait_for_the_peer(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, autojump_clock: trio.testing.MockClock
) -> None:
    """The peer never reads and never answers: aclose sends close_notify and returns."""
    c, s = await engine_pair(server_ctx, client_ctx)
    async with c:
        await s.send_all(b"unread")
        before = trio.current_time()
        with trio.testing.assert_checkpoints():
            await s.aclose()
        assert trio.current_time() == before  # a wait for the peer would jump the clock


async def test_aclose_bounds_a_full_buffer(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """close_notify that cannot be written waits at most close_notify_timeout."""
    c, s = await engine_pair(server_ctx, client_ctx)
    unwraps: list[bool] = []

    def full(*_args: object) -> None:
        unwraps.append(True)
        raise ssl.SSLWantWriteError()

    monkeypatch.setattr(s.socket, "unwrap", full)

    async def never(_fd: object) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(trio.lowlevel, "wait_writable", never)
    async with c:
        start = trio.current_time()
        await s.aclose()
        assert trio.current_time() - start == pytest.approx(s.close_notify_timeout)
        assert unwraps == [True]
        assert s.socket.fileno() == -1


async def test_handshake_refused_delivers_the_alert(pki: Path, server_ctx: ssl.SSLContext) -> None:
    """A client without a certificate learns why: OpenSSL writes the alert to the socket itself."""
    anonymous = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    c, s = await engine_pair(server_ctx, anonymous, handshake=False)
    async with c, s:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.do_handshake)  # TLS 1.3: the client finishes first
            with pytest.raises(trio.BrokenResourceError) as server_error:
                await s.do_handshake()
        assert "did not present a client certificate" in describe_tls_error(server_error.value)
        with pytest.raises(trio.BrokenResourceError) as client_error:
            await c.receive_some()
        assert "requires a client certificate" in describe_tls_error(client_error.value)


async def test_wrong_hostname_fails_the_handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    client_tcp, server_tcp = await tcp_pair()
    c = SSLSocketStream.from_socket_stream(client_tcp, client_ctx, server_hostname="elsewhere.example")
    s = SSLSocketStream.from_socket_stream(server_tcp, server_ctx, server_side=True)

    async def server_side() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await s.do_handshake()

    async with c, s:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            with pytest.raises(trio.BrokenResourceError) as info:
                await c.do_handshake()
        assert "hostname mismatch" in describe_tls_error(info.value)


# ---------------------------------------------------------------- concurrency


async def _blocked(afn: Callable[[], Awaitable[object]], nursery: trio.Nursery) -> None:
    nursery.start_soon(afn)
    await trio.testing.wait_all_tasks_blocked()


async def test_busy(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """Two senders, two receivers, or a sender and a waiter: BusyResourceError at once."""
    c, s = await engine_pair(server_ctx, client_ctx, bufsize=65536)
    big = bytes(16 * MiB)  # far more than both kernel buffers: send_all blocks
    async with c, s:
        async with trio.open_nursery() as nursery:
            await _blocked(lambda: s.send_all(big), nursery)
            with pytest.raises(trio.BusyResourceError):
                await s.send_all(b"x")
            with pytest.raises(trio.BusyResourceError):
                await s.wait_send_all_might_not_block()
            await _blocked(s.receive_some, nursery)
            with pytest.raises(trio.BusyResourceError):
                await s.receive_some()
            nursery.cancel_scope.cancel()
        # The cancelled send_all left a half-written record: the stream is broken now.
        with pytest.raises(trio.BrokenResourceError):
            await s.send_all(b"x")


def clog(stream: SSLSocketStream) -> None:
    """Fill the socket under *stream* until the kernel refuses more, bypassing OpenSSL.

    What the peer would read is garbage, so only send-side behaviour can be tested
    afterwards; OpenSSL itself has nothing half written.
    """
    for _ in range(10_000):
        try:
            socket.socket.send(stream.socket, bytes(65536))
        except BlockingIOError:
            return
    raise AssertionError("the socket never filled up")


@pytest.fixture
async def clogged(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> AsyncIterator[tuple[SSLSocketStream, SSLSocketStream]]:
    """(client, server) engine streams, the server's socket full (see clog); closed after the test."""
    c, s = await engine_pair(server_ctx, client_ctx, bufsize=65536)
    async with c, s:
        clog(s)
        yield c, s


async def closed_under(op: Callable[[], Awaitable[object]]) -> None:
    """Run *op*, which must end with ClosedResourceError (its stream closed while it waited)."""
    with pytest.raises(trio.ClosedResourceError):
        await op()


async def test_clogged_waiter(clogged: tuple[SSLSocketStream, SSLSocketStream]) -> None:
    """A waiter really waits, a concurrent sender is busy, and closing wakes the waiter."""
    _, s = clogged
    async with trio.open_nursery() as nursery:
        await _blocked(lambda: closed_under(s.wait_send_all_might_not_block), nursery)
        with pytest.raises(trio.BusyResourceError):
            await s.send_all(b"x")
        with pytest.raises(trio.BusyResourceError):
            await s.wait_send_all_might_not_block()
        await trio.aclose_forcefully(s)


async def test_clogged_sender_woken_by_close(clogged: tuple[SSLSocketStream, SSLSocketStream]) -> None:
    _, s = clogged
    async with trio.open_nursery() as nursery:
        await _blocked(lambda: closed_under(lambda: s.send_all(b"xyzzy")), nursery)
        await s.aclose()  # not polite: a send is half way, so no close_notify


async def test_clogged_waiter_returns_when_the_peer_goes(
    clogged: tuple[SSLSocketStream, SSLSocketStream],
) -> None:
    c, s = clogged
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.wait_send_all_might_not_block)
        await trio.testing.wait_all_tasks_blocked()
        await trio.aclose_forcefully(c)  # unread data: the kernel resets, we become writable


async def test_two_tasks_waiting_for_the_same_direction(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """trio allows one reader per fd; a second one of ours parks and wakes with it."""
    c, s = await engine_pair(server_ctx, client_ctx)
    woke: list[int] = []

    async def wait(n: int) -> None:
        await s._wait(_READABLE)
        woke.append(n)

    async with c, s:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, 1)
            nursery.start_soon(wait, 2)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            await c.send_all(b"wake up")
        assert sorted(woke) == [1, 2]
        assert await s.receive_some() == b"wake up"


# ---------------------------------------------------------------- cancellation


class Relay(trio.abc.AsyncResource):
    """A TCP relay between client and server whose bytes the test can hold back."""

    def __init__(self, to_client: trio.SocketStream, to_server: trio.SocketStream) -> None:
        self.to_client, self.to_server = to_client, to_server

    async def pump(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def one_way(source: trio.SocketStream, sink: trio.SocketStream) -> None:
            while data := await source.receive_some():
                await sink.send_all(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_way, self.to_client, self.to_server)
            nursery.start_soon(one_way, self.to_server, self.to_client)
            task_status.started()

    async def aclose(self) -> None:
        await self.to_client.aclose()
        await self.to_server.aclose()


async def relayed_pair(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[SSLSocketStream, Relay, SSLSocketStream]:
    client_tcp, relay_client = await tcp_pair()
    relay_server, server_tcp = await tcp_pair()
    relay = Relay(relay_client, relay_server)
    c = SSLSocketStream.from_socket_stream(client_tcp, client_ctx, server_hostname="localhost")
    s = SSLSocketStream.from_socket_stream(server_tcp, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.pump)
        await handshake_both(c, s)
        nursery.cancel_scope.cancel()  # everything sent has been relayed: the server finished
    return c, relay, s


async def test_cancelled_receive_mid_record_leaves_the_stream_usable(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    c, relay, s = await relayed_pair(server_ctx, client_ctx)
    async with c, s, relay:
        message = b"m" * 5000
        await c.send_all(message)
        record = bytearray()
        while len(record) < len(message) + 22:  # 5-byte header, 16-byte tag, 1 content type
            record += await relay.to_client.receive_some()
        await relay.to_server.send_all(record[:1000])  # header and part of the body
        async with trio.open_nursery() as nursery:
            await _blocked(s.receive_some, nursery)  # OpenSSL holds the partial record
            nursery.cancel_scope.cancel()
        await relay.to_server.send_all(record[1000:])
        assert await s.receive_some() == message
        await s.send_all(b"still fine")
        assert await relay.to_server.receive_some()


async def test_cancelled_receive_then_data(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    c, s = await engine_pair(server_ctx, client_ctx)
    async with c, s:
        with trio.CancelScope() as scope:
            scope.cancel()
            await s.receive_some()
        async with trio.open_nursery() as nursery:
            await _blocked(s.receive_some, nursery)
            nursery.cancel_scope.cancel()
        await c.send_all(b"after two cancels")
        assert await s.receive_some() == b"after two cancels"


async def test_cancelled_send_breaks_but_closes(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """A send_all cancelled half way breaks the stream, and closing it still returns."""
    c, s = await engine_pair(server_ctx, client_ctx, bufsize=65536)
    async with c:
        async with trio.open_nursery() as nursery:
            await _blocked(lambda: s.send_all(bytes(16 * MiB)), nursery)
            nursery.cancel_scope.cancel()
        with pytest.raises(trio.BrokenResourceError):
            await s.send_all(b"more")
        with pytest.raises(trio.BrokenResourceError):
            await s.receive_some()
        await s.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await s.send_all(b"more")


async def test_send_cancelled_before_it_starts_is_harmless(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    c, s = await engine_pair(server_ctx, client_ctx)
    async with c, s:
        with trio.CancelScope() as scope:
            scope.cancel()
            await s.send_all(b"never")
        await s.send_all(b"sent")
        assert await c.receive_some() == b"sent"


async def test_cancelled_handshake_breaks(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    c, s = await engine_pair(server_ctx, client_ctx, handshake=False)
    async with c, s:
        async with trio.open_nursery() as nursery:
            await _blocked(s.do_handshake, nursery)  # no client: waits for ClientHello
            nursery.cancel_scope.cancel()
        with pytest.raises(trio.BrokenResourceError):
            await s.do_handshake()


# ---------------------------------------------------------------- post-handshake messages


async def test_key_update_from_openssl_s_client(pki: Path, server_ctx: ssl.SSLContext) -> None:
    """A TLS 1.3 KeyUpdate (update requested) mid-stream: answered inside SSL_read.

    CPython cannot send one, so ``openssl s_client`` does: its ``K`` command.
    """
    openssl = require_tool("openssl", "openssl")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def echo_server() -> None:
        tcp = await listeners[0].accept()
        async with SSLSocketStream.from_socket_stream(tcp, server_ctx, server_side=True) as s:
            while data := await s.receive_some():
                await s.send_all(data)

    command = [
        openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        "-cert", str(pki / "client.pem"), "-key", str(pki / "client.key"),
        "-CAfile", str(pki / "ca.pem"), "-verify_return_error", "-tls1_3",
    ]  # fmt: skip
    async with listeners[0], trio.open_nursery() as nursery:
        nursery.start_soon(echo_server)
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert process.stdin is not None
        assert process.stdout is not None
        lines = Lines(process.stdout)
        try:
            assert await lines.await_line("Verify return code: 0")
            await process.stdin.send_all(b"hello\n")
            assert await lines.await_line("hello")
            await process.stdin.send_all(b"K\n")
            assert await lines.await_line("KEYUPDATE")  # on stderr: s_client has sent it
            await process.stdin.send_all(b"after the update\n")
            assert await lines.await_line("after the update")
            await process.stdin.aclose()  # s_client sends close_notify and exits
            assert await process.wait() == 0
        finally:
            with trio.CancelScope(shield=True):
                process.kill()
                await process.wait()
