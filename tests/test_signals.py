"""Signals: the stop/reload state by plain calls, then a server process that reads them."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import trio

from trio_tlsecho import Address, ClientConfig, ServerConfig, TLSFiles, open_client
from trio_tlsecho._process import serve_until_signalled
from trio_tlsecho._process._signals import Action, Phase, SignalState, log_action
from trio_tlsecho._process._single import _dispatch

from .conftest import receive_until
from .logs import ServerLog

HUP, INT, TERM, USR1 = signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1

# -- the state, by plain calls -----------------------------------------------------------

# Every (phase, signal) of a server's state: what it asks for, and the phase after it.
TRANSITIONS = [
    (Phase.SERVING, HUP, Action.RELOAD, Phase.SERVING),
    (Phase.SERVING, INT, Action.STOP, Phase.STOPPING),
    (Phase.SERVING, TERM, Action.STOP, Phase.STOPPING),
    (Phase.SERVING, USR1, Action.IGNORE, Phase.SERVING),
    # The server stopped reloading when it began to stop: said so, not "reloading".
    (Phase.STOPPING, HUP, Action.NO_RELOAD, Phase.STOPPING),
    (Phase.STOPPING, INT, Action.STOP_NOW, Phase.STOPPING),
    (Phase.STOPPING, TERM, Action.STOP_NOW, Phase.STOPPING),
    (Phase.STOPPING, USR1, Action.IGNORE, Phase.STOPPING),
]


@pytest.mark.parametrize(("phase", "signum", "action", "after"), TRANSITIONS)
def test_every_transition(phase: Phase, signum: int, action: Action, after: Phase) -> None:
    state = SignalState()
    state.phase = phase
    assert state.receive(signum) is action
    assert state.phase is after
    assert state.stopping is (after is Phase.STOPPING)


def test_a_server_starts_serving_and_every_stop_signal_after_the_first_stops_now() -> None:
    state = SignalState()
    assert state.phase is Phase.SERVING
    assert not state.stopping
    actions = [state.receive(s) for s in (HUP, TERM, HUP, INT, TERM)]
    assert actions == [Action.RELOAD, Action.STOP, Action.NO_RELOAD, Action.STOP_NOW, Action.STOP_NOW]


def test_a_worker_stops_on_sigterm_alone() -> None:
    state = SignalState(stop_signals=[TERM])
    assert state.signals == (HUP, TERM)
    assert state.receive(INT) is Action.IGNORE  # the terminal's Ctrl-C is the supervisor's
    assert state.phase is Phase.SERVING
    assert state.receive(TERM) is Action.STOP


def test_the_signals_to_listen_for() -> None:
    assert SignalState().signals == (HUP, INT, TERM)


def test_log_action_in_the_callers_words(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_tlsecho")
    messages = {Action.STOP: "%s received, going", Action.STOP_NOW: "%s received again, going now"}
    log_action(Action.STOP, INT, messages)
    log_action(Action.STOP_NOW, TERM, messages)
    log_action(Action.RELOAD, HUP, messages)  # no words for it: not logged
    log_action(Action.IGNORE, USR1, messages)
    log_action(Action.NO_RELOAD, HUP, messages)  # the same words for every caller
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "SIGINT received, going"),
        (logging.WARNING, "SIGTERM received again, going now"),
        (logging.INFO, "SIGHUP received while stopping: not reloading"),
    ]


# -- what one process does with each action ------------------------------------------------


async def _signals(*signums: int) -> AsyncIterator[int]:
    for signum in signums:
        yield signum


async def _dispatched(signums: Iterable[int]) -> tuple[trio.Event, int, trio.CancelScope]:
    """Feed *signums* to a process's dispatcher: its shutdown event, the reloads queued, its scope."""
    shutdown = trio.Event()
    send, receive = trio.open_memory_channel[None](1)
    everything = trio.CancelScope()
    await _dispatch(_signals(*signums), SignalState(), shutdown, send, everything)
    send.close()
    return shutdown, len([_ async for _ in receive]), everything


async def test_reloads_wait_in_a_queue_of_one() -> None:
    shutdown, reloads, everything = await _dispatched([HUP, HUP, HUP])
    assert reloads == 1  # one reload reads the files as they are by then: enough for all three
    assert not shutdown.is_set()
    assert not everything.cancel_called


async def test_no_reload_is_queued_once_stopping(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_tlsecho")
    shutdown, reloads, _ = await _dispatched([TERM, HUP])
    assert shutdown.is_set()
    assert reloads == 0
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["SIGTERM received, shutting down", "SIGHUP received while stopping: not reloading"]


async def test_the_first_stop_signal_triggers_shutdown_and_the_second_cancels() -> None:
    shutdown, _, everything = await _dispatched([INT])
    assert shutdown.is_set()
    assert not everything.cancel_called
    shutdown, _, everything = await _dispatched([INT, TERM])
    assert shutdown.is_set()
    assert everything.cancel_called


# -- a server process, signalled for real -------------------------------------------------


@pytest.fixture
def config(pki: Path) -> ServerConfig:
    # A grace far longer than any test, and no idle timeout: a connection that ends
    # while the server stops was ended by a "stop now".
    return ServerConfig(
        tls=TLSFiles.from_dir(pki, "server"), listen=["127.0.0.1:0"], shutdown_grace=3600, idle_timeout=None
    )


@contextlib.asynccontextmanager
async def _serving_one_connection(
    config: ServerConfig, client: ClientConfig
) -> AsyncIterator[trio.abc.Stream]:
    """``serve_until_signalled`` (reading signals) with a connection open; exits once it returned."""
    started = trio.Event()
    addresses: list[Address] = []

    def on_started(bound: list[Address]) -> None:
        addresses.extend(bound)
        started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve_until_signalled, config, on_started=on_started))
        await started.wait()
        stream = await open_client(addresses[0], client)
        assert await _echo(stream, b"hello") == b"hello"  # accepted: the server counts it
        yield stream


async def _echo(stream: trio.abc.Stream, data: bytes) -> bytes:
    await stream.send_all(data)
    return await receive_until(stream, len(data), "the connection")


@pytest.mark.parametrize("stop", [TERM, INT], ids=["SIGTERM", "SIGINT"])
async def test_sighup_reloads_and_a_stop_signal_lets_connections_finish(
    config: ServerConfig, client_config: ClientConfig, log: ServerLog, stop: signal.Signals
) -> None:
    async with _serving_one_connection(config, client_config) as stream:
        signal.raise_signal(HUP)
        await log.wait_for("SIGHUP received, reloading certificates")
        await log.wait_for("reloaded certificate")
        signal.raise_signal(stop)
        await log.wait_for(f"{stop.name} received, shutting down")
        await log.wait_for("shutting down: listeners closed; 1 open connection gets 3600s")
        assert await _echo(stream, b"still served") == b"still served"
        await stream.aclose()  # the last connection done: the server returns
    await log.wait_for("stopped")


async def test_a_second_stop_signal_stops_now(
    config: ServerConfig, client_config: ClientConfig, log: ServerLog
) -> None:
    # A guard against a hang (the failure this test is for), not a measurement.
    with trio.fail_after(60):
        async with _serving_one_connection(config, client_config) as stream:
            signal.raise_signal(TERM)
            await log.wait_for("SIGTERM received, shutting down")
            signal.raise_signal(INT)
            assert "SIGINT received again, stopping now" in await log.wait_for("received again")
        # serve_until_signalled returned with a connection open and an hour of grace left.
        try:
            rest = await stream.receive_some()
        except trio.BrokenResourceError:
            rest = b""
        assert rest == b""
        await stream.aclose()
