"""The ``forward`` handler (an mTLS terminator) against real targets, with each engine.

The targets are plain TCP (or unix) listeners in the test's nursery, an HTTP server
for ``curl``, and HAProxy reading our PROXY v2 header; the PROXY TLVs are decoded by
:func:`decode_v2` below, written from HAProxy's spec and not with our parser.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

import trio_tlsecho
from trio_tlsecho import Address, ClientConfig, ServerConfig, ServerMetrics, open_client, serve
from trio_tlsecho._exceptions import ConfigError
from trio_tlsecho._handlers import resolve_handler
from trio_tlsecho._net import (
    ProxyProtocolError,
    encode_tlv,
    encode_v2,
    parse_proxy_header,
    parse_tlvs,
    ssl_tlv,
)

from .conftest import receive_until
from .logs import ServerLog, error_line
from .processes import run_cli
from .tools import require_tool

Serve = Callable[[trio.SocketStream], Awaitable[None]]


async def start_target(nursery: trio.Nursery, serve_one: Serve) -> str:
    """A plain TCP target on loopback serving each connection with *serve_one*; its ``HOST:PORT``."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, serve_one, [listener])
    return f"127.0.0.1:{listener.socket.getsockname()[1]}"


async def start_forward(
    nursery: trio.Nursery, config: ServerConfig, metrics: ServerMetrics | None = None, **options: str
) -> Address:
    """A ``forward`` server (this test's engine) with *options*, in *nursery*."""
    forward_config = attrs.evolve(config, handler="forward", handler_options=options)
    addresses: list[Address] = await nursery.start(functools.partial(serve, forward_config, metrics=metrics))
    [address] = addresses
    return address


async def count_then_close(tcp: trio.SocketStream) -> None:
    """``wc -c``: read to EOF, answer with the number of bytes, close."""
    total = 0
    while data := await tcp.receive_some(65536):
        total += len(data)
    await tcp.send_all(b"%d\n" % total)
    await tcp.aclose()


