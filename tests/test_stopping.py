"""A graceful stop reaches handlers: ``conn.stopping``, and built-ins that finish at a boundary.

Idle connections end with close_notify at once (within ``STOP_QUIET`` of their last
byte) instead of at the end of the grace; a transfer in flight still gets the grace
(``test_shutdown``).  In-process with both engines in virtual time, then the program
under SIGTERM.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_tlsecho import (
    Address,
    ClientConfig,
    Connection,
    Handler,
    PeerIdentity,
    ServerConfig,
    ServerMetrics,
    discard,
    echo,
    open_client,
    serve,
)
from trio_tlsecho._handlers import STOP_QUIET

from .logs import HANG
from .processes import ServeProcess

IDENTITY = PeerIdentity(
    subject="CN=test", issuer="CN=ca", common_name="test", sans=(), fingerprint_sha256="0" * 64, not_after=""
)


async def _serve_until(
    nursery: trio.Nursery, config: ServerConfig, stop: trio.Event, metrics: ServerMetrics | None = None
) -> Address:
    [address] = await nursery.start(
        lambda task_status: serve(
            config, shutdown_trigger=stop.wait, metrics=metrics, task_status=task_status
        )
    )
    return address


@pytest.mark.parametrize("handler", [echo, discard], ids=["echo", "discard"])
async def test_idle_connections_end_with_close_notify_when_the_stop_begins(
    server_config: ServerConfig,
    client_config: ClientConfig,
    autojump_clock: trio.testing.MockClock,
    handler: Handler,
) -> None:
    stop = trio.Event()
    metrics = ServerMetrics()
    config = attrs.evolve(server_config, handler=handler, shutdown_grace=30, idle_timeout=None)
    async with trio.open_nursery() as nursery:
        address = await _serve_until(nursery, config, stop, metrics)
        clients = [await open_client(address, client_config) for _ in range(4)]
        for client in clients:
            await client.send_all(b"ping")
            if handler is echo:
                assert await client.receive_some(10) == b"ping"
        await trio.testing.wait_all_tasks_blocked()
        stopped_at = trio.current_time()
        stop.set()
        for client in clients:
            assert await client.receive_some(10) == b""  # close_notify, not a cut
            await client.aclose()
    # serve() returned by itself: at a boundary, not at the grace's end (30 s).
    assert trio.current_time() - stopped_at <= STOP_QUIET + 0.01
    assert metrics.handler_errors == 0
    assert metrics.bytes_received == 4 * 4


async def test_a_handler_can_wait_for_the_stop(
    server_config: ServerConfig, client_config: ClientConfig, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[bool] = []

    async def farewell(conn: Connection) -> None:
        seen.append(conn.stopping.is_set())
        await conn.stream.send_all(b"hello")
        await conn.stopping.wait()
        seen.append(conn.stopping.is_set())
        await conn.stream.send_all(b", goodbye")

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        address = await _serve_until(nursery, attrs.evolve(server_config, handler=farewell), stop)
        client = await open_client(address, client_config)
        assert await client.receive_some(10) == b"hello"
        stop.set()
        assert await client.receive_some(20) == b", goodbye"
        assert await client.receive_some(20) == b""
        await client.aclose()
    assert seen == [False, True]


# -- the built-ins' receive, over memory streams: every interleaving chosen ----------


Run = Callable[[Handler], Awaitable[tuple[trio.abc.Stream, Connection]]]


@pytest.fixture
def run(nursery: trio.Nursery) -> Run:
    async def run(handler: Handler) -> tuple[trio.abc.Stream, Connection]:
        client, server = trio.testing.memory_stream_pair()
        conn = Connection(
            stream=server,  # type: ignore[arg-type]  # plaintext: the receive is the point
            peer_address=("192.0.2.1", 1),
            identity=IDENTITY,
            tls_version="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
        )
        nursery.start_soon(handler, conn)
        await trio.testing.wait_all_tasks_blocked()
        return client, conn

    return run


async def _read_to_end(stream: trio.abc.ReceiveStream) -> bytes:
    got = bytearray()
    with trio.fail_after(HANG):  # virtual time: only a handler that never ends reaches it
        while data := await stream.receive_some(100):
            got += data
    return bytes(got)


async def test_a_quiet_peer_is_not_cut_before_the_stop(
    run: Run, autojump_clock: trio.testing.MockClock
) -> None:
    client, _ = await run(echo)
    autojump_clock.jump(3600)
    await client.send_all(b"still here")
    assert await client.receive_some(100) == b"still here"


async def test_a_transfer_in_flight_goes_on_while_the_peer_keeps_sending(
    run: Run, autojump_clock: trio.testing.MockClock
) -> None:
    client, conn = await run(echo)
    conn.stopping.set()
    for i in range(10):
        # Each pause shorter than STOP_QUIET: the peer is still sending.
        autojump_clock.jump(STOP_QUIET / 2)
        await client.send_all(b"%d" % i)
        assert await client.receive_some(100) == b"%d" % i
    start = trio.current_time()
    assert await _read_to_end(client) == b""
    assert trio.current_time() - start == pytest.approx(STOP_QUIET)


async def test_bytes_that_come_as_the_stop_cuts_the_wait_are_still_echoed(
    run: Run, autojump_clock: trio.testing.MockClock
) -> None:
    client, conn = await run(echo)
    autojump_clock.jump(1)  # the wait is older than STOP_QUIET: the stop cuts it at once...
    await client.send_all(b"late")  # ...but these bytes have woken it already
    conn.stopping.set()
    assert await client.receive_some(100) == b"late"
    assert await _read_to_end(client) == b""


async def test_discard_reads_on_after_bytes_that_came_as_the_stop_cut_the_wait(
    run: Run, autojump_clock: trio.testing.MockClock
) -> None:
    client, conn = await run(discard)
    autojump_clock.jump(1)
    await client.send_all(b"late")
    conn.stopping.set()
    await trio.testing.wait_all_tasks_blocked()
    await client.send_all(b"more")  # still read: the handler waits again, in a fresh scope
    assert await _read_to_end(client) == b""


async def test_a_stop_set_twice_is_one_stop(run: Run) -> None:
    client, conn = await run(echo)
    conn.stopping.set()
    conn.stopping.set()
    await conn.stopping.wait()
    assert conn.stopping.is_set()
    assert await _read_to_end(client) == b""


# -- the program -----------------------------------------------------------------------


def test_sigterm_with_only_idle_connections_exits_at_once(
    tmp_path: Path, certs: Path, client_config: ClientConfig
) -> None:
    args = ("--listen", "127.0.0.1:0", "--shutdown-grace", "30")
    with ServeProcess(*args, cwd=tmp_path) as server:

        async def main() -> None:
            clients = [await open_client(server.address, client_config) for _ in range(8)]
            for client in clients:
                await client.send_all(b"ping")
                assert await client.receive_some(10) == b"ping"
            await server.stderr.await_line("8 clients connected")
            server.signal(signal.SIGTERM)
            # Far below the 30 s grace: only a server that waited it out (or hung) reaches it.
            with trio.fail_after(10):
                for client in clients:
                    assert await client.receive_some(10) == b""  # close_notify: a clean end
                    await client.aclose()

        trio.run(main)
        code, err = server.wait(timeout=10)
    assert code == 0, err
    assert "8 open connections get 30s to finish" in err
    assert "Traceback" not in err
