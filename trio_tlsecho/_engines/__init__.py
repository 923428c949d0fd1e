"""TLS engines: what turns an accepted TCP socket into a counted TLS stream.

An engine is chosen once, when ``serve`` starts; nothing outside this package asks
which one it is.  Owns ``trio.SSLStream``'s wrapper and the socket engine.
May import: ``_exceptions`` only.
"""

from ._base import SEND_PIECE as SEND_PIECE
from ._base import TLSStream as TLSStream
from ._socket import DEFAULT_RECEIVE_SIZE as DEFAULT_RECEIVE_SIZE
from ._socket import SSLSocketStream as SSLSocketStream
from ._socket import open_ssl_socket_stream as open_ssl_socket_stream
from ._trio import Meter as Meter
