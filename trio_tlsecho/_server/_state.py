"""What every connection of one ``serve()`` shares, built once when it starts."""

from __future__ import annotations

import contextlib
import logging
import ssl

import attrs
import trio

from .._config import ServerConfig
from .._engines import ENGINES, Engine
from .._handlers import Handler, Stopping, resolve_handler
from .._net import ListenAddress
from .._tls import IdentityCache, server_context
from ._liveness import Liveness
from ._metrics import ServerMetrics

log = logging.getLogger("trio_tlsecho")


@attrs.define(eq=False)
class ServerState:
    """Mutable on purpose, and only here: a reload swaps ``ssl_context`` for new
    connections; running ones keep theirs."""

    config: ServerConfig
    handler: Handler
    engine: Engine
    ssl_context: ssl.SSLContext
    metrics: ServerMetrics = attrs.Factory(ServerMetrics)
    liveness: Liveness = attrs.field(init=False)
    identities: IdentityCache = attrs.Factory(IdentityCache)
    #: Set when the graceful stop begins; every connection's ``conn.stopping``.
    stopping: Stopping = attrs.Factory(Stopping)
    #: Free connection slots when ``max_connections`` is set.
    _slots: trio.Semaphore | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.liveness = Liveness(self.metrics, self.config.idle_timeout)
        limit = self.config.max_connections
        self._slots = trio.Semaphore(limit) if limit else None

    @classmethod
    def build(cls, config: ServerConfig, metrics: ServerMetrics | None = None) -> ServerState:
        """Resolve the handler, load the certificates, pick the engine: everything that can fail at start."""
        return cls(
            config=config,
            handler=resolve_handler(config.handler, config.handler_options),
            engine=ENGINES[config.engine],
            ssl_context=server_context(config),
            metrics=metrics if metrics is not None else ServerMetrics(),
        )

    def slot(self, where: ListenAddress) -> contextlib.AbstractAsyncContextManager[object]:
        """An ``async with`` that holds one of ``max_connections`` slots (waiting for one first).

        A listener takes the slot *before* it accepts: at the limit the server stops
        accepting, and the kernel's backlog holds new clients until a connection closes.
        One object per listener, entered once per connection.
        """
        if self._slots is None:
            return _UNLIMITED
        return _Slot(self._slots, where, self.config.max_connections)


class _Slot:
    __slots__ = ("_limit", "_slots", "_where")

    def __init__(self, slots: trio.Semaphore, where: ListenAddress, limit: int | None) -> None:
        self._slots, self._where, self._limit = slots, where, limit

    async def __aenter__(self) -> None:
        if self._slots.value == 0:
            log.warning(
                "%s: %d connections open, the maximum: not accepting until one closes",
                self._where,
                self._limit,
            )
        await self._slots.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots.release()


class _Unlimited:
    __slots__ = ()

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(self, *exc_info: object) -> None:
        pass


_UNLIMITED = _Unlimited()
