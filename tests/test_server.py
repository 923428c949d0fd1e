"""serve(): real mutual TLS on loopback sockets, ports chosen by the kernel."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trio_tlsecho import (
    Address,
    ClientConfig,
    ClientError,
    Connection,
    ListenError,
    ServerConfig,
    TLSFiles,
    echo_once,
    open_client,
    serve,
)
from trio_tlsecho._net import bind_reuse_port
from trio_tlsecho._tls import IdentityCache

from .conftest import Start, assert_fds_settle, ipv6_loopback_available, issue_client, open_fds, start_server
from .logs import ServerLog

NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None)


@pytest.mark.parametrize("size", [1, 5 * 1024 + 35, 4 * 1024 * 1024])
async def test_echo_round_trip(server: Address, client_config: ClientConfig, size: int) -> None:
    payload = os.urandom(size)
    result = await echo_once(server, client_config, payload)
    assert result.received == size
    assert result.mutual is True
    assert result.tls_version == "TLSv1.3"
    assert result.server.common_name == "localhost"


async def test_started_reports_bound_ports(start: Start) -> None:
    addresses = await start(listen=["127.0.0.1:0", "127.0.0.1:0"])
    assert len(addresses) == 2
    assert all(a.host == "127.0.0.1" and a.port > 0 for a in addresses)
    assert addresses[0].port != addresses[1].port


async def _assert_still_serves(address: Address, client_config: ClientConfig) -> None:
    assert (await echo_once(address, client_config, b"still here")).received == 10


async def test_rejects_client_without_certificate(
    server: Address, client_config: ClientConfig, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    no_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    stream = await open_client(server, client_config, ssl_context=no_cert)
    # TLS 1.3: the client's handshake completes; the refusal arrives on the first read.
    with pytest.raises(trio.BrokenResourceError) as info:
        await stream.send_all(b"hello")
        await stream.receive_some(100)
    await trio.aclose_forcefully(stream)
    assert "CERTIFICATE_REQUIRED" in repr(info.value.__cause__)
    await _assert_still_serves(server, client_config)
    assert "handshake failed: peer did not present a client certificate" in caplog.text


def _from_another_ca(pki: Path, other_pki: Path, tmp_path: Path) -> TLSFiles:
    return TLSFiles(cert=other_pki / "client.pem", key=other_pki / "client.key", ca=pki / "ca.pem")


def _expired(pki: Path, other_pki: Path, tmp_path: Path) -> TLSFiles:
    ended = NOW - dt.timedelta(days=1)
    return issue_client(pki, tmp_path, "expired", not_before=NOW - dt.timedelta(days=30), not_after=ended)


def _not_yet_valid(pki: Path, other_pki: Path, tmp_path: Path) -> TLSFiles:
    begins = NOW + dt.timedelta(days=1)
    return issue_client(pki, tmp_path, "early", not_before=begins, not_after=NOW + dt.timedelta(days=30))


@pytest.mark.parametrize(
    ("certificate", "client_error", "logged"),
    [
        pytest.param(_from_another_ca, "unknown CA", "not issued by a trusted CA", id="another-ca"),
        pytest.param(_expired, "expired", "expired", id="expired"),
        pytest.param(_not_yet_valid, r"bad certificate|rejected", "not yet valid", id="not-yet-valid"),
    ],
)
async def test_rejects_a_certificate_it_cannot_verify(
    server: Address,
    client_config: ClientConfig,
    pki: Path,
    other_pki: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    certificate: Callable[[Path, Path, Path], TLSFiles],
    client_error: str,
    logged: str,
) -> None:
    refused = ClientConfig(tls=certificate(pki, other_pki, tmp_path))
    with pytest.raises(ClientError, match=client_error):
        await echo_once(server, refused, b"let me in")
    await _assert_still_serves(server, client_config)
    assert f"certificate verify failed: {logged}" in caplog.text


async def test_rejects_plain_text_and_keeps_serving(
    server: Address, client_config: ClientConfig, caplog: pytest.LogCaptureFixture
) -> None:
    tcp = await trio.open_tcp_stream(server.host, server.port)
    await tcp.send_all(b"GET / HTTP/1.0\r\n\r\n")
    answer = await tcp.receive_some(100)
    await tcp.aclose()
    # Closed by the server: at most a TLS alert record, never an echo of the bytes.
    assert answer == b"" or answer.startswith(b"\x15\x03")
    await _assert_still_serves(server, client_config)
    assert "handshake failed: plain HTTP request on a TLS port" in caplog.text


async def test_handshake_timeout_drops_silent_client(
    start: Start, client_config: ClientConfig, caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    [address] = await start(handshake_timeout=5)
    silent = await trio.open_tcp_stream(address.host, address.port)
    # The server closes on us once the (virtual) timeout passes: EOF, no data.
    assert await silent.receive_some(100) == b""
    await silent.aclose()
    assert "handshake timed out after 5s" in caplog.text


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine has no IPv6 loopback (::1)")
async def test_two_listeners_ipv4_and_ipv6(start: Start, client_config: ClientConfig) -> None:
    v4, v6 = await start(listen=["127.0.0.1:0", "[::1]:0"])
    assert (v4.host, v6.host) == ("127.0.0.1", "::1")
    for address in (v4, v6):
        assert (await echo_once(address, client_config, b"dual stack")).received == 10


async def test_one_handler_failure_leaves_other_connections_alone(
    start: Start, client_config: ClientConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async def fragile(conn: Connection) -> None:
        while data := await conn.stream.receive_some(1024):
            if data == b"boom":
                raise RuntimeError("boom requested")
            await conn.stream.send_all(data)

    [address] = await start(handler=fragile)
    steady = await open_client(address, client_config)
    await steady.send_all(b"first")
    assert await steady.receive_some(100) == b"first"

    with pytest.raises(ClientError, match=r"short echo|TLS connection failed"):
        await echo_once(address, client_config, b"boom")

    await steady.send_all(b"second")
    assert await steady.receive_some(100) == b"second"
    await steady.aclose()
    assert "handler error: RuntimeError: boom requested" in caplog.text
    await _assert_still_serves(address, client_config)


def recording_ok(seen: list[Connection]) -> Callable[[Connection], Awaitable[None]]:
    """A handler that keeps each Connection in *seen* and answers b"ok"."""

    async def record(conn: Connection) -> None:
        seen.append(conn)
        await conn.stream.send_all(b"ok")

    return record


async def test_handler_sees_peer_identity(start: Start, pki: Path) -> None:
    seen: list[Connection] = []
    [address] = await start(handler=recording_ok(seen))
    alice = ClientConfig(tls=TLSFiles.from_dir(pki, "alice"))
    stream = await open_client(address, alice)
    client_port = stream.transport_stream.socket.getsockname()[1]
    assert await stream.receive_some(10) == b"ok"
    await stream.aclose()
    [conn] = seen
    assert conn.identity.common_name == "alice"
    assert "DNS:alice" in conn.identity.sans
    assert "OU=development CA" in conn.identity.issuer
    assert len(conn.identity.fingerprint_sha256) == 64
    assert conn.tls_version == "TLSv1.3"
    assert conn.cipher.startswith("TLS_")
    assert conn.peer_address[0] == "127.0.0.1"
    assert conn.peer_address[1] == client_port


async def test_connections_with_one_certificate_share_one_identity(start: Start, pki: Path) -> None:
    seen: list[Connection] = []
    [address] = await start(handler=recording_ok(seen))
    for name in ("alice", "client", "alice"):
        async with await open_client(address, ClientConfig(tls=TLSFiles.from_dir(pki, name))) as stream:
            assert await stream.receive_some(10) == b"ok"
    first_alice, client, second_alice = (conn.identity for conn in seen)
    assert (first_alice.common_name, client.common_name) == ("alice", "client")
    assert second_alice is first_alice  # one object, not an equal copy per connection


class _FakeTLS:
    """What IdentityCache reads off a TLS stream."""

    def __init__(self, der: bytes, name: str) -> None:
        self.der, self.name = der, name
        self.parsed = 0

    def getpeercert(self, binary_form: bool = False) -> object:
        if binary_form:
            return self.der
        self.parsed += 1
        return {"subject": ((("commonName", self.name),),), "issuer": (), "notAfter": "never"}


def test_identity_cache_is_bounded_and_keeps_the_recently_presented() -> None:
    cache = IdentityCache(size=2)
    a, b, c = _FakeTLS(b"der-a", "a"), _FakeTLS(b"der-b", "b"), _FakeTLS(b"der-c", "c")
    first = cache.peer_identity(a)
    assert first is not None
    assert first.common_name == "a"
    assert cache.peer_identity(a) is first
    assert a.parsed == 1
    cache.peer_identity(b)
    cache.peer_identity(a)  # presented again: "b" is now the one presented longest ago
    cache.peer_identity(c)  # full: "b" goes
    assert len(cache) == 2
    assert cache.peer_identity(a) is first
    assert (a.parsed, b.parsed) == (1, 1)
    cache.peer_identity(b)  # parsed again; "c" goes
    assert b.parsed == 2
    again = cache.peer_identity(a)
    assert again is first
    assert cache.peer_identity(_FakeTLS(b"", "none")) is None  # no certificate


async def test_connection_log_line_has_the_details(
    server: Address, client_config: ClientConfig, log: ServerLog
) -> None:
    await echo_once(server, client_config, b"x")
    [line] = log.messages("connected TLS")
    assert "TLSv1.3 TLS_" in line
    assert "subject=O=trio_tlsecho development PKI,OU=client,CN=client" in line
    assert "issuer=O=trio_tlsecho development PKI,OU=development CA" in line
    assert "sha256=" in line
    assert line.endswith("1 client connected")


async def test_client_count_in_log_tracks_open_connections(
    server: Address, client_config: ClientConfig, log: ServerLog
) -> None:
    first = await open_client(server, client_config)
    await first.send_all(b"a")
    await first.receive_some(10)  # the server has logged the connection by now
    second = await open_client(server, client_config)
    await second.send_all(b"b")
    await second.receive_some(10)
    await first.aclose()
    await second.aclose()
    counts = [line.rsplit(";", 1)[1] for line in log.messages("connected TLS")]
    assert counts == [" 1 client connected", " 2 clients connected"]


async def test_port_in_use_is_one_line_error(server_config: ServerConfig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(
                ListenError, match=rf"^cannot listen on 127.0.0.1:{port}: address already in use$"
            ):
                await start_server(nursery, server_config, listen=[f"127.0.0.1:{port}"])


async def test_failed_second_bind_closes_the_first(server_config: ServerConfig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        async with trio.open_nursery() as nursery:
            with pytest.raises(ListenError):
                await start_server(
                    nursery, server_config, listen=[f"127.0.0.1:{free_port}", f"127.0.0.1:{port}"]
                )
    # The first listener was bound, then released when the second failed.
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", free_port))


async def test_cancelling_the_nursery_stops_the_server(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async with trio.open_nursery() as nursery:
        [address] = await nursery.start(serve, server_config)
        await echo_once(address, client_config, b"before")
        nursery.cancel_scope.cancel()
    with pytest.raises(ClientError, match="connection refused"):
        await echo_once(address, client_config, b"after")


async def test_connect_and_close_is_not_a_warning(
    server: Address, client_config: ClientConfig, log: ServerLog
) -> None:
    log.set_level(logging.DEBUG)
    # What a load balancer's TCP health check or a port scan looks like.
    probe = await trio.open_tcp_stream(server.host, server.port)
    await probe.aclose()
    await log.wait_for("closed before sending anything")
    assert [r.levelno for r in log.find("closed before sending anything")] == [logging.DEBUG]
    await _assert_still_serves(server, client_config)


async def test_a_handler_that_returns_ends_tls_cleanly(start: Start, client_config: ClientConfig) -> None:
    # close_notify, then close: the client reads a clean EOF, not a truncation error
    # ("peer closed the connection without a TLS close_notify").
    async def greet(conn: Connection) -> None:
        await conn.stream.send_all(b"hello, and goodbye")

    [address] = await start(handler=greet)
    stream = await open_client(address, client_config)
    got = b""
    with trio.fail_after(10):
        while data := await stream.receive_some(100):
            got += data
    assert got == b"hello, and goodbye"
    await stream.aclose()


async def test_reuse_port_skips_an_address_family_the_host_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A name that resolves to 127.0.0.1 and ::1 on a host built without IPv6.
    real_socket = trio.socket.socket

    async def both(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))
        v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0))
        return [v6, v4]

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kwargs: object) -> trio.socket.SocketType:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real_socket(family, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trio.socket, "getaddrinfo", both)
    monkeypatch.setattr(trio.socket, "socket", no_ipv6)
    [only] = await bind_reuse_port(Address("dual.example", 0), listen=True)
    try:
        assert only.family == socket.AF_INET
    finally:
        only.close()
    # With no family left, the error is the host's.
    monkeypatch.setattr(trio.socket, "socket", lambda *a, **k: no_ipv6(socket.AF_INET6))
    with pytest.raises(OSError, match="not supported"):
        await bind_reuse_port(Address("dual.example", 0), listen=True)


async def test_a_handler_that_fails_does_not_end_tls_cleanly(
    start: Start, client_config: ClientConfig
) -> None:
    # A crash in mid-reply must not read as a finished conversation: no close_notify.
    async def crash(conn: Connection) -> None:
        await conn.stream.send_all(b"partial reply, then ")
        raise ValueError("handler bug")

    [address] = await start(handler=crash)
    stream = await open_client(address, client_config)
    got = b""
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        while data := await stream.receive_some(100):
            got += data
    assert got == b"partial reply, then "
    await trio.aclose_forcefully(stream)


async def test_a_handler_group_logs_its_errors_and_lets_the_rest_go_on(
    server_config: ServerConfig, client_config: ClientConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # A handler's nursery fails with an error and a SystemExit together: the error is
    # the handler's (one log line), the SystemExit is not ours to swallow.
    async def fail(exc: BaseException) -> None:
        raise exc  # at its first step, before any checkpoint: both children raise

    async def two_children(conn: Connection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, ValueError("child bug"))
            nursery.start_soon(fail, SystemExit(3))

    with trio.fail_after(30), pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            [address] = await start_server(nursery, server_config, handler=two_children)
            with contextlib.suppress(ClientError):
                await echo_once(address, client_config, b"x")
            await trio.sleep_forever()  # until the SystemExit ends the server, and this
    assert info.group_contains(SystemExit, depth=None)
    assert not info.group_contains(ValueError, depth=None)
    assert "handler error: ValueError: child bug" in caplog.text


async def test_keylog_writes_secrets_and_warns(
    start: Start, client_config: ClientConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keylog = tmp_path / "keys.log"
    [address] = await start(keylog=keylog)
    await echo_once(address, client_config, b"secret")
    labels = {
        line.split()[0] for line in keylog.read_text().splitlines() if line and not line.startswith("#")
    }
    assert {"CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels
    assert f"writing TLS session secrets to {keylog}" in caplog.text


def test_keylog_off_by_default(server_config: ServerConfig) -> None:
    assert server_config.keylog is None


async def test_accepted_sockets_are_closed_whatever_the_connection_did(
    server: Address, client_config: ClientConfig, log: ServerLog
) -> None:
    # Connections reach the engine as bare sockets (no trio.SocketStream): every way a
    # connection ends (a probe, refused before the handshake, refused in it, served)
    # still closes its descriptor, and each one is still one access line.
    log.set_level(logging.DEBUG)  # a probe's access line is DEBUG
    before = open_fds()
    probe = await trio.open_tcp_stream(server.host, server.port)
    await probe.aclose()
    plain = await trio.open_tcp_stream(server.host, server.port)
    await plain.send_all(b"GET / HTTP/1.0\r\n\r\n")
    await plain.receive_some(100)
    await plain.aclose()
    result = await echo_once(server, client_config, b"hello")
    assert result.received == 5
    await assert_fds_settle(before)
    ended = [record for record in log.find("ended") if getattr(record, "event", "") == "connection_closed"]
    assert sorted(record.outcome for record in ended) == ["ok", "probe", "protocol"]  # type: ignore[attr-defined]
