"""PROXY protocol v1/v2: the sans-io parser, the exact-consumption reader, and the server."""

from __future__ import annotations

import functools
import logging
import struct
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_tlsecho import (
    ClientConfig,
    ClientError,
    ConfigError,
    Connection,
    ServerConfig,
    ServerMetrics,
    echo_once,
    open_client,
    serve,
)
from trio_tlsecho._net._proxy import (
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse_proxy_header,
    read_proxy_header,
)

from .conftest import Start, start_server
from .logs import ServerLog

TLS_START = b"\x16\x03\x01\x00\xc0"  # what follows the header: a ClientHello's record header

V1_CASES = [
    (
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        ProxyHeader(1, ("192.0.2.1", 56324), ("198.51.100.2", 443)),
    ),
    (
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
        ProxyHeader(1, ("2001:db8::1", 1), ("2001:db8::2", 65535)),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1, None, None)),
]


@pytest.mark.parametrize(("raw", "expected"), V1_CASES)
def test_v1(raw: bytes, expected: ProxyHeader) -> None:
    assert parse_proxy_header(raw + TLS_START) == (expected, len(raw))


def test_v2_roundtrip_ipv4_and_ipv6() -> None:
    for src, dst in [(("192.0.2.1", 5000), ("127.0.0.1", 443)), (("2001:db8::7", 1), ("::1", 2))]:
        raw = encode_v2(src, dst)
        assert parse_proxy_header(raw + TLS_START) == (ProxyHeader(2, src, dst), len(raw))
        raw1 = encode_v1(src, dst)
        assert parse_proxy_header(raw1) == (ProxyHeader(1, src, dst), len(raw1))


def test_v2_local_and_unspec_and_tlvs() -> None:
    local = V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    assert parse_proxy_header(local) == (ProxyHeader(2, None, None), 16)
    # TLVs after the addresses (HAProxy's SSL/unique-id extensions) are consumed whole and
    # kept undecoded; tlvs() decodes them.
    tlv = b"\x05\x00\x04abcd"
    body = bytes([192, 0, 2, 1, 127, 0, 0, 1]) + struct.pack("!HH", 1234, 443) + tlv
    raw = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body
    assert parse_proxy_header(raw + TLS_START) == (
        ProxyHeader(2, ("192.0.2.1", 1234), ("127.0.0.1", 443), tlv),
        len(raw),
    )
    assert ProxyHeader(2, None, None, tlv).tlvs() == [(5, b"abcd")]


@pytest.mark.parametrize(
    "raw",
    [V1_CASES[0][0], V1_CASES[2][0], encode_v2(("192.0.2.1", 5000), ("127.0.0.1", 443))],
)
def test_every_prefix_is_incomplete(raw: bytes) -> None:
    for cut in range(len(raw)):
        assert parse_proxy_header(raw[:cut]) is None, cut


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x16\x03\x01\x00", "no PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b"PROXZ TCP4", "no PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed PROXY v1 header"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "malformed PROXY v1 header"),
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad address '1.2.3.999'"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "does not match TCP4"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port '01'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad port '\\+1'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n", "bad port '70000'"),
        (b"PROXY " + b"A" * 120, "longer than 107 bytes"),
        (b"PROXY TCP4 \xff\r\n", "not ASCII"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "with version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 2"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "too short for IPv4"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "too short for IPv6"),
        (V2_SIGNATURE + b"\x21\x31\x00\x00", "unsupported family/protocol 0x31"),
        (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH + 1), "over the 2048-byte limit"),
        (b"\r\n\r\nX", "no PROXY protocol header"),
    ],
)
def test_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(raw)


@pytest.mark.parametrize(
    "header",
    [encode_v1(("192.0.2.9", 4321), ("127.0.0.1", 443)), encode_v2(("192.0.2.9", 4321), ("127.0.0.1", 443))],
)
async def test_reader_consumes_exactly_the_header_however_it_arrives(header: bytes) -> None:
    async def sender(sock: trio.socket.SocketType, split: int) -> None:
        await sock.send(header[:split])
        await trio.testing.wait_all_tasks_blocked()  # the reader is waiting on a partial header
        await sock.send(header[split:] + TLS_START)

    for split in (1, 7, len(header) - 1):
        a, b = trio.socket.socketpair()
        with a, b:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, a, split)
                parsed = await read_proxy_header(b)
            assert parsed.source == ("192.0.2.9", 4321)
            assert await b.recv(100) == TLS_START  # not one byte of what follows was eaten


async def test_reader_eof_mid_header() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        await a.send(b"PROXY TCP4 1.2")
        a.shutdown(trio.socket.SHUT_WR)
        with pytest.raises(ProxyProtocolError, match=r"closed before a complete PROXY header \(14 bytes\)"):
            await read_proxy_header(b)


# -- the server ---------------------------------------------------------------------


