"""Liveness (``_server/_liveness.py``): byte counts flushed to the metrics, idle connections
cancelled, by sans-io sweeps; and the counts it reads, as the trio engine's TrioTLSStream keeps them."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from trio_tlsecho import ServerMetrics
from trio_tlsecho._engines import SEND_PIECE, TrioTLSStream
from trio_tlsecho._server._liveness import MIN_PERIOD, Liveness


def _meter() -> TrioTLSStream:
    send, _ = trio.testing.memory_stream_pair()
    return TrioTLSStream(send)


async def test_sweep_flushes_bytes_and_cancels_only_the_idle() -> None:
    metrics = ServerMetrics()
    live = Liveness(metrics, idle_timeout=30)
    assert live.period == 1.0
    busy, quiet = _meter(), _meter()
    busy_scope, quiet_scope = trio.CancelScope(), trio.CancelScope()
    live.watch(busy, busy_scope, now=0)
    live.watch(quiet, quiet_scope, now=0)
    for second in range(1, 31):
        busy.received += 10
        busy.sent += 5
        live.sweep(now=second)
    assert (metrics.bytes_received, metrics.bytes_sent) == (300, 150)
    assert quiet_scope.cancel_called  # 30 s without a byte
    assert not busy_scope.cancel_called


@pytest.mark.parametrize("counter", ["sent", "send_progress"])
async def test_writes_alone_keep_a_connection_alive(counter: str) -> None:
    # send_progress: a slow reader of one long send on the socket engine, whose sent
    # moves only when a piece is done, while send_progress moves whenever the peer took bytes.
    live = Liveness(ServerMetrics(), idle_timeout=10)
    assert live.period == 1.0
    meter, scope = _Counts(), trio.CancelScope()
    live.watch(meter, scope, now=0)
    for second in range(1, 50):
        setattr(meter, counter, getattr(meter, counter) + 1)
        live.sweep(now=second)
    assert not scope.cancel_called


class _Counts:
    """What the sweep reads of a connection (the trio engine's send_progress is fixed at 0)."""

    def __init__(self) -> None:
        self.received = self.sent = self.send_progress = 0


async def test_forget_counts_the_last_bytes_and_stops_watching() -> None:
    metrics = ServerMetrics()
    live = Liveness(metrics, idle_timeout=None)
    meter = _meter()
    meter.received = 7  # the handshake, before the connection was watched
    live.watch(meter, None, now=0)
    live.sweep(now=1)
    meter.received += 3
    meter.sent += 4
    live.forget(meter)
    assert (metrics.bytes_received, metrics.bytes_sent) == (10, 4)
    assert len(live) == 0
    unwatched = _meter()
    unwatched.received = 5  # refused during the handshake: never watched
    live.forget(unwatched)
    assert metrics.bytes_received == 15


async def test_no_idle_timeout_never_cancels() -> None:
    live = Liveness(ServerMetrics(), idle_timeout=None)
    scope = trio.CancelScope()
    live.watch(_meter(), scope, now=0)
    live.sweep(now=10**9)
    assert not scope.cancel_called


async def test_short_timeouts_sweep_more_often() -> None:
    assert Liveness(ServerMetrics(), idle_timeout=2).period == 0.2


async def test_a_tiny_timeout_does_not_spin() -> None:
    # --idle-timeout 1e-6 is accepted; a sweep every 100 ns would take a whole core.
    assert Liveness(ServerMetrics(), idle_timeout=1e-6).period == MIN_PERIOD == 0.01


async def test_meter_counts_what_moves() -> None:
    a, b = trio.testing.memory_stream_pair()
    meter = TrioTLSStream(a)
    await meter.send_all(b"hello")
    assert await b.receive_some(10) == b"hello"
    await b.send_all(b"abc")
    assert await meter.receive_some(10) == b"abc"
    assert (meter.sent, meter.received) == (5, 3)
    await meter.aclose()


class _StallingTransport(trio.abc.Stream):
    """Takes *pieces* send_all calls, then blocks; records how it was closed."""

    def __init__(self, pieces: int) -> None:
        self.pieces = pieces
        self.closed_forcefully: bool | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.pieces == 0:
            await trio.sleep_forever()
        self.pieces -= 1
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    async def aclose(self) -> None:
        self.closed_forcefully = trio.current_effective_deadline() == -math.inf
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize(("pieces", "broken"), [(0, False), (1, True)])
async def test_a_send_cut_short_between_pieces_breaks_the_meter(
    pieces: int, broken: bool, autojump_clock: trio.testing.MockClock
) -> None:
    # trio's SSLStream breaks itself only when cancelled inside one of its send_alls;
    # cut between two, after a piece went out, the peer has half a message: no
    # close_notify may follow (it would read as a complete reply).
    transport = _StallingTransport(pieces)
    meter = TrioTLSStream(transport)
    with trio.move_on_after(1) as scope:  # virtual time (autojump)
        await meter.send_all(bytes(3 * SEND_PIECE))
    assert scope.cancelled_caught
    assert meter.broken is broken
    assert meter.sent == pieces * SEND_PIECE
    if broken:
        with pytest.raises(trio.BrokenResourceError):
            await meter.send_all(b"more")
    await meter.aclose()
    assert transport.closed_forcefully is broken
