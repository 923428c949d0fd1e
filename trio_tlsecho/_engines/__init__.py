"""TLS engines: what turns an accepted transport into a counted TLS stream.

An engine is chosen once, when ``serve`` starts (:func:`engine`), and gives per
connection one :class:`TLSStream`: the handshake, the stream handlers read and write
(the same object as ``Connection.tls``), the refusal with an alert, and a clean or
forceful close.  Nothing outside this package asks which engine it is.  A new engine
is a module here with a ``TLSStream`` subclass, and one entry in ``ENGINES``.
May import: ``_exceptions``, ``_tls``.
"""

from ._base import SEND_PIECE as SEND_PIECE
from ._base import Engine as Engine
from ._base import TLSStream as TLSStream
from ._base import Transport as Transport
from ._base import take_socket as take_socket
from ._socket import DEFAULT_RECEIVE_SIZE as DEFAULT_RECEIVE_SIZE
from ._socket import SSLSocketStream as SSLSocketStream
from ._socket import open_ssl_socket_stream as open_ssl_socket_stream
from ._splice import Spliced as Spliced
from ._splice import SpliceEnd as SpliceEnd
from ._splice import can_splice as can_splice
from ._splice import splice as splice
from ._trio import TrioTLSStream as TrioTLSStream

#: Every engine by the name ``ServerConfig.engine`` and ``serve --engine`` use.
ENGINES: dict[str, Engine] = {
    # trio.SSLStream, the default: the TLS layer trio users know.
    "trio": TrioTLSStream.server,
    # OpenSSL on a non-blocking socket, trio only waits: less Python per operation.
    "socket": SSLSocketStream.server,
}