@pytest.fixture
async def proxied(nursery: trio.Nursery, server_config: ServerConfig) -> tuple[object, list[Connection]]:
    seen: list[Connection] = []

    async def record(conn: Connection) -> None:
        seen.append(conn)
        while data := await conn.stream.receive_some(65536):
            await conn.stream.send_all(data)

    [address] = await start_server(
        nursery, server_config, handler=record, proxy_protocol=True, handshake_timeout=5
    )
    return address, seen


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
async def test_server_uses_the_address_from_the_header(
    proxied: tuple[object, list[Connection]],
    client_config: ClientConfig,
    caplog: pytest.LogCaptureFixture,
    encode: object,
) -> None:
    address, seen = proxied
    header = encode(("203.0.113.7", 40123), ("127.0.0.1", 443))  # type: ignore[operator]
    stream = await open_client(address, client_config, proxy_header=header)  # type: ignore[arg-type]
    await stream.send_all(b"hi")
    assert await stream.receive_some(10) == b"hi"
    await stream.aclose()
    assert seen[0].peer_address == ("203.0.113.7", 40123)
    assert "203.0.113.7:40123 (via 127.0.0.1:" in caplog.text


async def test_local_header_keeps_the_socket_address(
    proxied: tuple[object, list[Connection]], client_config: ClientConfig
) -> None:
    address, seen = proxied
    local = V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    stream = await open_client(address, client_config, proxy_header=local)  # type: ignore[arg-type]
    await stream.aclose()
    with trio.fail_after(10):
        while not seen:
            await trio.testing.wait_all_tasks_blocked()
    assert seen[0].peer_address[0] == "127.0.0.1"


@pytest.mark.parametrize(
    ("prefix", "logged"),
    [
        (b"", "refused: no PROXY protocol header"),
        (b"PROXY TCP4 nonsense\r\n", "refused: malformed PROXY v1 header"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "over the 2048-byte limit"),
    ],
)
async def test_server_refuses_bad_headers_and_keeps_serving(
    proxied: tuple[object, list[Connection]],
    client_config: ClientConfig,
    caplog: pytest.LogCaptureFixture,
    prefix: bytes,
    logged: str,
) -> None:
    address, _ = proxied
    with pytest.raises(ClientError):
        await echo_once(address, client_config, b"x", proxy_header=prefix)
    assert logged in caplog.text
    good = encode_v1(("192.0.2.1", 1), ("127.0.0.1", 2))
    assert (await echo_once(address, client_config, b"ok", proxy_header=good)).received == 2


@pytest.mark.parametrize(
    "sent",
    [b"", V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)],
    ids=["check", "check-send-proxy"],
)
async def test_a_health_check_is_a_probe_not_a_refusal(
    nursery: trio.Nursery, server_config: ServerConfig, log: ServerLog, sent: bytes
) -> None:
    # HAProxy's checks: connect and close; or a PROXY v2 LOCAL header, then close.
    log.set_level(logging.DEBUG)
    metrics = ServerMetrics()
    config = attrs.evolve(server_config, proxy_protocol=True)
    [address] = await nursery.start(functools.partial(serve, config, metrics=metrics))
    tcp = await trio.open_tcp_stream(address.host, address.port)
    await tcp.send_all(sent)
    await tcp.aclose()
    with trio.fail_after(10):
        while metrics.handshakes["probe"] == 0:
            await trio.testing.wait_all_tasks_blocked()
    assert {result: n for result, n in metrics.handshakes.items() if n} == {"probe": 1}
    assert metrics.handshake_failures == 0
    [record] = log.find("before sending")
    assert record.levelno == logging.DEBUG
    assert record.getMessage().endswith("closed before sending anything (a health check?)")
    assert not [r for r in log.records if r.levelno >= logging.WARNING]


async def test_truncated_header_times_out(
    start: Start, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    [address] = await start(proxy_protocol=True, handshake_timeout=5)
    tcp = await trio.open_tcp_stream(address.host, address.port)
    await tcp.send_all(b"PROXY TCP4 192.0.2.1 ")
    assert await tcp.receive_some(10) == b""
    await tcp.aclose()
    assert "PROXY header and handshake timed out after 5s" in caplog.text


async def test_proxy_from_refuses_other_balancers(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    [address] = await start_server(nursery, server_config, proxy_protocol=True, proxy_from=["192.0.2.0/24"])
    header = encode_v1(("203.0.113.7", 1), ("127.0.0.1", 2))
    with pytest.raises(ClientError):
        await echo_once(address, client_config, b"x", proxy_header=header)
    assert "refused: PROXY header not accepted from this address (--proxy-from)" in caplog.text
    [address2] = await start_server(
        nursery, server_config, proxy_protocol=True, proxy_from=["127.0.0.0/8", "::1"]
    )
    assert (await echo_once(address2, client_config, b"ok", proxy_header=header)).received == 2


async def test_proxy_from_refuses_a_silent_stranger_at_once(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Not a balancer we listen to: refused before any wait, not held to the deadline.
    [address] = await start_server(
        nursery, server_config, proxy_protocol=True, proxy_from=["192.0.2.0/24"], handshake_timeout=30
    )
    tcp = await trio.open_tcp_stream(address.host, address.port)
    start = trio.current_time()
    assert await tcp.receive_some(10) == b""
    assert trio.current_time() - start < 1
    await tcp.aclose()
    assert "refused: PROXY header not accepted from this address (--proxy-from)" in caplog.text


def test_proxy_from_validation(pki: Path) -> None:
    from trio_tlsecho import TLSFiles

    with pytest.raises(ConfigError, match="bad network 'nope'"):
        ServerConfig(tls=TLSFiles.from_dir(pki, "server"), proxy_from=["nope"])
