"""One process's share of a load run (:class:`Share`): its client tasks, over
:mod:`._transport`, and :func:`run_here`, which runs them.

See :mod:`._run` for the theory of operation (phases, closed and open loop,
what is counted).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable

import attrs
import trio

from .._exceptions import ClientError, causes, connect_failure
from .._tls import describe_tls_error
from ._config import (
    EOF_REASONS,
    PROGRESS_INTERVAL,
    LoadConfig,
    OpenLoopSchedule,
    Progress,
    ProgressCallback,
    classify_error,
    split,
)
from ._exchanger import ExchangeLoop, Handback
from ._stats import ErrorKind, ExchangeIO, Histogram, LoadReport, Recorder
from ._transport import ClientConnection, Target

#: Echoes up to this size are sent, then read.  Larger ones are sent and read at once:
#: a 256 KiB echo can fill both directions' socket buffers and deadlock a client that
#: is still writing while the server waits to write back.
_SEQUENTIAL_MAX = 65536

_now = trio.current_time
#: A connection error is retried (after a back-off) only while the server answered
#: this recently; otherwise the target is unreachable and the run ends at once.
REACHABLE_GRACE = 1.0
#: Messages one process cycles through (a prime: clients stepping by one never align).
MESSAGES = 4093
#: Back-off after a connection error: doubles from the first to the last.
BACKOFF_FIRST = 0.01
BACKOFF_MAX = 1.0
#: Without ramp, the start waits for every client to connect, but at most this share
#: of the duration: clients still connecting then join the run when they are connected.
BARRIER_SHARE = 0.25
#: What ends one exchange (and its connection) and is counted as an error by kind
#: (``ssl.SSLError`` and ``ConnectionError`` are ``OSError``s).
_FAILURES = (OSError, trio.TooSlowError)


# -- one process's share of the clients -------------------------------------------


@attrs.frozen
class Share:
    """One process's part of a load run: all its clients need to know.

    What a worker process is sent (pickled, see :mod:`._workers`); a run in one
    process has the one share of the whole.
    """

    config: LoadConfig
    #: Where to connect, resolved once for every process.
    target: Target
    #: Global index of this process's first client, and how many it runs.
    first_client: int
    count: int
    #: Measured exchanges this process may start; ``None``: until the time is up.
    tickets: int | None
    #: When the whole run ends, on ``time.monotonic()``'s clock (shared by the processes
    #: of one machine, unlike trio's): set by whoever launches the run, see :meth:`launched`.
    ends_at: float | None = None

    def launched(self) -> Share:
        """This share, its run ending ``warmup + duration`` from now (``--duration``
        bounds the whole run, connecting included); unchanged without a duration."""
        cfg = self.config
        if cfg.duration is None:
            return self
        return attrs.evolve(self, ends_at=time.monotonic() + cfg.warmup + cfg.duration)

    @classmethod
    def divide(cls, config: LoadConfig, target: Target, parts: int) -> list[Share]:
        """*config*'s clients and requests in *parts* shares, as even as they go."""
        counts = split(config.clients, parts)
        tickets = split(config.requests, parts) if config.requests is not None else [None] * parts
        firsts = itertools.accumulate(counts[:-1], initial=0)
        return [cls(config, target, *part) for part in zip(firsts, counts, tickets, strict=True)]


