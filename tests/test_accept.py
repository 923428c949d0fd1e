"""_accept.accept(): which accept() errors lose one connection and which the listener."""

from __future__ import annotations

import errno
from typing import Any, cast

import pytest
import trio

from trio_tlsecho._net import accept


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
