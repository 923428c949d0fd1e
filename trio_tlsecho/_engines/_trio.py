"""The default engine: ``trio.SSLStream``, counted."""

from __future__ import annotations

import trio

from ._base import SEND_PIECE


class Meter(trio.abc.Stream):
    """A stream that counts the bytes moving through it, and nothing more."""

    __slots__ = ("broken", "received", "sent", "transport")

    #: Always 0: ``sent`` moves with every piece already, and the sweep reads both.
    send_progress = 0

    def __init__(self, transport: trio.abc.Stream) -> None:
        self.transport = transport
        self.received = 0
        self.sent = 0
        #: A send stopped between two pieces: the peer has part of a message, and no
        #: close_notify may follow it (see aclose).
        self.broken = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            raise trio.BrokenResourceError("a send on this stream was cut short")
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size <= SEND_PIECE:
            await self.transport.send_all(data)
            self.sent += size
            return
        # Counted piece by piece, as the socket engine does: a long transfer to a slow
        # reader is not idle.  Every view is released however this ends (see there).
        # trio's SSLStream breaks itself when cancelled inside a send_all, not between
        # two of them: cut short between pieces, this stream breaks instead.
        with memoryview(data) as whole, whole.cast("B") as octets:
            for start in range(0, len(octets), SEND_PIECE):
                with octets[start : start + SEND_PIECE] as piece:
                    try:
                        await self.transport.send_all(piece)
                    except BaseException:
                        self.broken = start > 0  # False at entry (checked above)
                        raise
                    self.sent += len(piece)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.transport.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        if self.broken:  # no close_notify after half a message: it would read as complete
            await trio.aclose_forcefully(self.transport)
        else:
            await self.transport.aclose()
