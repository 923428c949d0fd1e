"""The edges of every process we start: logging set up one way, user mistakes as one line.

The CLI and each ``serve --workers`` worker run through :func:`run_program`, so a
mistake reads the same whichever process found it.  A ``loadgen --workers`` worker
does not print its mistake: it sends it to its parent over its pipe, and the parent
raises it, to be printed here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from ._exceptions import ClientError, user_error

#: The one logger of the package; records carry the connection in their message.
log = logging.getLogger("trio_tlsecho")

PROG = "trio-tlsecho"


def setup_logging(level: str | int, *, tag: str = "") -> None:
    """Log to stderr at *level*, each line tagged with *tag* (``[worker 2]``) when given."""
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"{tag} " if tag else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level.upper() if isinstance(level, str) else level)
    log.propagate = False


def run_program(body: Callable[[], int], *, who: str = PROG) -> int:
    """Run *body*; a user's mistake becomes ``WHO: error: LINE`` on stderr and exit 1 or 2.

    1 for a client that could not get its answer (as curl's failures), 2 for what the
    user must fix first (a flag, a file, a certificate, a port).  Anything else is a
    bug and keeps its traceback.
    """
    try:
        return body()
    except BaseException as exc:
        error = user_error(exc)
        if error is None:
            raise
        print(f"{who}: error: {error}", file=sys.stderr, flush=True)
        return 1 if isinstance(error, ClientError) else 2
