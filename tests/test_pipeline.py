"""The connection pipeline (handshake -> authorize -> handler -> close) over memory streams.

Real TLS (the trio engine, our contexts, trustme certificates), no sockets: what is
tested here is the pipeline's own logic - what it counts, logs, and how it ends a
connection - so virtual time (``autojump_clock``) can stand in for every timeout.
Socket-level behaviour (probes, the PROXY header, the socket engine) is tested
against a real server in test_server, test_proxy and test_hostile.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_tlsecho import (
    AllowList,
    ClientConfig,
    Connection,
    Handler,
    ServerConfig,
    TLSFiles,
    client_context,
    echo,
)
from trio_tlsecho._server._pipeline import run_connection
from trio_tlsecho._server._state import ServerState

from .logs import ServerLog

PEER = ("192.0.2.7", 40000)
WHERE = "192.0.2.7:40000"


@pytest.fixture
def state(pki: Path) -> ServerState:
    return ServerState.build(ServerConfig(tls=TLSFiles.from_dir(pki, "server"), handler=echo))


@pytest.fixture
def log(log: ServerLog) -> ServerLog:
    """The server's log, DEBUG and up: nothing about our peer goes unseen."""
    log.set_level(logging.DEBUG)
    return log


class Session:
    """One client over memory streams, and the server's task for it."""

    def __init__(self, nursery: trio.Nursery, state: ServerState, client: TLSFiles) -> None:
        client_transport, server_transport = trio.testing.memory_stream_pair()
        self.done = trio.Event()
        self.client = trio.SSLStream(
            client_transport, client_context(ClientConfig(tls=client)), server_hostname="localhost"
        )
        nursery.start_soon(self._serve, server_transport, state)

    async def _serve(self, transport: trio.abc.Stream, state: ServerState) -> None:
        await run_connection(transport, PEER, state)
        self.done.set()

    async def round_trip(self, data: bytes) -> None:
        await self.client.send_all(data)
        assert await self.client.receive_some(len(data)) == data

    async def read_to_end(self) -> bytes:
        """Everything until the server's close_notify; BrokenResourceError if it closed without."""
        got = bytearray()
        while data := await self.client.receive_some(65536):
            got += data
        return bytes(got)


Connect = Callable[..., Session]


@pytest.fixture
def connect(nursery: trio.Nursery, state: ServerState, pki: Path) -> Connect:
    """``connect(name="client", handler=..., **config_changes)``: a client with *name*'s certificate."""

    def connect(name: str = "client", handler: Handler | None = None, **changes: Any) -> Session:
        served = state
        if handler is not None or changes:
            served = attrs.evolve(
                state, config=attrs.evolve(state.config, **changes), handler=handler or state.handler
            )
        return Session(nursery, served, TLSFiles.from_dir(pki, name))

    return connect


def counted(state: ServerState) -> dict[str, int]:
    return {str(result): n for result, n in state.metrics.handshakes.items() if n}


async def test_a_finished_conversation_ends_with_close_notify(
    connect: Connect, state: ServerState, log: ServerLog
) -> None:
    session = connect()
    await session.round_trip(b"hello")
    await session.client.aclose()
    await session.done.wait()
    assert counted(state) == {"ok": 1}
    assert state.metrics.connections_total == 1
    assert state.metrics.connections_open == 0
    assert state.metrics.bytes_received == state.metrics.bytes_sent == 5
    [connected] = log.about(WHERE)
    assert connected.startswith("connected TLSv1.3 TLS_")
    assert ",CN=client issuer=" in connected
    assert connected.endswith("; 1 client connected")


async def test_the_server_closes_with_close_notify_when_its_handler_returns(connect: Connect) -> None:
    async def greet(conn: Connection) -> None:
        await conn.stream.send_all(b"hi " + (conn.identity.common_name or "").encode())

    session = connect(handler=greet)
    assert await session.read_to_end() == b"hi client"  # b"" at the end: a close_notify came
    await session.done.wait()


async def test_a_client_from_another_ca_is_refused_with_its_alert(
    nursery: trio.Nursery, state: ServerState, pki: Path, other_pki: Path, log: ServerLog
) -> None:
    stranger = TLSFiles(cert=other_pki / "client.pem", key=other_pki / "client.key", ca=pki / "ca.pem")
    session = Session(nursery, state, stranger)
    # TLS 1.3: the client's side of the handshake completes before the server has
    # looked at its certificate; the refusal arrives on its first read.
    with pytest.raises(trio.BrokenResourceError) as refused:
        await session.client.do_handshake()
        await session.read_to_end()
    assert isinstance(refused.value.__cause__, ssl.SSLError)
    assert refused.value.__cause__.reason == "TLSV1_ALERT_UNKNOWN_CA"
    await session.done.wait()
    assert counted(state) == {"unknown_ca": 1}
    assert state.metrics.connections_total == 0
    [line] = log.about(WHERE)
    assert line.startswith("handshake failed: certificate verify failed: not issued by a trusted CA")


