"""Server metrics: exact counters, reasons for refusals, the Prometheus endpoint."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_tlsecho import (
    Address,
    AllowList,
    ClientConfig,
    ClientError,
    Connection,
    ServerConfig,
    ServerMetrics,
    TLSFiles,
    echo_once,
    open_client,
    serve,
    serve_metrics,
)
from trio_tlsecho._server import HANDSHAKE_RESULTS, Histogram
from trio_tlsecho._server._outcome import Outcome

from .conftest import issue_leaf, receive_until
from .logs import ServerLog
from .processes import ServeProcess, run_cli


async def echo_exactly(conn: Connection) -> None:
    """Echo one message (its length first, one byte) and hang up."""
    want = (await conn.stream.receive_some(1))[0]
    await conn.stream.send_all(await receive_until(conn.stream, want))


async def _one_exchange(address: Address, client: ClientConfig, payload: bytes) -> None:
    stream = await open_client(address, client)
    await stream.send_all(bytes([len(payload)]) + payload)
    assert await receive_until(stream, len(payload)) == payload
    assert await stream.receive_some(1000) == b""  # the handler is done: close_notify
    await trio.aclose_forcefully(stream)


async def test_counters_are_exact(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    pki: Path,
    other_pki: Path,
) -> None:
    metrics = ServerMetrics()
    config = attrs.evolve(server_config, handler=echo_exactly, allow=AllowList(common_names=["client"]))
    [address] = await nursery.start(
        lambda task_status: serve(config, metrics=metrics, task_status=task_status)
    )

    for i in range(7):
        await _one_exchange(address, client_config, bytes([i]) * (10 + i))
    # Application bytes: each client sent a length byte and its payload, and got the payload.
    assert metrics.bytes_received == sum(1 + 10 + i for i in range(7))
    assert metrics.bytes_sent == sum(10 + i for i in range(7))
    assert metrics.connections_total == 7
    assert metrics.connections_open == 0

    # Refusals, each counted under its reason.
    no_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with pytest.raises(ClientError):
        tcp = await trio.open_tcp_stream(address.host, address.port)
        stream = trio.SSLStream(tcp, no_cert, server_hostname="localhost")
        try:
            await stream.do_handshake()
            await stream.send_all(b"x")
            await stream.receive_some(1)
        except trio.BrokenResourceError as exc:
            raise ClientError("refused") from exc
        finally:
            await trio.aclose_forcefully(stream)
    stranger = ClientConfig(
        tls=TLSFiles(cert=other_pki / "client.pem", key=other_pki / "client.key", ca=pki / "ca.pem")
    )
    with pytest.raises(ClientError):
        await echo_once(address, stranger, b"x")
    with pytest.raises(ClientError):
        await echo_once(address, ClientConfig(tls=TLSFiles.from_dir(pki, "alice")), b"x")

    counted = {result: n for result, n in metrics.handshakes.items() if n}
    assert counted == {"ok": 7, "no_cert": 1, "unknown_ca": 1, "identity_refused": 1}
    assert metrics.handshake_failures == 3
    assert metrics.handshake_seconds.count == 7
    assert metrics.connection_seconds.count == 7


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 5.0):
        h.observe(value)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.count == 4
    assert h.total == pytest.approx(5.65)


def test_render_has_every_series_from_the_start() -> None:
    text = ServerMetrics().render().decode()
    for result in HANDSHAKE_RESULTS:
        assert f'tlsecho_handshakes_total{{result="{result}"}} 0.0' in text
    for name in (
        "tlsecho_connections_open 0.0",
        "tlsecho_connections_total 0.0",
        "tlsecho_received_bytes_total 0.0",
        "tlsecho_sent_bytes_total 0.0",
        "tlsecho_handler_errors_total 0.0",
        'tlsecho_handshake_duration_seconds_bucket{le="+Inf"} 0.0',
        "tlsecho_connection_duration_seconds_count 0.0",
    ):
        assert name in text


async def _http(address: Address, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(request)
        response = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                response += chunk
    return response


async def test_metrics_endpoint(nursery: trio.Nursery) -> None:
    metrics = ServerMetrics()
    metrics.handshakes["expired"] += 2
    address = await nursery.start(serve_metrics, metrics, Address("127.0.0.1", 0))
    ok = await _http(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert b'tlsecho_handshakes_total{result="expired"} 2.0' in body
    assert (await _http(address, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await _http(address, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
    assert await _http(address, b"\x16\x03\x01" + b"x" * 9000) == b""  # garbage: closed, no crash
    assert (await _http(address, b"GET / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")


def test_cli_metrics(tmp_path: Path, certs: Path) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", cwd=tmp_path) as server:
        assert server.metrics_url.startswith("http://127.0.0.1:")
        for _ in range(3):
            assert run_cli("client", "--connect", str(server.address), cwd=tmp_path).returncode == 0
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
        assert "tlsecho_connections_total 3.0" in text
        assert 'tlsecho_handshakes_total{result="ok"} 3.0' in text
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.metrics_url.replace("/metrics", "/other"), timeout=10)
        code, err = server.stop()
    assert code == 0, err


async def test_metrics_match_a_load_run(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    from trio_tlsecho import LoadConfig, run_load

    metrics = ServerMetrics()
    [address] = await nursery.start(
        lambda task_status: serve(server_config, metrics=metrics, task_status=task_status)
    )
    config = LoadConfig(
        address=address, client=client_config, clients=4, requests=60, new_connection_per_request=True
    )
    report = await run_load(config)
    assert report.round_trips == 60
    assert report.error_count == 0
    # Each round trip was one connection and one handshake, and the server saw exactly those.
    with trio.fail_after(10):
        while metrics.connections_open:  # the last closes are still being processed
            await trio.testing.wait_all_tasks_blocked()
    assert metrics.connections_total == 60
    assert metrics.handshakes["ok"] == 60
    assert metrics.handshake_failures == 0
    assert metrics.handshake_seconds.count == metrics.connection_seconds.count == 60
    assert metrics.bytes_received == report.bytes_sent
    assert metrics.bytes_sent == report.bytes_received


async def test_a_refusal_near_the_deadline_is_not_also_a_timeout(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    pki: Path,
    other_pki: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = ServerMetrics()
    config = attrs.evolve(server_config, handshake_timeout=1)
    [address] = await nursery.start(
        lambda task_status: serve(config, metrics=metrics, task_status=task_status)
    )
    stranger = ClientConfig(
        tls=TLSFiles(cert=other_pki / "client.pem", key=other_pki / "client.key", ca=pki / "ca.pem")
    )
    stream = await open_client(address, stranger)  # TLS 1.3: our side of the handshake completes
    await trio.sleep(5)  # virtual: a refused peer that neither reads nor closes, past the deadline
    await trio.aclose_forcefully(stream)
    with trio.fail_after(10):
        while metrics.handshake_failures == 0:
            await trio.testing.wait_all_tasks_blocked()
    counted = {result: n for result, n in metrics.handshakes.items() if n}
    assert counted == {"unknown_ca": 1}


async def test_a_certificate_not_for_client_authentication_has_its_own_result(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    pki: Path,
    tmp_path: Path,
    log: ServerLog,
) -> None:
    # Signed by our CA, but its extended key usage is serverAuth only: a server's
    # certificate offered as a client's.  Not "unknown_ca": the operator's fix differs.
    metrics = ServerMetrics()
    [address] = await nursery.start(
        lambda task_status: serve(server_config, metrics=metrics, task_status=task_status)
    )
    server_only = issue_leaf(pki, tmp_path, "a-server", usages=("serverAuth",))
    with pytest.raises(ClientError):
        await echo_once(address, ClientConfig(tls=server_only), b"x")
    with trio.fail_after(10):
        while metrics.handshake_failures == 0:
            await trio.testing.wait_all_tasks_blocked()
    assert {result: n for result, n in metrics.handshakes.items() if n} == {"wrong_purpose": 1}
    [line] = log.messages("handshake failed")
    assert line.endswith(
        "handshake failed: certificate verify failed: not for this use: its extended key usage"
        " does not allow it (unsuitable certificate purpose)"
    )


def test_the_handshake_results_are_the_outcomes() -> None:
    # One vocabulary: what the metrics export is what the pipeline decides.
    assert [str(o) for o in Outcome] == list(HANDSHAKE_RESULTS)
