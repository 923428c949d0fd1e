"""_accept.accept(): which accept() errors lose one connection and which the listener, and how
running out of descriptors is logged."""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any, cast

import pytest
import trio
import trio.testing

from trio_tlsecho._net import accept, accept_socket
from trio_tlsecho._net._accept import BURST_GAP, REPORT_EVERY

from .logs import ServerLog


class _Socket:
    """A listening socket whose accept() fails with *errors* first, then connects a pair."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.accepted: list[trio.socket.SocketType] = []

    async def accept(self) -> tuple[trio.socket.SocketType, tuple[str, int]]:
        await trio.lowlevel.checkpoint()
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, errno.errorcode[code])
        ours, theirs = trio.socket.socketpair()
        self.accepted += [ours, theirs]
        return ours, ("192.0.2.7", 40001)


def listener(sock: _Socket) -> trio.SocketListener:
    stub: Any = type("Listener", (), {"socket": sock})()
    return cast(trio.SocketListener, stub)


PEER_ERRORS = [errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET, errno.ETIMEDOUT]


@pytest.mark.parametrize("code", PEER_ERRORS)
async def test_a_peer_error_skips_that_connection(code: int) -> None:
    sock = _Socket(code, code)
    stream, peer = await accept(listener(sock), "test")
    # The address is accept()'s own, passed through.
    assert peer == ("192.0.2.7", 40001)
    assert isinstance(stream, trio.SocketStream)
    assert sock.errors == []
    for s in sock.accepted:
        s.close()


@pytest.mark.parametrize("code", [errno.EBADF, errno.ENOTSOCK])
async def test_a_closed_listener_is_closed_resource_error(code: int) -> None:
    with pytest.raises(trio.ClosedResourceError):
        await accept(listener(_Socket(code)), "test")


async def test_anything_else_propagates() -> None:
    with pytest.raises(OSError, match="EINVAL") as raised:
        await accept(listener(_Socket(errno.EINVAL)), "test")
    assert raised.value.errno == errno.EINVAL


async def test_running_out_of_descriptors_is_logged_once_per_burst(
    autojump_clock: trio.testing.MockClock, log: ServerLog
) -> None:
    # 30 tries at the limit (3 s of 100 ms pauses), then a descriptor is free.
    sock = _Socket(*[errno.EMFILE] * 30)
    port = listener(sock)
    await accept(port, "127.0.0.1:4433")
    [line] = log.messages("accept")
    assert line == (
        "127.0.0.1:4433: accept failed: EMFILE; pausing 100 ms between tries until descriptors"
        " are free (logged once per burst)"
    )
    [record] = log.find("accept failed")
    assert record.levelno == logging.ERROR
    # Another connection, well after the last failure: the burst is over, and counted.
    autojump_clock.jump(BURST_GAP)
    await accept(port, "127.0.0.1:4433")
    assert log.messages("accept")[1:] == ["127.0.0.1:4433: accepting again after 30 failed accepts over 2.9s"]
    # A new burst is a new line.
    sock.errors = [errno.ENFILE]
    await accept(port, "127.0.0.1:4433")
    assert len(log.messages("accept failed")) == 2
    for s in sock.accepted:
        s.close()


async def test_a_long_burst_reports_its_count_every_minute(
    autojump_clock: trio.testing.MockClock, log: ServerLog
) -> None:
    sock = _Socket(*[errno.EMFILE] * int(REPORT_EVERY * 10 * 1.5))  # 90 s of tries
    await accept(listener(sock), "here")
    assert len(log.messages("accept failed")) == 1
    [still] = log.messages("still failing")
    assert still.startswith("here: accept still failing: EMFILE, 60")  # 600 or 601, as floats add up
    for s in sock.accepted:
        s.close()


async def test_a_burst_cut_short_by_a_stop_is_counted(
    autojump_clock: trio.testing.MockClock, log: ServerLog
) -> None:
    # Out of descriptors until the server stops: no accept succeeds to close the burst,
    # so the stop itself says how many failed.
    sock = _Socket(*[errno.EMFILE] * 1000)
    with trio.move_on_after(2.05):
        await accept(listener(sock), "127.0.0.1:4433")
    assert log.messages("accept")[-1] == "127.0.0.1:4433: stopped accepting after 21 failed accepts over 2.0s"
    [record] = log.find("stopped accepting")
    assert record.levelno == logging.WARNING
    assert record.event == "accept_stopped"  # type: ignore[attr-defined]


async def test_accept_socket_sets_what_a_socket_stream_would() -> None:
    # The server hands the engine the socket itself: it must carry the options
    # trio.SocketStream would have set (no Nagle delay on a handshake flight).
    [port] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with port, await trio.open_tcp_stream(*port.socket.getsockname()) as client:
        sock, peer = await accept_socket(port, "test")
        with sock:
            assert peer == client.socket.getsockname()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            expected = trio.SocketStream(trio.socket.socket()).socket
            with expected:
                for option in (socket.TCP_NODELAY, socket.TCP_NOTSENT_LOWAT):
                    wanted = expected.getsockopt(socket.IPPROTO_TCP, option)
                    assert sock.getsockopt(socket.IPPROTO_TCP, option) == wanted


async def test_accept_socket_skips_peer_errors_and_logs_a_burst_once(
    autojump_clock: trio.testing.MockClock, log: ServerLog
) -> None:
    sock = _Socket(errno.ECONNABORTED, errno.EMFILE, errno.EMFILE)
    accepted, peer = await accept_socket(listener(sock), "here")
    assert isinstance(accepted, trio.socket.SocketType)
    assert peer == ("192.0.2.7", 40001)
    assert len(log.messages("accept failed")) == 1
    for s in sock.accepted:
        s.close()
