"""TLS 1.3's half-close, for a client that has said everything but still listens.

RFC 8446 6.1: a ``close_notify`` closes only its sender's direction; the peer may go
on sending until it sends its own.  TLS 1.2 (RFC 5246 7.2.1) has no such thing: the
peer must answer at once with its own and discard what it had still to write, so
there the end of what we send cannot wait for what is still to come back.

trio's ``SSLStream`` has no ``send_eof``, but its SSL object can do it:
``unwrap()`` puts our ``close_notify`` into the outgoing buffer and raises
``SSLWantReadError`` (the peer's is still to come); we then send those bytes under
the stream's own send lock, in line with anything its reader is sending.  Those
are private attributes, read defensively: if trio renames them, the caller is told
the half-close could not be done and behaves as under TLS 1.2.

After ours, the ssl module reports the peer's ``close_notify`` as
``SSLZeroReturnError`` (trio wraps it in ``BrokenResourceError``), not as ``b""``:
:func:`is_peer_close` says that this is the clean end it is.
"""

from __future__ import annotations

import ssl

import trio


async def send_close_notify(stream: trio.SSLStream[trio.SocketStream]) -> bool:
    """Send our ``close_notify`` and keep the stream readable; ``False`` if that is not possible.

    Only under TLS 1.3 (see above); ``False`` leaves the stream as it was.  Raises
    ``BrokenResourceError`` if the connection is gone.
    """
    ssl_object = getattr(stream, "_ssl_object", None)
    outgoing = getattr(stream, "_outgoing", None)
    lock = getattr(stream, "_inner_send_lock", None)
    if (
        stream.version() != "TLSv1.3"
        or not isinstance(ssl_object, ssl.SSLObject)
        or not isinstance(outgoing, ssl.MemoryBIO)
        or not isinstance(lock, trio.StrictFIFOLock)
    ):
        return False
    try:
        ssl_object.unwrap()
    except ssl.SSLWantReadError:
        pass  # ours is written, the peer's is still to come: what a half-close is
    except ssl.SSLError as exc:
        raise trio.BrokenResourceError from exc
    # Taken from the buffer before the lock, as trio does: the FIFO lock keeps the
    # bytes on the wire in the order they left the SSL object.
    data = outgoing.read()
    async with lock:
        await stream.transport_stream.send_all(data)
    return True


def is_peer_close(exc: trio.BrokenResourceError) -> bool:
    """Whether *exc* is the peer's ``close_notify`` arriving after ours: a clean end."""
    return isinstance(exc.__cause__, ssl.SSLZeroReturnError)
