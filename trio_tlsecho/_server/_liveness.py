"""Byte counts and idle timeouts for live connections, swept once a period.

Theory of operation
-------------------
The per-operation path must stay as cheap as possible: an engine's stream only
adds the length of what moved to two plain ints.
Everything else happens in :class:`Liveness`, one task per server that wakes
every ``period`` seconds and, for each watched connection,

* adds the bytes moved since the last sweep to the server's metrics (and a
  connection's last bytes when it ends, so the totals are exact), and
* cancels the handler of a connection that has moved no byte, in either
  direction, for ``idle_timeout`` seconds.

Moving a cancel-scope deadline on every read and write was the alternative; it
is a heap operation in trio, and it cost more than the whole meter does now.
The price is granularity: a connection is closed between ``idle_timeout`` and
``idle_timeout + period`` after its last byte, and ``period`` is a tenth of the
timeout (between 10 ms and 1 s).  Bytes sent are counted as each piece of at most
``SEND_PIECE`` bytes goes out, so a long send_all to a slow reader is not idle.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn, Protocol

import attrs
import trio

from ._metrics import ServerMetrics

#: The shortest time between two sweeps.
MIN_PERIOD = 0.01


class Counted(Protocol):
    """Anything that counts the bytes it moved (every engine's ``TLSStream``)."""

    received: int
    sent: int
    #: Moves while a long send makes headway, before ``sent`` does.
    send_progress: int


@attrs.define(eq=False)
class _Watched:
    scope: trio.CancelScope | None
    last_moved: float
    received: int = 0  # what has been added to the metrics so far
    sent: int = 0
    send_progress: int = 0


@attrs.define(eq=False)
class Watching:
    """The ``with`` block of :meth:`Liveness.watching`: a cancel scope the sweep may cancel."""

    liveness: Liveness
    stream: Counted
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    def __enter__(self) -> trio.CancelScope:
        self.liveness.watch(self.stream, self.scope, trio.current_time())
        return self.scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        try:
            return self.scope.__exit__(*exc_info)
        finally:
            # Before the stream is closed: a client that reads the server's EOF must find
            # its bytes in the metrics already.
            self.liveness.forget(self.stream)


class Liveness:
    """The live connections of one server: their byte counts and their idleness."""

    def __init__(self, metrics: ServerMetrics, idle_timeout: float | None) -> None:
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        # A tenth of the timeout, within bounds: a sweep a second at most apart, and at
        # least 10 ms apart (an idle timeout of a microsecond must not spin a core).
        self.period = max(MIN_PERIOD, min(1.0, idle_timeout / 10)) if idle_timeout is not None else 1.0
        self._watched: dict[Counted, _Watched] = {}

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, meter: Counted, scope: trio.CancelScope | None, now: float) -> None:
        """Count *meter*'s bytes; cancel *scope* if it idles (``None``: count only)."""
        watched = self._watched.get(meter)
        if watched is None:
            self._watched[meter] = _Watched(scope, now)
        else:
            watched.scope, watched.last_moved = scope, now

    def watching(self, stream: Counted) -> Watching:
        """Watch *stream* for a ``with`` block, which is cancelled if the stream idles.

        One object per connection, no generator: an idle connection sits in this block.
        """
        return Watching(self, stream)

    def forget(self, meter: Counted) -> None:
        """The connection is over: count its last bytes and stop watching it."""
        watched = self._watched.pop(meter, None) or _Watched(None, 0.0)
        self._flush(meter, watched)

    def sweep(self, now: float) -> None:
        """Flush byte counts, and cancel connections idle for ``idle_timeout``."""
        idle = self.idle_timeout if self.idle_timeout is not None else math.inf
        for meter, watched in self._watched.items():
            if self._flush(meter, watched) or meter.send_progress != watched.send_progress:
                watched.send_progress = meter.send_progress
                watched.last_moved = now
            elif watched.scope is not None and now - watched.last_moved >= idle:
                watched.scope.cancel()

    def _flush(self, meter: Counted, watched: _Watched) -> bool:
        received, sent = meter.received - watched.received, meter.sent - watched.sent
        if not (received or sent):
            return False
        self.metrics.bytes_received += received
        self.metrics.bytes_sent += sent
        watched.received, watched.sent = meter.received, meter.sent
        return True

    async def run(self) -> NoReturn:
        """Sweep every ``period`` seconds, until cancelled."""
        while True:
            await trio.sleep(self.period)
            self.sweep(trio.current_time())
