"""The load generator's exchange loop: its state machine over a scripted TLS socket, and
which runs hand their exchanges to it (against real servers)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from trio_tlsecho import Address, ClientConfig, Connection, ServerConfig
from trio_tlsecho._load import SizeRange, run_load
from trio_tlsecho._load import _client as load_client
from trio_tlsecho._load._exchanger import ExchangeLoop, Handback
from trio_tlsecho._load._stats import ERROR_KINDS, ExchangeIO

from .conftest import start_server
from .test_loadgen import load_config

# -- the state machine, over a scripted socket -------------------------------------------


class ScriptedTLS:
    """Stands in for a non-blocking ``ssl.SSLSocket``: one end of a socket pair, so that
    the loop's ``epoll`` set sees real readiness, with what ``send`` and ``recv_into``
    do scripted.  By default every message sent is echoed at once."""

    def __init__(self) -> None:
        self.near, self.far = socket.socketpair()
        self.near.setblocking(False)
        self.sent: list[bytes] = []
        self.send_calls = 0
        self.recv_calls = 0
        #: Raised (or, an int, returned as a partial write) by the next sends / reads.
        self.send_script: list[BaseException | int] = []
        self.recv_script: list[BaseException] = []
        self.echo = True
        #: Once the queued plaintext is read, reads say the peer closed.
        self.eof = False
        #: Plaintext the next reads return, at most *chunk* bytes each.
        self.plaintext = bytearray()
        self.chunk = 65536

    def fileno(self) -> int:
        return self.near.fileno()

    def deliver(self, data: bytes) -> None:
        """Plaintext arrives: queued for reads, and a byte makes the socket readable."""
        self.plaintext += data
        self.far.send(b"r")

    def send(self, data: memoryview) -> int:
        self.send_calls += 1
        if self.send_script:
            step = self.send_script.pop(0)
            if isinstance(step, BaseException):
                raise step
            data = data[:step]
        self.sent.append(bytes(data))
        if self.echo:
            self.deliver(bytes(data))
        return len(data)

    def recv_into(self, buffer: memoryview, nbytes: int) -> int:
        self.recv_calls += 1
        if self.recv_script:
            raise self.recv_script.pop(0)
        if not self.plaintext:
            self._drain()
            if self.eof:
                return 0
            raise ssl.SSLWantReadError
        n = min(nbytes, len(self.plaintext), self.chunk)
        buffer[:n] = self.plaintext[:n]
        del self.plaintext[:n]
        if not self.plaintext:
            self._drain()
        return n

    def pending(self) -> int:
        return 0

    def _drain(self) -> None:
        try:
            while self.near.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.near.close()
        self.far.close()


class Conn:
    """What ``drive`` takes of a ``ClientConnection``."""

    def __init__(self, sock: ScriptedTLS) -> None:
        self.ssl_socket = sock


class Client:
    """An :class:`Exchanger` that sends *messages* in turn, then says it is finished."""

    def __init__(self, *messages: bytes, close_after_mismatch: bool = True) -> None:
        self.messages = list(messages)
        self.io = ExchangeIO(0)
        self.buffer = memoryview(bytearray(65536))
        self.completed_ios: list[ExchangeIO] = []
        self.close_after_mismatch = close_after_mismatch

    def begin(self, now: float) -> memoryview | None:
        if not self.messages:
            return None
        message = self.messages.pop(0)
        self.io = ExchangeIO(len(message))
        return memoryview(message)

    def completed(self, began: float, ended: float) -> bool:
        assert ended >= began
        self.completed_ios.append(self.io)
        return self.io.mismatched and self.close_after_mismatch


@pytest.fixture
def tls() -> Iterator[ScriptedTLS]:
    sock = ScriptedTLS()
    yield sock
    sock.close()


async def drive(
    client: Client, tls: ScriptedTLS, timeout: float = 10.0
) -> tuple[Handback, Any, ExchangeLoop]:
    loop = ExchangeLoop(timeout)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop.serve)
        handback, error = await loop.drive(client, Conn(tls))  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
    return handback, error, loop


def echoed(io: ExchangeIO) -> tuple[int, int, int, bool]:
    return io.sent, io.received, io.writes, io.mismatched


async def test_exchanges_follow_each_other_until_the_client_is_finished(tls: ScriptedTLS) -> None:
    client = Client(b"one", b"two" * 100, b"3")
    tls.chunk = 7  # the long echo takes several reads
    handback, error, loop = await drive(client, tls)
    assert (handback, error) == (Handback.FINISHED, None)
    assert tls.sent == [b"one", b"two" * 100, b"3"]
    assert [echoed(io) for io in client.completed_ios] == [
        (3, 3, 1, False),
        (300, 300, 1, False),
        (1, 1, 1, False),
    ]
    assert client.completed_ios[1].reads == 43
    assert not loop._slots


@pytest.mark.parametrize(
    "script",
    [
        [ssl.SSLWantWriteError()],
        [ssl.SSLWantReadError()],
        [2],
        [ssl.SSLWantWriteError(), 1, ssl.SSLWantReadError()],
    ],
    ids=["wants-write", "wants-read", "partial", "all-of-them"],
)
async def test_a_send_that_cannot_finish_at_once_goes_on_when_the_socket_is_ready(
    tls: ScriptedTLS, script: list[BaseException | int]
) -> None:
    client = Client(b"hello")
    tls.send_script = list(script)
    if any(isinstance(step, ssl.SSLWantReadError) for step in script):
        tls.far.send(b"r")  # what OpenSSL waits for arrives
    handback, _error, _loop = await drive(client, tls)
    assert handback is Handback.FINISHED
    # The same bytes again after a wait, from where a partial write stopped.
    assert b"".join(tls.sent) == b"hello"
    assert tls.send_calls == len(script) + 1
    assert [echoed(io) for io in client.completed_ios] == [(5, 5, 1, False)]


async def test_a_read_that_must_write_first_waits_for_a_writable_socket(tls: ScriptedTLS) -> None:
    client = Client(b"hello")
    tls.recv_script = [ssl.SSLWantWriteError()]
    handback, _error, _loop = await drive(client, tls)
    assert handback is Handback.FINISHED
    assert [echoed(io) for io in client.completed_ios] == [(5, 5, 1, False)]
    # The read that said "want write", then the one that read the echo.
    assert tls.recv_calls == 2


async def test_a_mismatch_is_committed_and_the_client_decides_to_close(tls: ScriptedTLS) -> None:
    client = Client(b"hello", b"never sent")
    tls.echo = False
    tls.deliver(b"jello")
    handback, _error, _loop = await drive(client, tls)
    assert handback is Handback.CLOSE
    assert [echoed(io) for io in client.completed_ios] == [(5, 5, 1, True)]
    assert tls.sent == [b"hello"]


async def test_a_closed_connection_is_a_short_exchange(tls: ScriptedTLS) -> None:
    client = Client(b"hello")
    tls.echo, tls.eof = False, True
    tls.deliver(b"he")
    handback, _error, _loop = await drive(client, tls)
    # Committed as it ended (two bytes of five); whether to close is the client's call.
    assert handback is Handback.FINISHED
    assert [echoed(io) for io in client.completed_ios] == [(5, 2, 1, False)]


async def test_a_tcp_eof_without_close_notify_is_a_short_exchange_too(tls: ScriptedTLS) -> None:
    # What the C object raises where SSLSocket (suppress_ragged_eofs) returns 0.
    client = Client(b"hello")
    tls.echo = False
    tls.recv_script = [ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol")]
    tls.far.send(b"r")
    handback, error, _loop = await drive(client, tls)
    assert (handback, error) == (Handback.FINISHED, None)
    assert [echoed(io) for io in client.completed_ios] == [(5, 0, 1, False)]


@pytest.mark.parametrize("where", ["send", "recv"])
async def test_a_failing_call_hands_the_connection_back_with_its_error(tls: ScriptedTLS, where: str) -> None:
    client = Client(b"hello", b"again")
    reset = ConnectionResetError(104, "reset by peer")
    if where == "send":
        tls.send_script = [reset]
    else:
        tls.recv_script = [reset]
    handback, error, loop = await drive(client, tls)
    assert (handback, error) == (Handback.FAILED, reset)
    assert client.completed_ios == []  # the client commits a failure, not the loop
    assert not loop._slots


async def test_an_echo_that_does_not_come_in_time_is_handed_back_as_timed_out(
    tls: ScriptedTLS, autojump_clock: trio.testing.MockClock
) -> None:
    client = Client(b"hello")
    tls.echo = False
    start = trio.current_time()
    handback, error, loop = await drive(client, tls, timeout=3.0)
    assert (handback, error) == (Handback.TIMED_OUT, None)
    assert trio.current_time() - start == pytest.approx(3.0)
    assert client.completed_ios == []
    assert not loop._slots


async def test_each_exchange_has_its_own_deadline(
    tls: ScriptedTLS, autojump_clock: trio.testing.MockClock
) -> None:
    # The first echo comes 2 s late (within its 3 s); the second exchange, started then,
    # times out 3 s later, not at the first one's deadline.
    client = Client(b"one", b"two")
    tls.echo = False
    loop = ExchangeLoop(3.0)
    outcome: list[tuple[Handback, float]] = []
    done = trio.Event()

    async def driven() -> None:
        handback, _error = await loop.drive(client, Conn(tls))  # type: ignore[arg-type]
        outcome.append((handback, trio.current_time()))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop.serve)
        start = trio.current_time()
        nursery.start_soon(driven)
        await trio.testing.wait_all_tasks_blocked()  # the first exchange waits for its echo
        autojump_clock.jump(2.0)
        tls.deliver(b"one")
        await done.wait()
        nursery.cancel_scope.cancel()
    [(handback, when)] = outcome
    assert handback is Handback.TIMED_OUT
    assert when - start == pytest.approx(5.0)
    assert [echoed(io) for io in client.completed_ios] == [(3, 3, 1, False)]


async def test_a_client_cancelled_while_driven_leaves_the_loop(tls: ScriptedTLS) -> None:
    client = Client(b"hello")
    tls.echo = False
    loop = ExchangeLoop(10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop.serve)
        with trio.CancelScope() as scope:
            nursery.start_soon(_cancel_when_blocked, scope)
            await loop.drive(client, Conn(tls))  # type: ignore[arg-type]
        assert scope.cancelled_caught
        assert not loop._slots
        nursery.cancel_scope.cancel()


async def _cancel_when_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


# -- which runs use it, against real servers -----------------------------------------------


async def echo_three_then_close(conn: Connection) -> None:
    """Echo three messages, then end the connection (close_notify)."""
    for _ in range(3):
        data = await conn.stream.receive_some(65536)
        if not data:
            return
        await conn.stream.send_all(data)


@pytest.fixture
def task_exchanges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many exchanges client tasks ran themselves (not handed to the loop)."""
    calls: list[int] = []
    exchange = load_client._Client._exchange

    async def counted(self: load_client._Client, began: float, sent: float) -> None:
        calls.append(1)
        await exchange(self, began, sent)

    monkeypatch.setattr(load_client._Client, "_exchange", counted)
    return calls


