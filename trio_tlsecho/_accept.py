"""accept() that survives running out of file descriptors (or memory) for a while."""

from __future__ import annotations

import errno
import logging

import trio

log = logging.getLogger("trio_tlsecho")

# Temporary resource exhaustion on accept(): wait and retry rather than die (trio's
# ACCEPT_CAPACITY_ERRNOS).  Anything else is a bug or a closed socket and propagates.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_PAUSE = 0.100


async def accept(listener: trio.SocketListener, where: object) -> trio.SocketStream:
    """The next connection; pauses and retries while the process is out of descriptors."""
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            log.error("%s: accept failed: %s; pausing %d ms", where, exc.strerror, CAPACITY_PAUSE * 1000)
            await trio.sleep(CAPACITY_PAUSE)
