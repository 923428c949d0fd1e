"""Idle timeout, the connection limit (backpressure) and running out of file descriptors."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trio_tlsecho import ClientConfig, Connection, ServerConfig, echo, echo_once, open_client

from .conftest import Start, start_server
from .processes import ServeProcess, run_cli


async def test_idle_connection_is_closed(
    start: Start, client_config: ClientConfig, caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    [address] = await start(idle_timeout=30)
    stream = await open_client(address, client_config)
    began = trio.current_time()
    # Activity keeps it open well past the idle timeout...
    for _ in range(5):
        await trio.sleep(20)  # virtual time: the peer's think time, not synchronisation
        await stream.send_all(b"ping")
        assert await stream.receive_some(10) == b"ping"
    assert trio.current_time() - began >= 100
    # ...and silence closes it (the fail_after only bounds a broken build's hang).
    with trio.fail_after(1000), pytest.raises(trio.BrokenResourceError):
        while await stream.receive_some(10):
            pass
        raise trio.BrokenResourceError  # a clean EOF counts as closed too
    await trio.aclose_forcefully(stream)
    assert "closed: idle for 30s" in caplog.text


async def test_peer_that_stops_reading_is_idle_too(
    start: Start, client_config: ClientConfig, caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    [address] = await start(idle_timeout=30)
    stream = await open_client(address, client_config)
    sent = 0
    # We write and never read: the server's echo blocks on send, socket buffers fill,
    # and no byte moves until the idle timeout closes the connection.
    with trio.fail_after(1000), pytest.raises(trio.BrokenResourceError):
        for _ in range(100_000):  # bounded: ~6 GiB, far beyond any socket buffer
            await stream.send_all(b"x" * 65536)
            sent += 65536
    await trio.aclose_forcefully(stream)
    assert sent < 256 << 20  # the server stopped reading long before: no unbounded buffering
    assert "closed: idle for 30s" in caplog.text


async def test_max_connections_stops_accepting_until_one_closes(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    open_now = 0
    most = 0

    async def counting_echo(conn: Connection) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            await echo(conn)
        finally:
            open_now -= 1

    [address] = await start_server(nursery, server_config, handler=counting_echo, max_connections=2)
    first = await open_client(address, client_config)
    second = await open_client(address, client_config)
    third_done = trio.Event()

    async def third() -> None:
        result = await echo_once(address, client_config, b"third")
        assert result.received == 5
        third_done.set()

    nursery.start_soon(third)
    # Everyone is blocked: the third client waits for a ServerHello that the server,
    # at its limit, will not send because it has not accepted the connection.
    await trio.testing.wait_all_tasks_blocked()
    assert not third_done.is_set()
    assert "2 connections open, the maximum: not accepting until one closes" in caplog.text
    await first.aclose()
    with trio.fail_after(30):
        await third_done.wait()
    await second.aclose()
    assert most == 2


def test_running_out_of_file_descriptors_does_not_crash(tmp_path: Path, certs: Path) -> None:
    limit = 64
    limited = [
        sys.executable,
        "-c",
        "import resource, sys;"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}));"
        "from trio_tlsecho._cli import main; sys.exit(main(sys.argv[1:]))",
    ]
    flood: list[socket.socket] = []
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path, program=limited) as server:
        try:
            for _ in range(limit + 16):  # more connections than the server has descriptors
                flood.append(socket.create_connection((server.address.host, server.address.port)))
            line = server.stderr.wait_for("accept failed")
            assert "Too many open files; pausing 100 ms" in line
        finally:
            for sock in flood:
                sock.close()
        ok = run_cli("client", "--connect", str(server.address), cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        assert server.proc.poll() is None  # still serving
        code, err = server.stop()
    assert code == 0
    assert "Traceback" not in err
    assert err.count("accept failed") == 1  # once per burst, not every 100 ms
