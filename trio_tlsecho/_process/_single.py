"""A server as an operating-system process: signals become graceful stop and reload.

SIGTERM or SIGINT starts a graceful stop (listeners close, connections get the
grace period); the same signal again stops at once.  SIGHUP reloads
certificates.  What a signal means is decided in :mod:`._signals`; this module
does it.  Used by ``serve`` on its own and by every ``--workers`` worker, so
that one process and N behave alike.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Callable

import trio

from .._config import ServerConfig
from .._net import Address
from .._server import ServerMetrics, serve, serve_metrics
from ._signals import STOP_SIGNALS, Action, SignalState, log_action

_MESSAGES = {
    Action.RELOAD: "%s received, reloading certificates",
    Action.STOP: "%s received, shutting down",
    Action.STOP_NOW: "%s received again, stopping now",
}


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
    state = SignalState(stop_signals)
    shutdown = trio.Event()
    reload_send, reload_receive = trio.open_memory_channel[None](1)
    with trio.open_signal_receiver(*state.signals) as signals:
        async with trio.open_nursery() as outer:
            dispatch = functools.partial(_dispatch, signals, state, shutdown, reload_send, outer.cancel_scope)
            outer.start_soon(dispatch)
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
    state: SignalState,
    shutdown: trio.Event,
    reload: trio.MemorySendChannel[None],
    everything: trio.CancelScope,
) -> None:
    async for signum in signals:
        action = state.receive(signum)
        log_action(action, signum, _MESSAGES)
        if action is Action.RELOAD:
            with contextlib.suppress(trio.WouldBlock):  # one reload already pending is enough
                reload.send_nowait(None)
        elif action is Action.STOP:
            shutdown.set()
        elif action is Action.STOP_NOW:
            everything.cancel()
