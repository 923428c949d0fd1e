"""The built-in handlers.

Both end at a boundary when the server stops: once nothing is in flight (the peer
quiet while they wait, see :class:`~._api.Receiver`) they return, and the client gets
close_notify at once instead of waiting out the shutdown grace.
"""

from __future__ import annotations

from ._api import Connection


async def echo(conn: Connection) -> None:
    """Send back every byte received until the peer closes or a stop finds it quiet, then close."""
    stream = conn.stream
    late: bytes | bytearray | None = b""
    while late is not None:
        if late:  # came in as the stop cut the wait: sent outside the spent scope
            await stream.send_all(late)
        late = None
        with conn.receiver() as peer:
            while data := await peer.receive():
                if peer.cut:
                    late = data
                    break
                await stream.send_all(data)
    await stream.aclose()


async def discard(conn: Connection) -> None:
    """Read and drop everything until the peer closes or a stop finds it quiet (RFC 863, over mTLS)."""
    more = True
    while more:
        more = False
        with conn.receiver() as peer:
            while await peer.receive():
                if peer.cut:  # bytes came as the stop cut the wait: wait again, in a fresh scope
                    more = True
                    break
    await conn.stream.aclose()