async def test_an_identity_not_on_the_allow_list_is_refused_after_the_handshake(
    connect: Connect, state: ServerState, log: ServerLog
) -> None:
    session = connect("alice", allow=AllowList(common_names=["client"]))
    with pytest.raises(trio.BrokenResourceError):  # closed without close_notify
        await session.read_to_end()
    await session.done.wait()
    assert counted(state) == {"identity_refused": 1}
    [line] = log.about(WHERE)
    assert line.startswith("refused: identity not allowed: subject=")
    assert ",CN=alice sans=DNS:alice sha256=" in line


async def test_a_silent_client_times_out_in_the_handshake(
    connect: Connect,
    state: ServerState,
    log: ServerLog,
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = connect()  # never sends its hello
    start = trio.current_time()
    with trio.fail_after(60):  # virtual time: only a hang would reach it
        await session.done.wait()
    assert counted(state) == {"timeout": 1}
    assert trio.current_time() - start >= state.config.handshake_timeout
    assert log.about(WHERE) == ["handshake timed out after 10s"]


async def test_an_idle_connection_is_closed_with_close_notify(
    nursery: trio.Nursery, pki: Path, log: ServerLog, autojump_clock: trio.testing.MockClock
) -> None:
    state = ServerState.build(ServerConfig(tls=TLSFiles.from_dir(pki, "server"), idle_timeout=5))
    nursery.start_soon(state.liveness.run)  # the idle sweep, as serve() runs it
    session = Session(nursery, state, TLSFiles.from_dir(pki, "client"))
    await session.round_trip(b"ping")
    sent_at = trio.current_time()
    assert await session.read_to_end() == b""  # an idle close is a clean one
    assert 5 <= trio.current_time() - sent_at <= 5 + state.liveness.period + 0.01
    await session.done.wait()
    assert state.metrics.idle_closed == 1
    assert log.about(WHERE)[1:] == ["closed: idle for 5s"]


@pytest.mark.parametrize(
    ("failure", "logged"),
    [
        (ValueError("boom"), "handler error: ValueError: boom"),
        (
            ExceptionGroup("in the handler's nursery", [KeyError("k"), OSError("disk")]),
            "handler error: KeyError: 'k'; OSError: disk",
        ),
    ],
    ids=["exception", "group"],
)
async def test_a_handler_error_is_logged_and_ends_the_connection_without_close_notify(
    connect: Connect, state: ServerState, log: ServerLog, failure: Exception, logged: str
) -> None:
    async def broken(conn: Connection) -> None:
        await conn.stream.send_all(b"half a rep")
        raise failure

    session = connect(handler=broken)
    got = bytearray()
    with pytest.raises(trio.BrokenResourceError):  # no close_notify: it must not look complete
        while data := await session.client.receive_some(65536):
            got += data
    assert got == b"half a rep"
    await session.done.wait()
    assert state.metrics.handler_errors == 1
    assert log.about(WHERE)[1:] == [logged]
    assert len(log.problems()) == 1


async def test_a_connection_lost_under_the_handler_is_one_info_line(
    connect: Connect, state: ServerState, log: ServerLog
) -> None:
    session = connect()
    await session.round_trip(b"x")
    await trio.aclose_forcefully(session.client)  # no close_notify: a cut connection
    await session.done.wait()
    assert log.about(WHERE)[1:] == ["connection lost: peer closed the connection without a TLS close_notify"]
    assert state.metrics.handler_errors == 0
    assert not [r for r in log.records if r.levelno >= logging.WARNING]


async def test_a_cancelled_connection_is_closed_without_close_notify(state: ServerState, pki: Path) -> None:
    # The shutdown grace ran out: the handler is cancelled mid-conversation.
    async with trio.open_nursery() as connections:
        session = Session(connections, state, TLSFiles.from_dir(pki, "client"))
        await session.round_trip(b"x")
        connections.cancel_scope.cancel()
    with pytest.raises(trio.BrokenResourceError):
        await session.read_to_end()
    assert state.metrics.connections_open == 0
