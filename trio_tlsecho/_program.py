"""The edges of every process we start: logging set up one way, user mistakes as one line.

The CLI and each ``serve --workers`` worker run through :func:`run_program`, so a
mistake reads the same whichever process found it.  A ``loadgen --workers`` worker
does not print its mistake: it sends it to its parent over its pipe, and the parent
raises it, to be printed here.  The same edge ends a Ctrl-C (exit 130) and a reader
that closed our stdout (``| head``: exit 141, as a process SIGPIPE killed) quietly.

Logs: every record carries its data as attributes (``extra={"event": ..., "peer":
...}``), so that the text line a person reads and the JSON object a log pipeline
reads (``--log-format json``) come from the same record.  :data:`LOG_FIELDS` are the
keys a JSON line may have besides ``time``, ``level``, ``event`` and ``message``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import select
import sys
from collections.abc import Callable

from ._exceptions import ClientError, leaves, user_error

#: The one logger of the package; records carry the connection in their message.
log = logging.getLogger("trio_tlsecho")

PROG = "trio-tlsecho"
LOG_FORMATS = ("text", "json")
#: Record attributes a JSON line carries when a record has them, in this order.
LOG_FIELDS = (
    "worker",
    "peer",
    "subject",
    "issuer",
    "sans",
    "fingerprint",
    "tls_version",
    "cipher",
    "resumed",
    "outcome",
    "duration_s",
    "bytes_in",
    "bytes_out",
    "connections_open",
    "address",
    "count",
    "error",
)
#: Exit statuses as a shell reports a process killed by SIGINT or SIGPIPE.
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line, with stable keys.

    The standard library's ``json`` rather than python-json-logger: that library
    copies every attribute a record has into the object, so its keys would change
    with whatever a caller passed in ``extra``; ours are a fixed, documented set
    (:data:`LOG_FIELDS`), which is what a log pipeline's schema needs, in 30 lines.
    """

    def __init__(self, *, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        line: dict[str, object] = {
            "time": when.isoformat(timespec="microseconds"),  # RFC 3339, zone +00:00
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        for key in LOG_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(level: str | int, *, log_format: str = "text", worker: int | None = None) -> None:
    """Log to stderr at *level* as *log_format* (``text`` or ``json``); a worker's lines name it."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter(worker=worker))
    else:
        prefix = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level.upper() if isinstance(level, str) else level)
    log.propagate = False


def run_program(body: Callable[[], int], *, who: str = PROG) -> int:
    """Run *body*; a user's mistake becomes ``WHO: error: LINE`` on stderr and exit 1 or 2.

    1 for a client that could not get its answer (as curl's failures), 2 for what the
    user must fix first (a flag, a file, a certificate, a port).  Anything else is a
    bug and keeps its traceback, but for the ways a user ends a command: Ctrl-C
    (:data:`EXIT_INTERRUPTED`, whatever the command was doing) and a closed stdout
    (:data:`EXIT_BROKEN_PIPE`).
    """
    try:
        status = body()
        # Here, not at interpreter exit, where a reader gone would print a traceback.
        sys.stdout.flush()
        return status
    except BaseException as exc:
        if _interrupted(exc):
            return EXIT_INTERRUPTED
        if _stdout_closed(exc):
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        error = user_error(exc)
        if error is None:
            raise
        _say_error(f"{who}: error: {error}")
        return 1 if isinstance(error, ClientError) else 2


def _say_error(line: str) -> None:
    """*line* on stderr: as one JSON object (event ``error``) where the logs are JSON, so
    that a log pipeline reads why the program stopped too; else as it is."""
    if any(isinstance(h.formatter, JSONFormatter) for h in log.handlers):
        log.error(line, extra={"event": "error"})
    else:
        print(line, file=sys.stderr, flush=True)


def _leaves(exc: BaseException) -> list[BaseException]:
    return leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]


def _interrupted(exc: BaseException) -> bool:
    # Whatever else failed in the tasks that Ctrl-C cut short is its consequence.
    return any(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc))


def _stdout_closed(exc: BaseException) -> bool:
    """Whether *exc* is nothing but EPIPE, and stdout's reader is gone (not some socket's)."""
    if not all(isinstance(leaf, BrokenPipeError) for leaf in _leaves(exc)):
        return False
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        # A pipe whose reader has closed polls as an error.
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no stdout, or not a real file
        return False


def _silence_stdout() -> None:
    # What is still buffered would fail again, with a traceback, when Python flushes
    # stdout at exit: point the descriptor at /dev/null instead (the Python docs' recipe).
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
