"""The built-in handlers."""

from __future__ import annotations

from ._api import RECEIVE_SIZE, Connection


async def echo(conn: Connection) -> None:
    """Send back every byte received until the peer closes, then close."""
    stream = conn.stream
    while data := await stream.receive_some(RECEIVE_SIZE):
        await stream.send_all(data)
    await stream.aclose()


async def discard(conn: Connection) -> None:
    """Read and drop everything until the peer closes (RFC 863, over mTLS)."""
    stream = conn.stream
    while await stream.receive_some(RECEIVE_SIZE):
        pass
    await stream.aclose()