@attrs.define(eq=False)
class _Run:
    """What the client tasks of one process share: their :class:`Share`, and the run's state."""

    share: Share
    ssl_context: ssl.SSLContext
    #: The share's, at hand on the hot path.
    config: LoadConfig = attrs.field(init=False)
    #: Measured exchanges this process may still start; ``None``: until the time is up.
    tickets: int | None = attrs.field(init=False)
    recorder: Recorder = attrs.Factory(Recorder)
    t0: float = math.inf
    measure_from: float = math.inf
    stop_at: float = math.inf
    started: trio.Event = attrs.Factory(trio.Event)
    connected: trio.Event = attrs.Factory(trio.Event)
    finished: trio.Event = attrs.Factory(trio.Event)
    arrived: int = 0
    done: int = 0
    pool: bytes = b""
    #: The messages, cycled through by every client from its own place (see :meth:`messages`).
    payloads: list[memoryview] = attrs.Factory(list)
    #: When the whole run ends (``Share.ends_at`` on trio's clock): the measured window
    #: ends then too, and whoever is still connecting then counts a timeout.
    hard_stop: float = math.inf
    #: Connections open now, and when the last handshake succeeded: while neither says
    #: the server answers, a connection error ends the run (:meth:`reachable`).
    live: int = 0
    last_handshake: float = -math.inf
    #: Connections open now that completed an echo, and when one last did: while neither
    #: says the server accepts us, a TLS rejection ends the run (:meth:`accepting`).
    accepted: int = 0
    last_accepted: float = -math.inf
    #: What ended the run early (the target cannot be reached), raised by :func:`run_here`.
    failure: ClientError | None = None
    #: Cancelled when the run fails; set by :func:`run_here`.
    scope: trio.CancelScope | None = None
    stop_requested: bool = False
    #: Drives the steady closed-loop exchanges of every client, where the run has one
    #: (see :meth:`looped`).
    exchanges: ExchangeLoop | None = None

    def __attrs_post_init__(self) -> None:
        self.config, self.tickets = self.share.config, self.share.tickets
        # Messages are slices of one random block at random offsets: no allocation
        # and no random-number generation per byte on the hot path.
        self.pool = os.urandom(self.config.sizes.high + 4096)
        self.payloads = self.messages(random.Random(self.share.first_client))
        if self.config.rate is not None:
            self.recorder.uncorrected = Histogram()
        if self.share.count == 0:
            self.finished.set()
        if self.share.count == 0 or self.config.ramp or self.config.new_connection_per_request:
            self.connected.set()  # no barrier: nobody connects before the start

    def looped(self) -> bool:
        """Whether connected clients hand their exchanges to an :class:`ExchangeLoop`:
        a closed loop over persistent connections, of messages sent whole before their
        echo is read (an open loop sleeps between sends; a new connection per request
        has no steady state to drive)."""
        cfg = self.config
        return (
            cfg.rate is None
            and not cfg.new_connection_per_request
            and cfg.sizes.high <= _SEQUENTIAL_MAX
            and ExchangeLoop.available()
        )

    def messages(self, rng: random.Random) -> list[memoryview]:
        """:data:`MESSAGES` slices of the pool, of random sizes at random offsets: a client
        takes the next one for each exchange (two random numbers per exchange were a
        few per cent of the loadgen's time), each client starting at its own place."""
        pool, low, high = memoryview(self.pool), self.config.sizes.low, self.config.sizes.high
        sizes = [rng.randint(low, high) for _ in range(MESSAGES)]
        return [pool[(off := rng.randrange(4096)) : off + n] for n in sizes]

    def start(self, t0: float) -> None:
        self.t0 = t0
        self.measure_from = t0 + self.config.warmup
        if self.config.duration is not None:
            self.stop_at = min(self.measure_from + self.config.duration, self.hard_stop)
        if self.stop_requested:
            self.stop_at = t0
        self.started.set()

    def stop(self) -> None:
        """End the run now (Ctrl-C): the window ends here, and what was measured is reported."""
        self.stop_requested = True
        self.stop_at = min(self.stop_at, _now())
        self.connected.set()
        self.finished.set()

    def reachable(self) -> bool:
        """Whether the server answers: a connection is open, or one was made within the last
        :data:`REACHABLE_GRACE` seconds (a new connection per request is seldom open)."""
        return self.live > 0 or _now() - self.last_handshake < REACHABLE_GRACE

    def accepting(self) -> bool:
        """Whether the server accepts our TLS sessions: an open connection completed an echo,
        or one did within the last :data:`REACHABLE_GRACE` seconds.  (A completed handshake
        is not enough: with TLS 1.3 the server judges our certificate after ours is done.)"""
        return self.accepted > 0 or _now() - self.last_accepted < REACHABLE_GRACE

    def fail(self, error: ClientError) -> None:
        if self.failure is None:
            self.failure = error
        if self.scope is not None:
            self.scope.cancel()

    def counting(self, t: float) -> bool:
        """Whether something that began at *t* is measured (not warm-up)."""
        return not self.t0 <= t < self.measure_from

    def take_ticket(self) -> bool:
        if self.tickets is None:
            return True
        if self.tickets <= 0:
            return False
        self.tickets -= 1
        return True

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.share.count:
            self.connected.set()

    def leave(self) -> None:
        self.done += 1
        if self.done == self.share.count:
            self.finished.set()