@pytest.mark.parametrize(
    ("changes", "in_tasks"),
    [
        ({}, 0),
        ({"rate": 2000.0}, 200),
        ({"new_connection_per_request": True}, 200),
        ({"sizes": "70000"}, 200),
    ],
    ids=["closed-loop", "open-loop", "per-request", "large"],
)
async def test_only_steady_closed_loops_are_driven_by_the_loop(
    server: Address,
    client_config: ClientConfig,
    task_exchanges: list[int],
    changes: dict[str, Any],
    in_tasks: int,
) -> None:
    if "sizes" in changes:
        changes = {"sizes": SizeRange.parse(changes["sizes"])}
    config = load_config(server, client_config, clients=2, requests=200, **changes)
    report = await run_load(config)
    assert (report.round_trips, report.error_count, report.mismatches) == (200, 0, 0)
    assert len(task_exchanges) == in_tasks


async def test_a_connection_the_server_ends_is_counted_and_the_client_goes_on(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, task_exchanges: list[int]
) -> None:
    # Each connection: three echoes in the loop, a short read, back to the client task,
    # which reconnects with one exchange of its own and hands the next to the loop again.
    [address] = await start_server(nursery, server_config, handler=echo_three_then_close)
    report = await run_load(load_config(address, client_config, clients=1, requests=12))
    assert report.round_trips + report.errors["short_read"] + report.errors["reset"] == 12
    assert report.round_trips == 9
    assert report.errors == dict.fromkeys(ERROR_KINDS, 0) | {
        "short_read": report.errors["short_read"],
        "reset": report.errors["reset"],
    }
    assert len(task_exchanges) == 2  # the first exchange of the second and third connections


async def test_a_stalled_exchange_does_not_make_the_deadlines_pile_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One connection waits for an echo that never comes while another does 200
    # exchanges: the deadlines held stay one per connection, not one per exchange.
    stalled_tls, busy_tls = ScriptedTLS(), ScriptedTLS()
    stalled_tls.echo = False
    loop = ExchangeLoop(10.0)
    held: list[int] = []
    busy = Client(*[b"x"] * 200)
    completed = busy.completed

    def counting(began: float, ended: float) -> bool:
        held.append(len(loop._deadlines))
        return completed(began, ended)

    busy.completed = counting  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.serve)
            nursery.start_soon(loop.drive, Client(b"never"), Conn(stalled_tls))
            await trio.testing.wait_all_tasks_blocked()
            handback, _error = await loop.drive(busy, Conn(busy_tls))  # type: ignore[arg-type]
            assert handback is Handback.FINISHED
            nursery.cancel_scope.cancel()
    finally:
        stalled_tls.close()
        busy_tls.close()
    assert len(held) == 200
    assert max(held) == 2
