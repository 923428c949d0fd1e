"""The C object under an ``ssl.SSLSocket`` (:func:`ssl_io`), for hot paths that call it
once per message."""

from __future__ import annotations

import ssl
from typing import Any, Protocol


class SSLIO(Protocol):
    """What a hot path calls: ``read(n, buffer)`` and ``write(data)``, as ``_sslobj`` has."""

    def read(self, n: int, buffer: memoryview, /) -> int: ...
    def write(self, data: Any, /) -> int: ...


class _PublicIO:
    """:class:`SSLIO` through ``ssl.SSLSocket``'s public methods, where ``_sslobj`` is missing."""

    __slots__ = ("_sock",)

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock

    def read(self, n: int, buffer: memoryview, /) -> int:
        return self._sock.recv_into(buffer, n)

    def write(self, data: Any, /) -> int:
        return self._sock.send(data)


def ssl_io(sock: ssl.SSLSocket) -> SSLIO:
    """*sock*'s C SSL object, or its public methods where there is none.

    ``ssl.SSLSocket`` is a Python layer over the C object in ``_sslobj``
    (``recv_into`` -> ``read`` -> ``_sslobj.read``; ``send`` -> ``_sslobj.write``) that
    adds checks a caller driving the socket makes itself, and two Python frames per read
    and one per write: a few per cent of a small round trip (benchmarks/README.md).  The
    C object differs in one way: a TCP EOF without close_notify raises ``SSLEOFError``
    whatever ``suppress_ragged_eofs`` says.  ``_sslobj`` is None for a socket that was
    no longer connected when wrapped, and absent on a Python without it.
    """
    sslobj = getattr(sock, "_sslobj", None)
    return sslobj if sslobj is not None else _PublicIO(sock)