class _Client:
    """One client task's state: its connection, its random numbers, its schedule."""

    def __init__(self, run: _Run, local_index: int) -> None:
        self.run = run
        self.index = run.share.first_client + local_index
        self.local_index = local_index
        self.next_message = random.Random(self.index).randrange(MESSAGES)
        self.conn: ClientConnection | None = None
        self.session: ssl.SSLSession | None = None
        # Read once per exchange: kept at hand, not looked up through the config.
        self.high = run.config.sizes.high
        self.per_request = run.config.new_connection_per_request
        self.payloads = run.payloads
        self.buffer = memoryview(bytearray(min(self.high, 65536)))
        self.schedule: OpenLoopSchedule | None = None
        self.k = 0
        #: The exchange in progress (or the connection made before the start), and
        #: whether it is measured: what a timeout or a failure commits.
        self.io = ExchangeIO(0)
        self.counting = False
        #: Connecting before the start: if the run ends first, that is a timeout.
        self.connecting = False
        self.backoff = 0.0
        #: Whether the open connection completed an echo (the server accepted it).
        self.accepted = False

    async def main(self) -> None:
        run, cfg = self.run, self.run.config
        persistent = not cfg.new_connection_per_request
        arrived = False
        try:
            if persistent and not cfg.ramp:
                await self._connect_first(_now())
                run.arrive()
                arrived = True
            await run.started.wait()
            start = run.t0
            if cfg.ramp:
                start += cfg.ramp * self.local_index / run.share.count
                await trio.sleep_until(start)
            if cfg.rate is not None:
                self.schedule = OpenLoopSchedule.for_client(
                    start, index=self.index, clients=cfg.clients, rate=cfg.rate
                )
            # One cancel scope for many exchanges, its deadline moved before each: a scope
            # per exchange (fail_after) was a fifth of the loadgen's CPU time.  Only an
            # exchange's deadline cancels it, and then a new one is opened.
            finished = False
            while not finished:
                with trio.CancelScope() as scope:
                    finished = await self._exchanges(scope)
                if scope.cancelled_caught:
                    self._timed_out()
        finally:
            if not arrived and persistent and not cfg.ramp:
                run.arrive()
            run.leave()
            if (conn := self._release()) is not None:
                conn.abort()

    async def _exchanges(self, scope: trio.CancelScope) -> bool:
        """Exchange until done (``True``) or cancelled by an exchange's deadline."""
        run, timeout, schedule = self.run, self.run.config.timeout, self.schedule
        loop = run.exchanges
        while True:
            if loop is not None and self.conn is not None:
                scope.deadline = math.inf  # the loop times its exchanges itself
                if await self._looped(loop, self.conn):
                    return True
                continue
            if schedule is not None:
                intended = schedule.due(self.k)
                self.k += 1
                if intended >= run.stop_at:
                    return True
                if intended > (sent := _now()):
                    await trio.sleep_until(intended)
                    sent = intended
            else:
                intended = sent = _now()
            counting = run.counting(intended)
            if counting and not run.take_ticket():
                return True
            self.counting = counting
            scope.deadline = intended + timeout
            await self._exchange(intended, sent)
            if schedule is not None:
                # An open loop sleeps until the next send is due: not under this deadline.
                # A closed loop sets the next one at once (each set costs trio a heap
                # update, a tenth of the loadgen's Python time when it was done twice).
                scope.deadline = math.inf

    async def _looped(self, loop: ExchangeLoop, conn: ClientConnection) -> bool:
        """Let *loop* drive the exchanges over *conn*, then do what its hand-back asks;
        whether the client is done."""
        handback, error = await loop.drive(self, conn)
        if handback is Handback.FINISHED:
            return True
        if handback is Handback.CLOSE:
            await self._close()
        elif handback is Handback.TIMED_OUT:
            self._timed_out()
        else:
            assert error is not None
            await self._after_failure(error, during_handshake=False)
        return False

    def begin(self, now: float) -> memoryview | None:
        """Start a closed-loop exchange at *now* (for :class:`ExchangeLoop`): its
        message, or ``None`` when this process's tickets are spent."""
        run = self.run
        counting = not run.t0 <= now < run.measure_from  # run.counting(now), on the hot path
        if counting and run.tickets is not None and not run.take_ticket():
            return None
        self.counting = counting
        payload = self._next_payload()
        self.io = ExchangeIO(len(payload))
        return payload

    def completed(self, began: float, ended: float, sent: float | None = None) -> bool:
        """Commit the exchange that ended well at *ended* (latency from *began*, and from
        *sent* uncorrected); whether its connection must be closed."""
        io = self.io
        if self.counting:
            uncorrected = ended - began if sent is None else ended - sent
            self.run.recorder.exchange(io, int((ended - began) * 1e6), int(uncorrected * 1e6))
            self.counting = False
        if not self.accepted:
            self._accepted(ended)
        return self._finished_with(io)

    def _timed_out(self) -> None:
        if (conn := self._release()) is not None:
            conn.abort()
        if self.counting:
            self.run.recorder.failed(self.io, ErrorKind.TIMEOUT)

    async def _connect_first(self, began: float) -> None:
        """Connect before the start (its barrier); a failure is counted, and the first
        exchange connects again."""
        self.counting = self.run.counting(began)
        self.connecting = True
        try:
            with trio.fail_after(self.run.config.timeout):
                await self._connect(began)
        except _FAILURES as exc:
            self._failed(exc, during_handshake=True)
        finally:
            self.connecting = False
        self.counting = False

    def unfinished(self) -> None:
        """The run ended while this client was still connecting: a timeout, if measured."""
        if self.connecting and self.counting:
            self.run.recorder.failed(self.io, ErrorKind.TIMEOUT)
            self.counting = False

    def _release(self) -> ClientConnection | None:
        """The open connection, which the caller closes: no longer this client's."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.run.live -= 1
        if self.accepted:
            self.accepted = False
            self.run.accepted -= 1
        return conn

    async def _connect(self, began: float) -> ClientConnection:
        run = self.run
        self.conn = conn = await ClientConnection.open(run.share.target, run.ssl_context, self.session)
        run.live += 1
        run.last_handshake = _now()
        self.backoff = 0.0
        if self.counting:
            run.recorder.handshake_done(int((_now() - began) * 1e6), resumed=conn.resumed)
        return conn

    async def _exchange(self, began: float, sent: float) -> None:
        """One send and its echo (and, per request mode, the connection around it).

        Latency runs from *began*: the send in a closed loop, the intended send time in
        an open one (and from *sent*, the actual send, uncorrected).  ``self.io`` is
        filled in as the exchange goes, so that however it
        ends, what it did is committed: by :meth:`Recorder.exchange` or :meth:`_failed`,
        before anything that can checkpoint, and then ``self.counting`` is cleared: the
        deadline may still pass in the close or checkpoint that follows, and
        :meth:`_timed_out` must not count this exchange again.
        """
        payload = self._next_payload()
        io = self.io = ExchangeIO(len(payload))
        conn = self.conn
        try:
            if conn is None:
                conn = await self._connect(_now())
            waits_before = conn.waits
            if io.size <= _SEQUENTIAL_MAX:
                await conn.send_all(payload)
                io.writes, io.sent = 1, io.size
                await read_echo(conn, payload, self.buffer, io)
            else:
                await _echo_at_once(conn, payload, self.buffer, io)
            ended = _now()
            if self.per_request:
                self._look_past_the_echo(conn, io)
        except _FAILURES as exc:
            failure: BaseException = exc
        except BaseExceptionGroup as group:  # from the nursery of a large echo
            failure = _failure_in(group)
        else:
            if self.completed(began, ended, sent):
                await self._close()
            elif conn.waits == waits_before:
                # Every exchange yields at least once, even against an instant server.
                await trio.lowlevel.checkpoint()
            return
        await self._after_failure(failure, during_handshake=conn is None)

    async def _after_failure(self, failure: BaseException, *, during_handshake: bool) -> None:
        """Commit *failure*, drop the connection, and back off if it was a fresh one."""
        fresh = not self.accepted  # no connection, or one the server had not yet accepted
        kind = self._failed(failure, during_handshake=during_handshake)
        await self._drop()
        if fresh and kind in _BACKED_OFF:
            # The server answers others (or the run has failed already): retry, but slower.
            self.backoff = min(max(2 * self.backoff, BACKOFF_FIRST), BACKOFF_MAX)
            await trio.sleep(self.backoff)

    def _accepted(self, when: float) -> None:
        self.accepted = True
        self.run.accepted += 1
        self.run.last_accepted = when

    def _next_payload(self) -> memoryview:
        k = self.next_message = (self.next_message + 1) % MESSAGES
        return self.payloads[k]

    def _look_past_the_echo(self, conn: ClientConnection, io: ExchangeIO) -> None:
        """Per request the connection is closed next: the last chance to see an echo
        that goes on in a record of its own (see :func:`read_echo`)."""
        if io.received == io.size and not io.mismatched and conn.anything_more(self.buffer):
            io.mismatched = io.over_long = True

    def _failed(self, exc: BaseException, *, during_handshake: bool) -> ErrorKind:
        """Commit a failure, by its kind (see :meth:`_exchange`); a bug is raised again.

        A connection that could not be made while the server answers nobody ends the run,
        and so does a TLS session the server or we refused while it accepts nobody: a
        wrong certificate or server name fails every handshake alike.
        """
        kind = classify_error(exc, during_handshake=during_handshake)
        if kind is None:
            raise exc
        if self.counting:
            self.run.recorder.failed(self.io, kind)
            self.counting = False
        run = self.run
        if during_handshake and kind in _UNREACHABLE and not run.reachable():
            run.fail(ClientError(f"cannot connect to {run.config.address}: {_reason(exc, kind)}"))
        elif kind is ErrorKind.TLS_REJECTED and not self.accepted and _refusal(exc) and not run.accepting():
            run.fail(
                ClientError(f"TLS handshake with {run.config.address} failed: {describe_tls_error(exc)}")
            )
        return kind

    def _finished_with(self, io: ExchangeIO) -> bool:
        """Whether the connection ends with this exchange: per request, or cut short or
        out of step (over-long).  A mismatch of the right length leaves the stream in
        step, and it is kept."""
        return self.per_request or io.received < io.size or io.over_long

    async def _drop(self) -> None:
        if (conn := self._release()) is not None:
            conn.abort()
        await trio.lowlevel.checkpoint()

    async def _close(self) -> None:
        if (conn := self._release()) is not None:
            if self.run.config.resume:
                self.session = conn.session
            conn.close()
        await trio.lowlevel.checkpoint()


#: Connection failures that say the server cannot be reached (not that it said no).
_UNREACHABLE = frozenset({ErrorKind.REFUSED, ErrorKind.TIMEOUT})
#: Failures of a new connection retried after a back-off (:meth:`_Client._exchange`).
_BACKED_OFF = frozenset({ErrorKind.REFUSED, ErrorKind.TLS_REJECTED})


def _refusal(exc: BaseException) -> bool:
    """Whether a TLS failure is a verdict (a certificate that does not verify, an alert),
    not a hang-up: a server at its connection limit may close a handshake, and that says
    nothing of the next one."""
    for cur in causes(exc):
        if isinstance(cur, ssl.SSLError):
            hang_up = isinstance(cur, (ssl.SSLEOFError, ssl.SSLZeroReturnError))
            return not hang_up and (getattr(cur, "reason", None) or "") not in EOF_REASONS
    return False


def _reason(exc: BaseException, kind: ErrorKind) -> str:
    if kind is ErrorKind.TIMEOUT:
        return "no answer in time (is the address right?)"
    return connect_failure(exc)


async def _send(conn: ClientConnection, payload: memoryview, io: ExchangeIO) -> None:
    await conn.send_all(payload)
    io.writes, io.sent = 1, len(payload)


async def read_echo(conn: ClientConnection, payload: memoryview, buffer: memoryview, io: ExchangeIO) -> None:
    """Read until *payload* is echoed whole, the server closes, or a byte differs.

    Reads no more than *payload*'s length, so an echo that goes on is caught only by
    what is already decrypted: plaintext left in the record that ended the echo.  (A
    later record is found by the next exchange, or, per request, by the read before
    closing, :meth:`ClientConnection.anything_more`.)
    """
    n = len(payload)
    while io.received < n:
        into = buffer[: min(n - io.received, len(buffer))]
        got = await conn.receive_into(into, reply=not io.received)
        if not got or not io.take(buffer, got, payload):
            return
    if conn.pending():
        io.mismatched = io.over_long = True


async def _echo_at_once(
    conn: ClientConnection, payload: memoryview, buffer: memoryview, io: ExchangeIO
) -> None:
    """Send *payload* while its echo is read (see ``_SEQUENTIAL_MAX``)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send, conn, payload, io)
        await read_echo(conn, payload, buffer, io)
        if io.received < io.size:
            nursery.cancel_scope.cancel()


