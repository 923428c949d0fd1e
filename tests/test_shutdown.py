"""Graceful shutdown: listeners close at once, connections get their grace, then are cancelled."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_tlsecho import (
    Address,
    ClientConfig,
    ClientError,
    Connection,
    ServerConfig,
    ServerMetrics,
    echo_once,
    open_client,
    serve,
)

from .processes import ServeProcess

PAYLOAD = os.urandom(8 << 20)


async def stop_unaware_echo(conn: Connection) -> None:
    """An echo that never looks at ``conn.stopping``: only the grace's end stops it."""
    while data := await conn.stream.receive_some(65536):
        await conn.stream.send_all(data)


async def _echo_in_flight(address: Address, client: ClientConfig, halfway: trio.Event) -> bytes:
    """Echo PAYLOAD, setting *halfway* once the first echoed bytes are back."""
    stream = await open_client(address, client)
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, PAYLOAD)
        while len(received) < len(PAYLOAD):
            chunk = await stream.receive_some(65536)
            assert chunk, "server closed the connection mid-echo"
            received += chunk
            halfway.set()
    await stream.aclose()
    return bytes(received)


async def test_graceful_shutdown_completes_echoes_in_flight(
    server_config: ServerConfig, client_config: ClientConfig, caplog: pytest.LogCaptureFixture
) -> None:
    stop = trio.Event()
    halfway = trio.Event()
    results: list[bytes] = []
    async with trio.open_nursery() as nursery:
        [address] = await nursery.start(
            lambda task_status: serve(server_config, shutdown_trigger=stop.wait, task_status=task_status)
        )

        async def client() -> None:
            results.append(await _echo_in_flight(address, client_config, halfway))

        nursery.start_soon(client)
        await halfway.wait()
        stop.set()
        # The listener closes at once: a new client is refused while the old one finishes.
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ClientError, match="connection refused"):
            await echo_once(address, client_config, b"too late")
    # serve() returned by itself once the last connection was done.
    assert results == [PAYLOAD]
    assert "shutting down: listeners closed; 1 open connection gets 10s to finish" in caplog.text
    assert "stopped" in caplog.text


async def test_grace_period_ends_lingering_connections(
    server_config: ServerConfig, client_config: ClientConfig, autojump_clock: trio.testing.MockClock
) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        config = attrs.evolve(server_config, shutdown_grace=7, idle_timeout=None, handler=stop_unaware_echo)
        [address] = await nursery.start(
            lambda task_status: serve(config, shutdown_trigger=stop.wait, task_status=task_status)
        )
        lingering = await open_client(address, client_config)
        start = trio.current_time()
        stop.set()
        # The silent client is cut off when the grace period ends, not before.
        with pytest.raises(trio.BrokenResourceError):
            while await lingering.receive_some(10):
                pass
            raise trio.BrokenResourceError
        assert trio.current_time() - start == pytest.approx(7, abs=0.5)
        await trio.aclose_forcefully(lingering)


async def test_idle_connections_still_time_out_during_the_grace(
    server_config: ServerConfig, client_config: ClientConfig, autojump_clock: trio.testing.MockClock
) -> None:
    stop = trio.Event()
    metrics = ServerMetrics()
    async with trio.open_nursery() as nursery:
        config = attrs.evolve(server_config, shutdown_grace=60, idle_timeout=3, handler=stop_unaware_echo)
        [address] = await nursery.start(
            lambda task_status: serve(
                config, shutdown_trigger=stop.wait, metrics=metrics, task_status=task_status
            )
        )
        idle = await open_client(address, client_config)
        await idle.send_all(b"x")
        assert await idle.receive_some(10) == b"x"
        start = trio.current_time()
        stop.set()
        # Closed by the idle timeout (3 s; a sweep every 0.3 s adds at most two periods),
        # not held to the end of the 60 s grace; cleanly, with close_notify.
        assert await idle.receive_some(10) == b""
        assert trio.current_time() - start <= 3 + 2 * 0.3 + 0.01
        await trio.aclose_forcefully(idle)
    assert metrics.idle_closed == 1


def test_sigterm_lets_echoes_in_flight_finish(
    tmp_path: Path, certs: Path, client_config: ClientConfig
) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path) as server:

        async def main() -> bytes:
            halfway = trio.Event()
            async with trio.open_nursery() as nursery:
                result: list[bytes] = []

                async def client() -> None:
                    result.append(await _echo_in_flight(server.address, client_config, halfway))

                nursery.start_soon(client)
                await halfway.wait()
                server.signal(signal.SIGTERM)
            return result[0]

        assert trio.run(main) == PAYLOAD
        code, err = server.wait()  # it stops by itself once the echo is done
    assert code == 0, err
    assert "SIGTERM received, shutting down" in err
    assert "1 open connection gets 10s to finish" in err
    assert "Traceback" not in err