async def send_close_notify(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """End our side of the TLS session (close_notify) and keep reading: TLS 1.3's half-close.

    trio's SSLStream has no ``send_eof``; its SSL object can still do it.
    """
    obj = stream._ssl_object
    with pytest.raises(ssl.SSLWantReadError):  # sent ours; the peer's is still to come
        obj.unwrap()
    await stream.transport_stream.send_all(stream._outgoing.read())


async def read_to_end(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until EOF (a close_notify, also one after ours: see :func:`send_close_notify`)."""
    got = bytearray()
    with trio.fail_after(30):
        try:
            while data := await stream.receive_some(65536):
                got += data
        except trio.BrokenResourceError as exc:
            # The ssl module reads the peer's close_notify after ours as this, not as b"".
            if not isinstance(exc.__cause__, ssl.SSLZeroReturnError):
                raise
    return bytes(got)


async def test_client_close_reaches_the_target_and_its_answer_comes_back(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    target = await start_target(nursery, count_then_close)
    address = await start_forward(nursery, server_config, target=target)
    stream = await open_client(address, client_config)
    payload = bytes(range(256)) * 1000  # more than one TLS record, more than one read
    await stream.send_all(payload)
    await send_close_notify(stream)
    # The target saw EOF (shutdown(SHUT_WR)), answered, closed; we get the answer, then close_notify.
    assert await read_to_end(stream) == b"%d\n" % len(payload)
    await stream.aclose()


async def test_a_target_that_does_not_read_stops_the_client(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """Backpressure: ``forward`` holds one read, not everything the client sends."""
    total = 64 * 1024 * 1024  # far more than the loopback socket buffers on the way hold
    go, counted = trio.Event(), trio.Event()
    got = [0]

    async def read_when_told(tcp: trio.SocketStream) -> None:
        await go.wait()
        got[0] = len(await read_to_end(tcp))
        counted.set()

    target = await start_target(nursery, read_when_told)
    address = await start_forward(nursery, server_config, target=target)
    stream = await open_client(address, client_config)
    sent = [0]

    async def send_everything() -> None:
        chunk = b"x" * (1024 * 1024)
        while sent[0] < total:
            await stream.send_all(chunk)
            sent[0] += len(chunk)
        await send_close_notify(stream)

    nursery.start_soon(send_everything)
    await trio.testing.wait_all_tasks_blocked()  # every copy is stuck on a full buffer
    assert sent[0] < total / 2
    go.set()
    await counted.wait()
    assert got[0] == total
    await stream.aclose()


async def test_forwards_to_a_unix_socket(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, tmp_path: Path
) -> None:
    path = tmp_path / "target.sock"
    sock = trio.socket.socket(socket.AF_UNIX)
    await sock.bind(str(path))
    sock.listen()

    async def echo(tcp: trio.SocketStream) -> None:
        while data := await tcp.receive_some(65536):
            await tcp.send_all(data)

    nursery.start_soon(trio.serve_listeners, echo, [trio.SocketListener(sock)])
    address = await start_forward(nursery, server_config, target=f"unix:{path}")
    async with await open_client(address, client_config) as stream:
        await stream.send_all(b"over a unix socket")
        assert await receive_until(stream, 18) == b"over a unix socket"


class _Page(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_target(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server (the standard library's) serving ``page.html``; its ``HOST:PORT``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.html").write_text("<p>hello through forward</p>\n")
    handler = functools.partial(_Page, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()
        thread.join()


async def test_curl_with_a_client_certificate_gets_the_page(
    nursery: trio.Nursery, server_config: ServerConfig, pki: Path, http_target: str
) -> None:
    curl = require_tool("curl", "curl")
    address = await start_forward(nursery, server_config, target=http_target)
    url = f"https://127.0.0.1:{address.port}/page.html"
    args = [curl, "-sS", "--fail", "--cacert", pki / "ca.pem", "--cert", pki / "client.pem"]
    args += ["--key", pki / "client.key", "--max-time", "30", url]
    result = await trio.run_process(
        [str(a) for a in args], capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"<p>hello through forward</p>\n"


async def test_curl_without_a_client_certificate_never_reaches_the_target(
    nursery: trio.Nursery, server_config: ServerConfig, pki: Path, log: ServerLog
) -> None:
    curl = require_tool("curl", "curl")
    reached = trio.Event()

    async def note(tcp: trio.SocketStream) -> None:
        reached.set()

    target = await start_target(nursery, note)
    address = await start_forward(nursery, server_config, target=target)
    url = f"https://127.0.0.1:{address.port}/"
    args = [curl, "-sS", "--cacert", str(pki / "ca.pem"), "--max-time", "30", url]
    result = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode != 0
    await log.wait_for("handshake failed")
    assert not reached.is_set()


# -- PROXY headers -------------------------------------------------------------------


def decode_v2(data: bytes) -> dict[str, object]:
    """A PROXY v2 header decoded from the spec (section 2.2), independently of trio_tlsecho."""
    assert data[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    assert ver_cmd == 0x21, "version 2, command PROXY"
    body = data[16 : 16 + length]
    assert len(body) == length
    assert fam == 0x11, "TCP over IPv4"
    src, dst = socket.inet_ntoa(body[0:4]), socket.inet_ntoa(body[4:8])
    sport, dport = struct.unpack("!HH", body[8:12])
    return {"source": (src, sport), "destination": (dst, dport), "tlvs": _tlvs(body[12:])}


def _tlvs(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        kind, length = data[0], int.from_bytes(data[1:3], "big")
        assert len(data) >= 3 + length
        out.append((kind, data[3 : 3 + length]))
        data = data[3 + length :]
    return out


async def _header_from(
    nursery: trio.Nursery,
    config: ServerConfig,
    client_config: ClientConfig,
    version: str,
    balancer_header: bytes | None = None,
) -> tuple[bytes, tuple[str, int], Address]:
    """Through ``forward`` with *version*: what the target read first, the client's address, the server's.

    With *balancer_header*, the server reads a PROXY header from the client first.
    """
    got: list[bytes] = []
    done = trio.Event()

    async def first_bytes(tcp: trio.SocketStream) -> None:
        data = b""
        while not data.endswith(b"hello"):
            data += await tcp.receive_some(65536)
        got.append(data[: -len(b"hello")])
        done.set()

    target = await start_target(nursery, first_bytes)
    if balancer_header is not None:
        config = attrs.evolve(config, proxy_protocol=True)
    address = await start_forward(nursery, config, target=target, proxy_protocol=version)
    async with await open_client(address, client_config, proxy_header=balancer_header) as stream:
        await stream.send_all(b"hello")
        await done.wait()
        client = stream.transport_stream.socket.getsockname()
    return got[0], client, address


async def test_proxy_v2_names_the_client_and_its_verified_certificate(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, pki: Path
) -> None:
    header, client, address = await _header_from(nursery, server_config, client_config, "v2")
    decoded = decode_v2(header)
    assert decoded["source"] == tuple(client)
    assert decoded["destination"] == ("127.0.0.1", address.port)
    tlvs = dict(decoded["tlvs"])  # type: ignore[call-overload]
    ssl_value = tlvs[0x20]
    client_flags, verify = struct.unpack("!BI", ssl_value[:5])
    assert client_flags == 0x01 | 0x02 | 0x04  # SSL, a certificate on this connection and session
    assert verify == 0  # verified
    sub = dict(_tlvs(ssl_value[5:]))
    assert sub[0x21] == b"TLSv1.3"
    assert sub[0x22] == b"client"
    assert sub[0x23].startswith(b"TLS_")
    identity = _tlvs(tlvs[0xE0])
    der = ssl.PEM_cert_to_DER_cert((pki / "client.pem").read_text())
    assert identity[0] == (0x01, hashlib.sha256(der).digest())
    assert identity[1][0] == 0x02
    assert b"CN=client" in identity[1][1]
    assert (0x03, b"DNS:client") in identity[2:]


async def test_proxy_v1_names_the_client(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    header, client, address = await _header_from(nursery, server_config, client_config, "v1")
    assert header == b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n" % (client[1], address.port)


async def test_a_client_named_by_a_balancer_is_the_one_named_to_the_target(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # The balancer reports an IPv6 client; the server's own socket is IPv4: the header to
    # the target names both in IPv6 (the IPv4 one mapped), as one family must.
    balancer = encode_v2(("2001:db8::7", 4711), ("2001:db8::1", 443))
    header, _, address = await _header_from(nursery, server_config, client_config, "v2", balancer)
    parsed = parse_proxy_header(header)
    assert parsed is not None
    assert parsed[1] == len(header)
    assert parsed[0].source == ("2001:db8::7", 4711)
    assert parsed[0].destination == ("::ffff:127.0.0.1", address.port)


async def test_forward_embedded_as_a_handler_object(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    target = await start_target(nursery, count_then_close)
    config = attrs.evolve(server_config, handler=trio_tlsecho.forward(target=target, connect_timeout=2.5))
    [address] = await nursery.start(serve, config)
    async with await open_client(address, client_config) as stream:
        await stream.send_all(b"12345")
        await send_close_notify(stream)
        assert await read_to_end(stream) == b"5\n"


HAPROXY_READER = """\
global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend from_forward
    bind fd@{fd} accept-proxy
    http-request return status 200 content-type text/plain lf-string {answer}
"""
#: What HAProxy answers: the client as our PROXY header named it.
ANSWER = '"src=%[src]:%[src_port] dst=%[dst]:%[dst_port]"'


async def test_haproxy_reads_our_proxy_v2_header(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    tmp_path: Path,
) -> None:
    haproxy = require_tool("haproxy", "haproxy")
    with socket.socket() as frontend:
        frontend.bind(("127.0.0.1", 0))
        frontend.listen(16)
        port = frontend.getsockname()[1]
        config = tmp_path / "haproxy.cfg"
        config.write_text(HAPROXY_READER.format(fd=frontend.fileno(), answer=ANSWER))
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the trio part)
            [haproxy, "-db", "-f", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=[frontend.fileno()],
        )
    try:
        address = await start_forward(nursery, server_config, target=f"127.0.0.1:{port}", proxy_protocol="v2")
        async with await open_client(address, client_config) as stream:
            client = stream.transport_stream.socket.getsockname()
            await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
            answer = await read_to_end(stream)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    assert answer.endswith(b"src=127.0.0.1:%d dst=127.0.0.1:%d" % (client[1], address.port)), answer


# -- a target that fails --------------------------------------------------------------


async def _through(
    nursery: trio.Nursery, config: ServerConfig, client_config: ClientConfig, **options: str
) -> tuple[trio.SSLStream[trio.SocketStream], ServerMetrics]:
    metrics = ServerMetrics()
    address = await start_forward(nursery, config, metrics, **options)
    stream = await open_client(address, client_config)
    return stream, metrics


async def test_a_refusing_target_is_a_clean_close_a_warning_and_a_count(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    refusing_port: int,
    log: ServerLog,
) -> None:
    stream, metrics = await _through(
        nursery, server_config, client_config, target=f"127.0.0.1:{refusing_port}"
    )
    async with stream:
        assert await read_to_end(stream) == b""  # close_notify: nothing was cut
    line = await log.wait_for(f"target 127.0.0.1:{refusing_port}: cannot connect: Connection refused")
    assert [r.levelname for r in log.find(line)] == ["WARNING"]
    assert metrics.upstream_errors == 1
    assert metrics.handler_errors == 0
    assert log.problems() == []
    assert b"tlsecho_upstream_errors_total 1.0" in metrics.render()
    # The access line names the outcome (and the client got close_notify, above).
    await log.wait_for(" ended upstream_error after ")
    assert [r.outcome for r in log.ended()] == ["upstream_error"]  # type: ignore[attr-defined]


async def test_a_target_that_never_accepts_times_out(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, log: ServerLog
) -> None:
    # A listener with a backlog of 0 that never accepts: one connection fills its queue,
    # and the kernel drops the SYNs after it, so our connect can only time out.
    with socket.socket() as full, socket.socket() as filler:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler.connect(full.getsockname())
        target = f"127.0.0.1:{full.getsockname()[1]}"
        stream, metrics = await _through(
            nursery, server_config, client_config, target=target, connect_timeout="0.3"
        )
        async with stream:
            assert await read_to_end(stream) == b""
    await log.wait_for(f"target {target}: cannot connect: timed out after 0.3s")
    assert metrics.upstream_errors == 1
    assert log.problems() == []


async def test_a_target_that_closes_at_once_closes_the_client(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, log: ServerLog
) -> None:
    async def close(tcp: trio.SocketStream) -> None:
        await tcp.aclose()

    target = await start_target(nursery, close)
    stream, metrics = await _through(nursery, server_config, client_config, target=target)
    async with stream:
        assert await read_to_end(stream) == b""  # close_notify
    assert metrics.upstream_errors == 0
    assert log.problems() == []


async def test_a_target_that_resets_cuts_the_client_without_close_notify(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, log: ServerLog
) -> None:
    async def answer_then_reset(tcp: trio.SocketStream) -> None:
        await receive_until(tcp, 5)
        await tcp.send_all(b"partial")
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await tcp.aclose()  # SO_LINGER 0: a reset, not a FIN

    target = await start_target(nursery, answer_then_reset)
    stream, metrics = await _through(nursery, server_config, client_config, target=target)
    await stream.send_all(b"hello")
    with pytest.raises(trio.BrokenResourceError):  # a ragged EOF: the client can tell it was cut
        await read_to_end(stream)
    await trio.aclose_forcefully(stream)
    await log.wait_for(f"target {target}: connection lost")
    assert metrics.upstream_errors == 1
    assert log.problems() == []


async def test_a_client_that_goes_away_closes_the_targets_connection(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, log: ServerLog
) -> None:
    ended = trio.Event()

    async def wait_for_eof(tcp: trio.SocketStream) -> None:
        await read_to_end(tcp)
        ended.set()

    target = await start_target(nursery, wait_for_eof)
    stream, metrics = await _through(nursery, server_config, client_config, target=target)
    await stream.send_all(b"hello")
    await trio.aclose_forcefully(stream)  # no close_notify: the client is just gone
    await ended.wait()
    await log.wait_for("connection lost")
    assert metrics.upstream_errors == 0
    assert log.problems() == []


async def echo_plain(tcp: trio.SocketStream) -> None:
    while data := await tcp.receive_some(65536):
        await tcp.send_all(data)


async def test_forwarded_bytes_are_counted_and_an_idle_client_is_closed(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, log: ServerLog
) -> None:
    # The byte counts and the idle sweep read the TLS stream's counters, which the
    # socket engine's splice moves without receive_some/send_all.
    target = await start_target(nursery, echo_plain)
    config = attrs.evolve(server_config, idle_timeout=0.5)
    stream, metrics = await _through(nursery, config, client_config, target=target)
    for size in (1, 100, 70000):
        await stream.send_all(b"x" * size)
        assert await receive_until(stream, size) == b"x" * size
    # The sweep closes it between 0.5 and 0.55 s after the last byte.
    assert await read_to_end(stream) == b""
    await log.wait_for(" ended ")
    [record] = log.ended()
    assert (record.outcome, record.bytes_in, record.bytes_out) == ("idle_timeout", 70101, 70101)
    assert (metrics.idle_closed, metrics.bytes_received, metrics.bytes_sent) == (1, 70101, 70101)
    await trio.aclose_forcefully(stream)


# -- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "handler 'forward' needs option 'target'"),
        ({"target": "nowhere"}, "bad target 'nowhere'"),
        ({"target": "127.0.0.1:0"}, "bad target '127.0.0.1:0'"),
        ({"target": "unix:"}, "bad target 'unix:'"),
        ({"target": "h:1", "connect_timeout": "soon"}, "could not convert string to float: 'soon'"),
        ({"target": "h:1", "connect_timeout": "0"}, "connect_timeout must be a positive number"),
        ({"target": "h:1", "proxy_protocol": "v3"}, "proxy_protocol must be one of none, v1, v2"),
        ({"target": "h:1", "proxy": "v2"}, "handler 'forward' has no option 'proxy'"),
    ],
)
def test_bad_options_are_one_line(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_handler("forward", options)


def test_the_cli_refuses_a_bad_target_before_listening(tmp_path: Path, pki: Path) -> None:
    tls = ["--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"), "--ca", str(pki / "ca.pem")]
    args = ["serve", *tls, "--listen", "127.0.0.1:0", "--handler", "forward"]
    result = run_cli(*args, "--handler-option", "target=nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad target 'nowhere'" in error_line(result.stderr)


def test_targets_parse() -> None:
    from trio_tlsecho._handlers._forward import Target

    assert str(Target.parse("[::1]:8080")) == "[::1]:8080"
    assert Target.parse("[::1]:8080").host == "::1"
    assert Target.parse("localhost:80") == Target(host="localhost", port=80)
    assert Target.parse("unix:/run/app.sock") == Target(path="/run/app.sock")


async def test_the_target_connection_has_tcp_nodelay(nursery: trio.Nursery) -> None:
    from trio_tlsecho._handlers._forward import Forward, Target

    async def hold(tcp: trio.SocketStream) -> None:
        await read_to_end(tcp)

    target = await start_target(nursery, hold)
    async with await Forward(Target.parse(target))._connect() as upstream:
        assert upstream._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_our_v2_header_reads_back_with_its_tlvs() -> None:
    tlvs = ssl_tlv(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", common_name="alice", resumed=True)
    raw = encode_v2(("192.0.2.1", 5000), ("127.0.0.1", 443), tlvs + encode_tlv(0xE0, b"x"))
    parsed = parse_proxy_header(raw)
    assert parsed is not None
    header, used = parsed
    assert used == len(raw)
    assert header.source == ("192.0.2.1", 5000)
    [(ssl_type, ssl_value), (custom, value)] = header.tlvs()
    assert (ssl_type, custom, value) == (0x20, 0xE0, b"x")
    assert ssl_value[:5] == b"\x05\x00\x00\x00\x00"  # SSL and CERT_SESS (resumed), verified
    assert parse_tlvs(ssl_value[5:]) == [
        (0x21, b"TLSv1.3"),
        (0x22, b"alice"),
        (0x23, b"TLS_AES_128_GCM_SHA256"),
    ]
    unspec = parse_proxy_header(encode_v2(None, None, tlvs))
    assert unspec is not None
    assert unspec[0].source is None
    assert unspec[0].tlvs()[0][0] == 0x20


def test_a_cut_tlv_is_a_proxy_protocol_error() -> None:
    with pytest.raises(ProxyProtocolError, match="runs past the header"):
        parse_tlvs(b"\x20\x00\x09abc")
    with pytest.raises(ProxyProtocolError, match="cut short"):
        parse_tlvs(b"\x20\x00")