def _failure_in(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What failed in a large echo's nursery, to be counted: the first leaf with a cause.

    Anything else in *group* goes on: a cancellation (a deadline, the end of the run),
    or a bug.
    """
    matched, rest = group.split(_FAILURES)
    if rest is not None:
        raise rest from None
    failed = matched if matched is not None else group
    leaves = [e for e in causes(failed) if not isinstance(e, BaseExceptionGroup)]
    with_cause = [e for e in leaves if e.__cause__ is not None]
    return (with_cause or leaves or [group])[0]


async def run_here(
    share: Share,
    ssl_context: ssl.SSLContext,
    *,
    before_start: Callable[[], Awaitable[None]] | None = None,
    progress: ProgressCallback | None = None,
    stop: trio.Event | None = None,
) -> LoadReport:
    """Run *share*'s clients in this process and return what they measured.

    *before_start* is awaited once they are connected (a worker's ready/go); then
    *progress* is called about once a second.  When *stop* is set (Ctrl-C) the run
    ends there, and what it measured so far is returned.  A target that cannot be
    reached is a :class:`ClientError`.
    """
    run = _Run(share, ssl_context)
    if share.ends_at is not None:
        run.hard_stop = _now() + (share.ends_at - time.monotonic())
    clients = [_Client(run, i) for i in range(share.count)]
    async with trio.open_nursery() as nursery:
        run.scope = nursery.cancel_scope
        if run.looped():
            run.exchanges = ExchangeLoop(share.config.timeout)
            nursery.start_soon(run.exchanges.serve, name="loadgen exchange loop")
        for client in clients:
            nursery.start_soon(client.main, name=f"loadgen client {client.index}")
        if stop is not None:
            nursery.start_soon(_stop_when, stop, run)
        with trio.move_on_at(_barrier_deadline(run)):
            await run.connected.wait()
        if before_start is not None:
            await before_start()
        run.start(_now())
        if progress is not None:
            nursery.start_soon(_report_progress, run, progress)
        with trio.move_on_at(run.stop_at):
            await run.finished.wait()
        for client in clients:
            client.unfinished()
        nursery.cancel_scope.cancel()
    if run.failure is not None:
        raise run.failure
    # With a duration the window is the duration, also when the clients are done early
    # (open loop: no send is due after stop_at, so the last one ends before it).
    end = run.stop_at if run.stop_at < math.inf else _now()
    return run.recorder.report(clients=share.count, seconds=max(end - run.measure_from, 0.0))


def _barrier_deadline(run: _Run) -> float:
    """How long the start waits for every client to connect: the timeout (bounded:
    each connect is), and at most a share of the duration, within the run."""
    cfg, now = run.config, _now()
    deadline = now + cfg.timeout + 1.0
    if cfg.duration is not None:
        deadline = min(deadline, now + BARRIER_SHARE * cfg.duration)
    return min(deadline, run.hard_stop)


async def _stop_when(stop: trio.Event, run: _Run) -> None:
    await stop.wait()
    run.stop()


async def _report_progress(run: _Run, progress: ProgressCallback) -> None:
    # Ends when the run's nursery is cancelled; at most one call per interval.
    while True:
        await trio.sleep(PROGRESS_INTERVAL)
        rec = run.recorder
        progress(Progress(_now() - run.measure_from, rec.round_trips, rec.error_count, rec.mismatches))
