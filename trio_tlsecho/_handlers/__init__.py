"""Handlers: what a handler is given (:class:`Connection`), the built-ins, and the registry.

May import: ``_exceptions``, ``_tls`` (the peer's identity), ``_engines`` (the
stream type) and ``_net`` (``forward``'s PROXY header).
"""

from ._api import RECEIVE_SIZE as RECEIVE_SIZE
from ._api import STOP_QUIET as STOP_QUIET
from ._api import Connection as Connection
from ._api import Handler as Handler
from ._api import Receiver as Receiver
from ._api import Stopping as Stopping
from ._builtin import discard as discard
from ._builtin import echo as echo
from ._forward import forward as forward
from ._registry import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._registry import handler_names as handler_names
from ._registry import resolve_handler as resolve_handler
