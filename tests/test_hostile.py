"""Hostile and broken peers on real loopback sockets.

Every case follows one pattern: a verified client connects *before* the attack
and is served again *after* it (plus a fresh connection), the attacker's
connection ends with exactly one server log line that says why, and nothing is
logged at ERROR.  Log lines are told apart by the attacker's own port: the
server prefixes each with ``HOST:PORT:`` of the peer.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import random
import socket
import ssl
import struct
import tracemalloc
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trio_tlsecho import (
    Address,
    ClientConfig,
    ServerConfig,
    ServerMetrics,
    client_context,
    echo_once,
    open_client,
    serve,
)

from .conftest import Start, assert_fds_settle, open_fds, receive_until
from .logs import PACKAGE, ServerLog

#: Bounds a broken build's hang, never a measurement (virtual seconds under autojump_clock).
HANG = 60


# -- helpers -------------------------------------------------------------------------


def reset_on_close(sock: socket.socket | trio.socket.SocketType) -> None:
    """Make close() send a TCP reset (SO_LINGER, timeout 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def local_port(stream: trio.SocketStream) -> int:
    return int(stream.socket.getsockname()[1])


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the server sends until it closes (EOF or reset)."""
    got = bytearray()
    with trio.fail_after(HANG), contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            got += chunk
    return bytes(got)


class GoodClient:
    """A verified client that stays connected through an attack."""

    def __init__(self, address: Address, config: ClientConfig, stream: trio.SSLStream[trio.SocketStream]):
        self.address, self.config, self.stream = address, config, stream
        self.exchanges = 0

    async def echo(self, data: bytes) -> None:
        await self.stream.send_all(data)
        with trio.fail_after(HANG):
            assert await receive_until(self.stream, len(data), "a good client's connection") == data
        self.exchanges += 1

    async def still_served(self) -> None:
        """The connection from before the attack still echoes, and a new one is accepted."""
        await self.echo(b"still here after the attack")
        result = await echo_once(self.address, self.config, b"and a new client too")
        assert result.received == 20


@contextlib.asynccontextmanager
async def good_client(address: Address, config: ClientConfig) -> AsyncIterator[GoodClient]:
    stream = await open_client(address, config)
    try:
        good = GoodClient(address, config, stream)
        await good.echo(b"before the attack")
        yield good
    finally:
        await trio.aclose_forcefully(stream)


@pytest.fixture
async def bystander(server: Address, client_config: ClientConfig) -> AsyncIterator[GoodClient]:
    """A good client of ``server``, connected and served before the test's attack."""
    async with good_client(server, client_config) as good:
        yield good


def real_client_hello(config: ClientConfig) -> bytes:
    """The first flight of our own client (a TLS 1.3 ClientHello), recorded through a memory BIO."""
    return first_flight(client_context(config), "localhost")


def first_flight(ctx: ssl.SSLContext, server_hostname: str | None) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


# Pre-TLS-1.2 suites (ECDHE/RSA with CBC and SHA-1), what an old client offers.
_OLD_SUITES = (0xC013, 0xC014, 0xC009, 0xC00A, 0x002F, 0x0035, 0x000A, 0x00FF)


def crafted_client_hello(version: int, suites: tuple[int, ...] = _OLD_SUITES) -> bytes:
    """A ClientHello by hand (RFC 5246 7.4.1.2): *version*, no supported_versions extension,
    so *version* is the highest the client can speak.  Used where OpenSSL will not make one."""
    suite_bytes = b"".join(s.to_bytes(2, "big") for s in suites)
    extensions = _extension(0x000A, b"\x00\x04\x00\x17\x00\x1d") + _extension(0x000B, b"\x01\x00")
    body = (
        version.to_bytes(2, "big")
        + bytes(range(32))  # client random
        + b"\x00"  # no session id
        + len(suite_bytes).to_bytes(2, "big")
        + suite_bytes
        + b"\x01\x00"  # compression: null only
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def crafted_sslv2_client_hello(version: int) -> bytes:
    """The SSL 2.0-format ClientHello old clients sent for compatibility (RFC 5246 E.2)."""
    specs = b"\x00\xc0\x13\x00\xc0\x14\x00\x00\x2f\x00\x00\x35\x00\x00\xff"
    challenge = bytes(range(16))
    body = (
        b"\x01"
        + version.to_bytes(2, "big")
        + len(specs).to_bytes(2, "big")
        + b"\x00\x00"
        + len(challenge).to_bytes(2, "big")
        + specs
        + challenge
    )
    return (0x8000 | len(body)).to_bytes(2, "big") + body


def hello_versions(flight: bytes) -> tuple[int, bool]:
    """(legacy client_version, whether a supported_versions extension is present)."""
    assert flight[0] == 0x16, "not a handshake record"
    assert flight[5] == 0x01, "not a ClientHello"
    version = int.from_bytes(flight[9:11], "big")
    at = 11 + 32
    at += 1 + flight[at]  # session id
    at += 2 + int.from_bytes(flight[at : at + 2], "big")  # cipher suites
    at += 1 + flight[at]  # compression methods
    end = at + 2 + int.from_bytes(flight[at : at + 2], "big")
    at += 2
    kinds = []
    while at < end:
        kinds.append(int.from_bytes(flight[at : at + 2], "big"))
        at += 4 + int.from_bytes(flight[at + 2 : at + 4], "big")
    return version, 0x002B in kinds


async def send_and_read(address: Address, data: bytes) -> tuple[int, bytes]:
    """Connect, send *data*, keep the connection open and read until the server closes."""
    tcp = await trio.open_tcp_stream(address.host, address.port)
    try:
        port = local_port(tcp)
        await tcp.send_all(data)
        return port, await read_until_closed(tcp)
    finally:
        await tcp.aclose()


def is_alert_or_nothing(answer: bytes) -> bool:
    return answer == b"" or (answer[:1] == b"\x15" and len(answer) <= 7)


# -- not TLS at all ------------------------------------------------------------------


async def test_plain_text_instead_of_client_hello(
    server: Address, bystander: GoodClient, log: ServerLog
) -> None:
    port, answer = await send_and_read(server, b"HELO mail.example.org\r\nthis is not TLS\r\n")
    await bystander.still_served()
    assert is_alert_or_nothing(answer)
    assert log.about(port) == ["handshake failed: not TLS (wrong version number): plain text or garbage?"]
    assert not log.problems()


@pytest.mark.parametrize("seed", range(5))
async def test_random_garbage(
    start: Start,
    client_config: ClientConfig,
    log: ServerLog,
    autojump_clock: MockClock,
    seed: int,
) -> None:
    # autojump_clock and a short handshake timeout: garbage that happens to parse as the
    # start of a long record leaves the server waiting for more, and that must end too.
    [address] = await start(handshake_timeout=5)
    rng = random.Random(seed)
    garbage = rng.randbytes(rng.randint(1, 4096))
    async with good_client(address, client_config) as good:
        port, answer = await send_and_read(address, garbage)
        await good.still_served()
    assert garbage not in answer
    [line] = log.about(port)
    assert line.startswith(("handshake failed: ", "handshake timed out after 5s"))
    assert not log.problems()


# -- a ClientHello that never completes ----------------------------------------------


async def test_client_hello_cut_in_half_then_silence(
    start: Start, client_config: ClientConfig, log: ServerLog, autojump_clock: MockClock
) -> None:
    [address] = await start(handshake_timeout=5)
    hello = real_client_hello(client_config)
    async with good_client(address, client_config) as good:
        port, answer = await send_and_read(address, hello[: len(hello) // 2])
        await good.still_served()
    assert answer == b""
    assert log.about(port) == ["handshake timed out after 5s"]
    assert not log.problems()


async def test_client_hello_cut_in_half_then_close(
    server: Address, client_config: ClientConfig, bystander: GoodClient, log: ServerLog
) -> None:
    hello = real_client_hello(client_config)
    tcp = await trio.open_tcp_stream(server.host, server.port)
    port = local_port(tcp)
    await tcp.send_all(hello[: len(hello) // 2])
    await tcp.aclose()
    await log.wait_for("handshake failed", about=port)
    await bystander.still_served()
    assert log.about(port) == ["handshake failed: peer closed the connection without a TLS close_notify"]
    assert not log.problems()


async def test_slowloris_is_dropped_at_the_handshake_deadline(
    start: Start, client_config: ClientConfig, log: ServerLog, autojump_clock: MockClock
) -> None:
    timeout = 5
    [address] = await start(handshake_timeout=timeout)
    hello = real_client_hello(client_config)
    sent = 0
    async with good_client(address, client_config) as good:
        tcp = await trio.open_tcp_stream(address.host, address.port)
        port = local_port(tcp)
        dropped = trio.Event()

        async def dribble() -> None:
            nonlocal sent
            for byte in hello:  # bounded by the ClientHello's length
                if dropped.is_set():
                    return
                with contextlib.suppress(trio.BrokenResourceError):
                    await tcp.send_all(bytes([byte]))
                sent += 1
                # Not cancelled from outside: a cancelled echo would break the good stream.
                await good.echo(b"served during the attack")
                await trio.sleep(1)  # the attacker's pace, in virtual time

        async with trio.open_nursery() as attack:
            attack.start_soon(dribble)
            answer = await read_until_closed(tcp)
            dropped.set()
        await tcp.aclose()
        await good.still_served()
    assert answer == b""
    # Each byte came well within any per-read timeout, so only a total deadline ends it:
    # after about `timeout` bytes, long before the ClientHello was complete.
    assert timeout <= sent <= timeout + 2 < len(hello)
    assert good.exchanges >= timeout
    assert log.about(port) == [f"handshake timed out after {timeout}s"]
    assert not log.problems()


# -- old protocol versions -----------------------------------------------------------


def _tls11_only_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 are deprecated names
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


async def test_tls_1_1_only_client_is_refused(server: Address, bystander: GoodClient, log: ServerLog) -> None:
    ctx = _tls11_only_context()
    try:
        flight = first_flight(ctx, "localhost")
    except ssl.SSLError:
        flight = b""  # this OpenSSL cannot offer TLS 1.0/1.1 at all
    if flight:
        # Prove the real client offers nothing newer than TLS 1.1, then let it try.
        assert hello_versions(flight) == (0x0302, False)
        tcp = await trio.open_tcp_stream(server.host, server.port)
        port = local_port(tcp)
        old = trio.SSLStream(tcp, ctx, server_hostname="localhost")
        with pytest.raises(trio.BrokenResourceError) as info:
            await old.do_handshake()
        await trio.aclose_forcefully(old)
        assert "ALERT_PROTOCOL_VERSION" in repr(info.value.__cause__)
    else:
        port, answer = await send_and_read(server, crafted_client_hello(0x0302))
        assert answer == b"\x15\x03\x02\x00\x02\x02\x46"  # fatal protocol_version
    await bystander.still_served()
    assert log.about(port) == ["handshake failed: peer offers only an unsupported (too old) TLS version"]
    assert not log.problems()


@pytest.mark.parametrize(
    ("hello", "alert", "reason"),
    [
        pytest.param(crafted_client_hello(0x0300), b"\x28", "handshake failed: version too low", id="ssl3"),
        pytest.param(
            crafted_client_hello(0x0301),
            b"\x46",
            "handshake failed: peer offers only an unsupported (too old) TLS version",
            id="tls1.0",
        ),
        pytest.param(
            crafted_client_hello(0x0302),
            b"\x46",
            "handshake failed: peer offers only an unsupported (too old) TLS version",
            id="tls1.1",
        ),
        pytest.param(
            crafted_sslv2_client_hello(0x0301),
            b"\x46",
            "handshake failed: peer offers only an unsupported (too old) TLS version",
            id="sslv2-format-tls1.0",
        ),
        pytest.param(
            crafted_client_hello(0x0303),
            b"\x28",
            "handshake failed: no cipher suite in common with the peer",
            id="tls1.2-cbc-only",
        ),
    ],
)
async def test_crafted_old_client_hello_is_refused(
    server: Address, bystander: GoodClient, log: ServerLog, hello: bytes, alert: bytes, reason: str
) -> None:
    port, answer = await send_and_read(server, hello)
    await bystander.still_served()
    # One fatal alert record (level 2) with the expected description, then the close.
    assert answer[:1] == b"\x15"
    assert answer[3:] == b"\x00\x02\x02" + alert
    assert log.about(port) == [reason]
    assert not log.problems()


async def test_one_byte_then_reset_before_the_server_looks(
    server: Address, bystander: GoodClient, log: ServerLog
) -> None:
    # Connected, sent the first byte of a hello and reset, all before the server's task
    # runs (no await in between): the socket it accepts is already dead with data in
    # it.  CPython's wrap_socket() then refuses it (getpeername() fails, CVE-2023-40217
    # check); that once escaped run_connection and stopped the whole server.
    rude = socket.create_connection((server.host, server.port))
    port = rude.getsockname()[1]
    rude.sendall(b"\x16")
    reset_on_close(rude)
    rude.close()
    await log.wait_for("handshake failed")
    await bystander.still_served()
    # Named by the address accept() gave, as getpeername() no longer can.
    [line] = log.messages("handshake failed")
    assert line.startswith(f"127.0.0.1:{port}: ")
    assert not log.problems()


# -- verified peers that misbehave after the handshake -------------------------------


def _set_reset_on_close(stream: trio.SSLStream[trio.SocketStream]) -> None:
    reset_on_close(stream.transport_stream.socket)


async def assert_lost_to_a_reset(log: ServerLog, port: int, bystander: GoodClient) -> None:
    """The verified peer at *port* reset: the server logs its connection, then its loss (the
    reset, or our write meeting it), and nothing else; the bystander is still served."""
    await log.wait_for("connection lost", about=port)
    await bystander.still_served()
    connected, lost = log.about(port)
    assert connected.startswith("connected TLSv1.3")
    assert lost in (
        "connection lost: connection reset by peer",
        "connection lost: connection closed by peer (broken pipe)",
    )
    assert not log.problems()


async def test_peer_that_resets_mid_echo(
    server: Address, client_config: ClientConfig, bystander: GoodClient, log: ServerLog
) -> None:
    payload = os.urandom(4 << 20)
    rude = await open_client(server, client_config)
    port = local_port(rude.transport_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rude.send_all, payload)
        first = await rude.receive_some(65536)  # the server is echoing...
        nursery.cancel_scope.cancel()
    assert first == payload[: len(first)]
    _set_reset_on_close(rude)
    await trio.aclose_forcefully(rude)  # ...and the peer resets, most of it unread
    await assert_lost_to_a_reset(log, port, bystander)


class BareTLSClient:
    """A verified TLS client on a plain non-blocking socket and an ``SSLObject``, awaiting
    only with trio's ``wait_readable``/``wait_writable``: between two awaits it can do
    several things (send records, then reset) that the server cannot interleave with."""

    def __init__(
        self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self.sock, self.tls, self.incoming, self.outgoing = sock, tls, incoming, outgoing

    @classmethod
    async def connect(
        cls, address: Address, config: ClientConfig, *, maximum_version: ssl.TLSVersion | None = None
    ) -> BareTLSClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = client_context(config)
        if maximum_version is not None:
            ctx.maximum_version = maximum_version
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=address.host)
        self = cls(sock, tls, incoming, outgoing)
        with trio.fail_after(HANG):
            sock.connect_ex((address.host, address.port))
            await trio.lowlevel.wait_writable(sock)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self.flush()
                    await trio.lowlevel.wait_readable(sock)
                    data = sock.recv(65536)
                    assert data, "the server closed during the handshake"
                    incoming.write(data)
            await self.flush()
        return self

    async def flush(self) -> None:
        data = memoryview(self.outgoing.read())
        while data:
            await trio.lowlevel.wait_writable(self.sock)
            data = data[self.sock.send(data) :]

    def send_now(self, plaintext: bytes) -> None:
        """Encrypt and hand to the kernel at once, without yielding to the server."""
        self.tls.write(plaintext)
        data = self.outgoing.read()
        assert self.sock.send(data) == len(data), "the socket buffer took only part"

    async def receive_until_closed(self) -> None:
        """Feed everything the server sends, until it closes, to our TLS object (unread)."""
        with trio.fail_after(HANG):
            while True:
                await trio.lowlevel.wait_readable(self.sock)
                try:
                    data = self.sock.recv(65536)
                except ConnectionResetError:
                    return
                if not data:
                    return
                self.incoming.write(data)

    def reset(self) -> None:
        reset_on_close(self.sock)
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_a_tampered_record_after_the_handshake_is_answered_with_its_alert(
    server: Address, client_config: ClientConfig, log: ServerLog, version: ssl.TLSVersion
) -> None:
    # A fatal TLS error is announced with an alert before the close (RFC 8446 6, RFC 5246
    # 7.2), as openssl s_server does: both engines, both versions.
    client = await BareTLSClient.connect(server, client_config, maximum_version=version)
    port = client.sock.getsockname()[1]
    try:
        await log.wait_for("connected", about=port)
        client.tls.write(b"a record whose tag will not verify")
        record = bytearray(client.outgoing.read())
        record[-1] ^= 0x01  # the last byte of the AEAD tag
        client.sock.send(record)
        await client.receive_until_closed()
        with pytest.raises(ssl.SSLError) as alert:
            client.tls.read(1024)
    finally:
        client.close()
    assert alert.value.reason == "SSLV3_ALERT_BAD_RECORD_MAC"
    await log.wait_for("connection lost", about=port)
    connected, lost = log.about(port)
    assert connected.startswith("connected TLSv1." + ("2" if version == ssl.TLSVersion.TLSv1_2 else "3"))
    assert lost == "connection lost: decryption failed or bad record mac"
    assert not log.problems()


async def test_peer_that_resets_right_after_full_records(
    server: Address, client_config: ClientConfig, bystander: GoodClient, log: ServerLog
) -> None:
    # Two full 16 KiB records and the reset reach the server's socket together: its
    # first read returns a whole record and the read after it meets the reset.
    rude = await BareTLSClient.connect(server, client_config)
    port = rude.sock.getsockname()[1]
    try:
        await log.wait_for("connected", about=port)
        rude.send_now(os.urandom(2 * 16384))
    finally:
        rude.reset()
    await assert_lost_to_a_reset(log, port, bystander)


async def test_peer_that_half_closes_still_gets_its_echo(
    server: Address, client_config: ClientConfig, bystander: GoodClient, log: ServerLog
) -> None:
    payload = os.urandom(300_000)
    peer = await open_client(server, client_config)
    port = local_port(peer.transport_stream)

    async def send_then_half_close() -> None:
        await peer.send_all(payload)
        # A TCP FIN straight after the TLS data: no close_notify, but still reading.
        await peer.transport_stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_then_half_close)
        with trio.fail_after(HANG):
            got = await receive_until(peer, len(payload))
    rest = await read_until_closed(peer)
    await trio.aclose_forcefully(peer)
    await bystander.still_served()
    assert got == payload
    assert rest == b""
    connected, lost = log.about(port)
    assert connected.startswith("connected TLSv1.3")
    assert lost == "connection lost: peer closed the connection without a TLS close_notify"
    assert not log.problems()


def _kernel_buffer_bound() -> int:
    # The most a loopback TCP connection can hold in flight: both directions' send and
    # receive buffers at their autotuning maxima (net.ipv4.tcp_wmem/tcp_rmem, third field).
    wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    return 2 * (wmem + rmem)


async def test_peer_that_sends_but_never_reads_is_flow_controlled(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    log: ServerLog,
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = ServerMetrics()
    [address] = await nursery.start(functools.partial(serve, server_config, metrics=metrics))
    chunk = os.urandom(65536)
    bound = _kernel_buffer_bound()
    attempt = 4 * bound + (64 << 20)
    async with good_client(address, client_config) as good:
        hog = await open_client(address, client_config)
        port = local_port(hog.transport_stream)
        pushed = 0
        # The hog writes and never reads.  Its writes stop being accepted once the
        # server stops reading; under autojump_clock the virtual deadline passes only
        # when every task (the server's included) is blocked, which is that moment.
        with trio.move_on_after(30) as stalled:
            for _ in range(attempt // len(chunk)):
                await hog.send_all(chunk)
                pushed += len(chunk)
        assert stalled.cancelled_caught, "every byte went through: the server kept reading"
        # The server reads only what it can echo: at most about one read (64 KiB of
        # plaintext) and one record refill is held between reading and writing.
        held = metrics.bytes_received - metrics.bytes_sent
        assert held < 256 * 1024
        assert metrics.bytes_received < bound + (1 << 20)
        assert pushed < bound + (1 << 20)
        await good.still_served()
        _set_reset_on_close(hog)
        await trio.aclose_forcefully(hog)
        await log.wait_for("connection lost", about=port)
    [lost] = [s for s in log.about(port) if not s.startswith("connected ")]
    assert lost.startswith("connection lost: ")
    assert not log.problems()


# -- many failures in a row ----------------------------------------------------------

#: 10,000 failed handshakes, as issue 4 asks: half garbage, half TLS without a client
#: certificate (a full TLS 1.3 handshake on each side, both in this process).  Measured on
#: 2 cores: ~13 s untraced; tracemalloc doubles the cost of what it watches, so it watches
#: the second half only (~18 s in all).
LEAK_ROUNDS = 10_000
#: Untraced first: first-use allocations (caches, the SSL session table), and trio's heap
#: of cancel-scope deadlines reaching its steady size.
LEAK_UNTRACED = 5_000
#: The whole leak test, both loops, fails rather than runs on past this (seconds).
LEAK_DEADLINE = 300
#: trio keeps up to 1,000 stale deadline entries between prunes (~250 KiB of cancel
#: scopes), so growth below this is noise.  A leaked per-connection object is bigger than
#: 1 KiB (a task, a socket, an SSLObject with its BIOs): 5,000 of them would be 5 MiB.
LEAK_MEMORY_BOUND = 1 << 20


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_level: dict[int, int] = {}
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.by_level[record.levelno] = self.by_level.get(record.levelno, 0) + 1
        self.failed += "handshake failed: " in record.getMessage()


@pytest.mark.slow
async def test_many_failed_handshakes_leak_nothing(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    pki: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = ServerMetrics()
    [address] = await nursery.start(functools.partial(serve, server_config, metrics=metrics))
    no_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    rng = random.Random(4)

    async def fail_once(i: int) -> None:
        tcp = await trio.open_tcp_stream(address.host, address.port)
        if i % 2:
            stream = trio.SSLStream(tcp, no_cert, server_hostname="127.0.0.1")
            try:
                # TLS 1.3: our side completes; the refusal comes on the first read.
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.do_handshake()
                    await read_until_closed(stream)
                # The alert comes before the server is done: read on to its FIN (or a
                # reset), so that our close answers a server that has finished.
                await read_until_closed(tcp)
            finally:
                await trio.aclose_forcefully(stream)
        else:
            try:
                await tcp.send_all(b"\x00" + rng.randbytes(rng.randint(1, 600)))
                await tcp.send_eof()
                # Ends with the server's FIN (or a reset), never on our timer.
                await read_until_closed(tcp)
            finally:
                await tcp.aclose()

    # 10,000 log records would make caplog's memory look like a leak: count them instead.
    counter = _Count()
    logger = logging.getLogger(PACKAGE)
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(counter)
    try:
        # Bounded as a whole, not only per connection: about 20 s of work here.
        with trio.fail_after(LEAK_DEADLINE):
            async with good_client(address, client_config) as good:
                await fail_once(0)
                await fail_once(1)
                fds = open_fds()
                for i in range(2, LEAK_UNTRACED):
                    await fail_once(i)
                await assert_fds_settle(fds)
                gc.collect()
                tracemalloc.start()
                try:
                    before, _ = tracemalloc.get_traced_memory()
                    for i in range(LEAK_UNTRACED, LEAK_ROUNDS):
                        await fail_once(i)
                    gc.collect()
                    after, _ = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                await assert_fds_settle(fds)
                await good.still_served()
    finally:
        logger.removeHandler(counter)
    grown = after - before
    assert grown < LEAK_MEMORY_BOUND, (
        f"{grown} bytes still allocated after {LEAK_ROUNDS - LEAK_UNTRACED} failures"
    )
    assert counter.failed == LEAK_ROUNDS
    assert counter.by_level.get(logging.ERROR, 0) == 0
    assert metrics.handshakes["protocol"] == LEAK_ROUNDS // 2
    assert metrics.handshakes["no_cert"] == LEAK_ROUNDS // 2
