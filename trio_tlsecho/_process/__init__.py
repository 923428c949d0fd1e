"""The server as operating-system processes: signals, the ``--workers`` supervisor, sd_notify.

May import: ``_exceptions``, ``_program``, ``_net``, ``_tls``, ``_handlers``, ``_config``, ``_server``.
"""

from ._single import serve_until_signalled as serve_until_signalled
from ._workers import supervise as supervise
