"""A server as an operating-system process: signals become graceful stop and reload.

SIGTERM or SIGINT starts a graceful stop (listeners close, connections get the
grace period); the same signal again stops at once.  SIGHUP reloads
certificates.  Used by ``serve`` on its own and by every ``--workers`` worker,
so that one process and N behave alike.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable

import trio

from .._config import ServerConfig
from .._net import Address
from .._server import ServerMetrics, serve, serve_metrics

log = logging.getLogger("trio_tlsecho")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve_until_signalled(
    config: ServerConfig,
    *,
    on_started: Callable[[list[Address]], None],
    metrics: ServerMetrics | None = None,
    metrics_address: Address | None = None,
    stop_signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
) -> None:
    """Serve until a stop signal, then stop gracefully; returns when every connection is done."""
    metrics = metrics if metrics is not None else ServerMetrics()
    shutdown = trio.Event()
    reload_send, reload_receive = trio.open_memory_channel[None](1)
    with trio.open_signal_receiver(*stop_signals, signal.SIGHUP) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(_dispatch, signals, shutdown, reload_send, outer.cancel_scope)
            if metrics_address is not None:
                bound = await outer.start(serve_metrics, metrics, metrics_address)
                print(f"metrics on http://{bound}/metrics", flush=True)
            serving = functools.partial(
                serve,
                config,
                shutdown_trigger=shutdown.wait,
                reload_trigger=reload_receive.receive,
                metrics=metrics,
            )
            async with trio.open_nursery() as inner:
                on_started(await inner.start(serving))
            outer.cancel_scope.cancel()  # serve() has returned: stop listening for signals


async def _dispatch(
    signals: AsyncIterator[int],
    shutdown: trio.Event,
    reload: trio.MemorySendChannel[None],
    everything: trio.CancelScope,
) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("SIGHUP received, reloading certificates")
            with contextlib.suppress(trio.WouldBlock):  # one reload already pending is enough
                reload.send_nowait(None)
        elif not shutdown.is_set():
            log.info("%s received, shutting down", name)
            shutdown.set()
        else:
            log.warning("%s received again, stopping now", name)
            everything.cancel()
