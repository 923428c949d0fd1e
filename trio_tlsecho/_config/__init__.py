"""Frozen, validated configuration: :class:`ServerConfig`, :class:`ClientConfig`, and the
checks of single values that every config and the command line share.

Every check that needs no I/O happens when a config is built, so that a bad value
fails at the line that made it, whoever made it (the CLI, an embedding app, a test);
rules between fields too: the CLI only maps flags to fields.
May import: ``_exceptions``, ``_net``, ``_tls``, ``_engines``, ``_handlers``.
"""

from ._checks import count as count
from ._checks import duration as duration
from ._checks import duration_or_zero as duration_or_zero
from ._checks import from_text as from_text
from ._checks import round_trip_rate as round_trip_rate
from ._checks import seconds as seconds
from ._checks import seconds_or_zero as seconds_or_zero
from ._checks import to_address as to_address
from ._checks import validator as validator
from ._options import HandlerOptions as HandlerOptions
from ._options import handler_option as handler_option
from ._server import DEFAULT_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT
from ._server import DEFAULT_IDLE_TIMEOUT as DEFAULT_IDLE_TIMEOUT
from ._server import DEFAULT_SHUTDOWN_GRACE as DEFAULT_SHUTDOWN_GRACE
from ._server import ENGINES as ENGINES
from ._server import ClientConfig as ClientConfig
from ._server import ServerConfig as ServerConfig
