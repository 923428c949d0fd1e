"""A server as an operating-system process: signals become graceful stop and reload.

SIGTERM or SIGINT starts a graceful stop (listeners close, connections get the
grace period); the same signal again stops at once.  SIGHUP reloads
certificates.  What a signal means is decided in :mod:`._signals`; this module
does it.  Used by ``serve`` on its own and by every ``--workers`` worker, so
that one process and N behave alike.  On its own, it tells systemd (with
``notify``, :mod:`._notify`) when it is ready, reloading and stopping.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from .._config import ServerConfig
from .._net import Address, ListenAddress
from .._server import ServerMetrics, serve, serve_metrics
from ._notify import Notifier, connections_status
from ._signals import STOP_SIGNALS, Action, SignalState, log_action

log = logging.getLogger("trio_tlsecho")

_MESSAGES = {
    Action.RELOAD: "%s received, reloading certificates",
    Action.STOP: "%s received, shutting down",
    Action.STOP_NOW: "%s received again, stopping now",
}


async def serve_until_signalled(
    config: ServerConfig,
    *,
    on_started: Callable[[list[ListenAddress]], None],
    metrics: ServerMetrics | None = None,
    metrics_address: Address | None = None,
    stop_signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
    notify: bool = True,
) -> int | None:
    """Serve until a stop signal, then stop gracefully; returns when every connection is done.

    Returns the signal that began the stop (``None`` if none did: cancelled).

    *notify*: tell ``$NOTIFY_SOCKET`` (systemd) about it; a ``--workers`` worker does not.
    """
    metrics = metrics if metrics is not None else ServerMetrics()
    notifier = Notifier.from_environment() if notify else Notifier(None)
    state = SignalState(stop_signals)
    shutdown = trio.Event()
    reload_send, reload_receive = trio.open_memory_channel[None](1)
    with trio.open_signal_receiver(*state.signals) as signals:
        async with trio.open_nursery() as outer:
            dispatch = functools.partial(
                _dispatch, signals, state, shutdown, reload_send, outer.cancel_scope, notifier
            )
            outer.start_soon(dispatch)
            if metrics_address is not None:
                bound = await outer.start(serve_metrics, metrics, metrics_address)
                announce_metrics(bound)
            serving = functools.partial(
                serve,
                config,
                shutdown_trigger=shutdown.wait,
                reload_trigger=_notifying_reloads(reload_receive.receive, notifier),
                metrics=metrics,
            )
            async with trio.open_nursery() as inner:
                on_started(await inner.start(serving))
                notifier.ready(connections_status(metrics.connections_open))
                outer.start_soon(notifier.report_connections, _counter(metrics), connections_status)
            outer.cancel_scope.cancel()  # serve() has returned: stop listening for signals
    return state.stopped_by


async def _dispatch(
    signals: AsyncIterator[int],
    state: SignalState,
    shutdown: trio.Event,
    reload: trio.MemorySendChannel[None],
    everything: trio.CancelScope,
    notifier: Notifier = Notifier(None),  # noqa: B008 (holds an address, nothing that changes)
) -> None:
    async for signum in signals:
        action = state.receive(signum)
        log_action(action, signum, _MESSAGES)
        if action is Action.RELOAD:
            with contextlib.suppress(trio.WouldBlock):  # one reload already pending is enough
                reload.send_nowait(None)
        elif action is Action.STOP:
            notifier.stopping()
            shutdown.set()
        elif action is Action.STOP_NOW:
            everything.cancel()


def _counter(metrics: ServerMetrics) -> Callable[[], int]:
    def connections_open() -> int:
        return metrics.connections_open

    return connections_open


def _notifying_reloads(
    trigger: Callable[[], Awaitable[object]], notifier: Notifier
) -> Callable[[], Awaitable[None]]:
    """*trigger*, saying RELOADING=1 as each reload starts and READY=1 once it is done.

    ``serve`` awaits its reload trigger again only after the reload it returned for
    is done (reading the files is synchronous), so the next call is the moment to
    say so.
    """
    pending = False

    async def reload_trigger() -> None:
        nonlocal pending
        if pending:
            notifier.ready("serving, certificates reloaded")
        pending = False
        await trigger()
        notifier.reloading()
        pending = True

    return reload_trigger


def announce_metrics(bound: Address) -> None:
    """Where the metrics are: on stdout as the listeners are, and in the log (JSON too)."""
    url = f"http://{bound}/metrics"
    print(f"metrics on {url}", flush=True)
    log.info("metrics on %s", url, extra={"event": "metrics_listening", "address": str(bound)})
