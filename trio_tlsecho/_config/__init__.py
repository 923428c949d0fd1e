"""Frozen, validated configuration: :class:`ServerConfig` and :class:`ClientConfig`.

Every check that needs no I/O happens when a config is built, so that a bad value
fails at the line that made it, whoever made it (the CLI, an embedding app, a test).
May import: ``_exceptions``, ``_net``, ``_tls``, ``_engines``, ``_handlers``.
"""

from ._server import DEFAULT_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT
from ._server import DEFAULT_IDLE_TIMEOUT as DEFAULT_IDLE_TIMEOUT
from ._server import DEFAULT_SHUTDOWN_GRACE as DEFAULT_SHUTDOWN_GRACE
from ._server import ENGINES as ENGINES
from ._server import ClientConfig as ClientConfig
from ._server import ServerConfig as ServerConfig
