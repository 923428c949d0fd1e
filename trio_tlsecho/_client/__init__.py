"""The one-shot client: open a verified mutual-TLS stream, and check one echo.

May import: ``_exceptions``, ``_net``, ``_tls``, ``_handlers``, ``_config``.
"""

from ._echo import EchoResult as EchoResult
from ._echo import echo_once as echo_once
from ._echo import open_client as open_client
from ._talk import Reply as Reply
from ._talk import Sink as Sink
from ._talk import Source as Source
from ._talk import request_once as request_once
from ._talk import talk as talk
