"""What a handler is, what it is given, and the built-in handlers.

A handler is any ``async def handler(conn: Connection) -> None``.  It owns the
conversation but not the connection: the runner in :mod:`trio_tlsecho._server._pipeline` closes
the stream when the handler returns or raises, so a handler never needs a
``finally`` just to clean up.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from .._engines import TLSStream
from .._tls import PeerIdentity

# One TLS record carries at most 16 KiB of plaintext; asking for more per read
# lets trio's SSLStream hand back everything already decrypted in one call.
RECEIVE_SIZE = 65536


@attrs.frozen
class Connection:
    """One accepted, verified mutual-TLS connection."""

    #: Read and write the plaintext here (``receive_some``/``send_all``/``aclose``).  It is
    #: also the TLS layer, whichever engine made it: ``getpeercert()``, ``cipher()``,
    #: ``version()``, ``session_reused``.  Every byte through it is counted (metrics, idle
    #: timeout).
    stream: TLSStream
    #: ``(host, port)`` of the peer as the socket sees it.
    peer_address: tuple[str, int]
    #: The verified client certificate.
    identity: PeerIdentity
    #: ``"TLSv1.3"`` or ``"TLSv1.2"``.
    tls_version: str
    #: The negotiated cipher suite, e.g. ``"TLS_AES_256_GCM_SHA384"``.
    cipher: str

    @property
    def tls(self) -> TLSStream:
        """The TLS layer: the same object as :attr:`stream` (kept for handlers that say ``conn.tls``)."""
        return self.stream


class Handler(Protocol):
    """Serves one connection; returns when the conversation is over."""

    async def __call__(self, conn: Connection, /) -> None: ...
