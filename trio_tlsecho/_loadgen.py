"""The load generator: many mutual-TLS clients echoing at once, measured honestly.

Theory of operation
-------------------
``run_load(config)`` starts ``config.clients`` client tasks in one nursery (or, with
``workers > 1``, that many processes each running its own ``trio.run`` over a share
of the clients, see below).  A client connects, then repeats *exchanges*: send one
message, read back exactly as many bytes, compare them byte for byte.

Phases.  Without ``ramp``, every client first connects and the measurement clock
starts only when all have (a barrier), so that 64 handshakes queueing at the server
are reported as handshake latency, not as the first round trips' latency.  With
``ramp``, client *i* starts at ``t0 + ramp * i / clients`` instead.  Whatever begins
in ``[t0, t0 + warmup)`` is not counted; the measured window is
``[t0 + warmup, t0 + warmup + duration)``, or until ``requests`` exchanges are done.

Closed loop (no ``rate``): each client sends as soon as its previous echo is back;
latency is measured from the send.  Open loop (``rate`` round trips/s in total): each
client owns ``rate / clients`` of it and its *k*-th exchange is due at
``start + phase + k * clients / rate``, with the clients' phases spread evenly.  A
client that falls behind sends at once, and latency is measured from the *intended*
time, so queueing delay that a closed loop hides (coordinated omission) is counted,
as wrk2 does.  Sends due after the end are not made.

Every exchange that starts inside the window is committed to the :class:`Recorder`
when it ends, however it ends: its I/O counts, and a round trip, a mismatch or an
error by kind.  An error ends the connection; the next exchange reconnects.  Every
exchange, connecting included, runs under ``timeout``.

Transport.  Clients drive a non-blocking ``ssl.SSLSocket`` with trio's
``wait_readable``/``wait_writable`` instead of ``trio.SSLStream``: half the CPU per
round trip (see :class:`_Connection`), with the same ``client_context`` policy.

Workers.  The parent spawns ``python -c 'from trio_tlsecho._loadgen import
worker_main; worker_main()'`` with ``trio.run_process`` and talks JSON lines: it
writes the config and the worker's share on stdin; the worker connects its clients
and answers ``ready``; when all are ready the parent writes ``go``; workers report
progress each second and finally their whole report, histograms included, which the
parent merges exactly (:func:`._stats.merge`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import attrs
import trio

from ._config import Address, ClientConfig, TLSFiles
from ._exceptions import ClientError, ConfigError
from ._proxy import encode_v1, encode_v2
from ._stats import ErrorKind, LoadReport, Recorder, merge
from ._tls import client_context

#: Echoes up to this size are sent, then read.  Larger ones are sent and read at once:
#: a 256 KiB echo can fill both directions' socket buffers and deadlock a client that
#: is still writing while the server waits to write back.
_SEQUENTIAL_MAX = 65536
#: Bounds a clean close (close_notify) of a connection we are done with.
_CLOSE_TIMEOUT = 1.0
#: Largest message ``--size`` accepts.
MAX_SIZE = 16 * 1024 * 1024
#: How often the progress callback runs.
PROGRESS_INTERVAL = 1.0
#: How long workers may take to start (a Python process, imports, handshakes).
_WORKER_START_TIMEOUT = 60.0

_now = trio.current_time
#: What ends one exchange (and its connection) and is counted as an error by kind
#: (``ssl.SSLError`` and ``ConnectionError`` are ``OSError``s).
_FAILURES = (OSError, trio.TooSlowError)


# -- configuration --------------------------------------------------------------


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def _parse_size(text: str) -> int:
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"bad size {text!r}: expected a number of bytes such as 100, 64k or 1m")
    scale = {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    return int(match.group(1)) * scale


@attrs.frozen
class SizeRange:
    """Message sizes: uniform over ``low..high`` bytes, both included."""

    low: int
    high: int

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.low <= self.high <= MAX_SIZE:
            raise ConfigError(
                f"message sizes must satisfy 1 <= low <= high <= {MAX_SIZE}, not {self.low}-{self.high}"
            )

    @classmethod
    def parse(cls, text: str) -> SizeRange:
        """``"1-100"`` (a uniform range), ``"65536"`` or ``"256k"`` (fixed)."""
        low, sep, high = text.partition("-")
        if sep:
            return cls(_parse_size(low), _parse_size(high))
        size = _parse_size(text)
        return cls(size, size)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def _to_sizes(value: SizeRange | str | int) -> SizeRange:
    if isinstance(value, SizeRange):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return SizeRange(value, value)
    if isinstance(value, str):
        return SizeRange.parse(value)
    raise ConfigError(f"sizes must be a SizeRange, 'LOW-HIGH' or a number, not {value!r}")


def _to_address(value: Address | str) -> Address:
    return value if isinstance(value, Address) else Address.parse(value)


def _count(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None and attribute.name == "requests":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name} must be a whole number of at least 1, not {value!r}")


def _number(*, positive: bool, optional: bool) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        ok = (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and math.isfinite(value)
            and (value > 0 if positive else value >= 0)
        )
        if not ok:
            what = "a positive number" if positive else "a number >= 0"
            raise ConfigError(f"{attribute.name} must be {what}, not {value!r}")

    return check


def _default_duration(config: LoadConfig) -> float | None:
    return None if config.requests is not None else 10.0


@attrs.frozen(kw_only=True)
class LoadConfig:
    """One load run.  Build with keywords; change with :func:`attrs.evolve`."""

    address: Address = attrs.field(converter=_to_address)
    client: ClientConfig = attrs.field(validator=attrs.validators.instance_of(ClientConfig))
    clients: int = attrs.field(default=64, validator=_count)
    #: Stop after this many measured exchanges in total (successful or not)...
    requests: int | None = attrs.field(default=None, validator=_count)
    #: ... or after this many measured seconds (10 when neither is given).
    duration: float | None = attrs.field(
        default=attrs.Factory(_default_duration, takes_self=True),
        validator=_number(positive=True, optional=True),
    )
    sizes: SizeRange = attrs.field(default=SizeRange(1, 100), converter=_to_sizes)
    #: Total round trips per second, open loop; ``None`` is closed loop (full speed).
    rate: float | None = attrs.field(default=None, validator=_number(positive=True, optional=True))
    #: Connect, handshake, echo once and close, for every exchange.
    new_connection_per_request: bool = False
    warmup: float = attrs.field(default=0.0, validator=_number(positive=False, optional=False))
    ramp: float = attrs.field(default=0.0, validator=_number(positive=False, optional=False))
    workers: int = attrs.field(default=1, validator=_count)
    #: Seconds one exchange (connecting included) may take before it counts as a timeout.
    timeout: float = attrs.field(default=10.0, validator=_number(positive=True, optional=False))
    #: Offer the previous connection's TLS session on every reconnect (abbreviated
    #: handshakes, if the server issues tickets: ``serve --session-tickets``).
    resume: bool = False
    #: Send a PROXY protocol header of this version (1 or 2) before each handshake, as a
    #: load balancer would, to exercise ``serve --proxy-protocol`` without one.
    proxy_protocol: int | None = attrs.field(default=None, validator=attrs.validators.in_((None, 1, 2)))

    def __attrs_post_init__(self) -> None:
        if self.duration is not None and self.requests is not None:
            raise ConfigError("give a duration or a number of requests, not both")
        if self.duration is None and self.requests is None:
            raise ConfigError("give a duration or a number of requests")
        if self.workers > self.clients:
            raise ConfigError(f"{self.workers} workers need at least as many clients, not {self.clients}")


# -- sans-io pieces ---------------------------------------------------------------


def split(total: int, parts: int) -> list[int]:
    """*total* in *parts* shares that differ by at most one and add up exactly."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@attrs.frozen
class OpenLoopSchedule:
    """When one client's exchanges are due: ``start + phase + k * interval``.

    With *clients* clients sharing *rate* round trips/s, each has ``interval =
    clients / rate`` and client *i* the phase ``i / rate``, so that together their
    sends are evenly spaced at ``1 / rate``.
    """

    start: float
    interval: float
    phase: float

    @classmethod
    def for_client(cls, start: float, *, index: int, clients: int, rate: float) -> OpenLoopSchedule:
        return cls(start=start, interval=clients / rate, phase=index / rate)

    def due(self, k: int) -> float:
        return self.start + self.phase + k * self.interval


_EOF_REASONS = frozenset({"UNEXPECTED_EOF_WHILE_READING", "EOF", "ZERO_RETURN"})


def _causes(exc: BaseException) -> list[BaseException]:
    """*exc*, its causes and contexts, and the members of any exception group, in order."""
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < 64:
        cur = todo.pop(0)
        if any(cur is seen for seen in found):
            continue
        found.append(cur)
        if isinstance(cur, BaseExceptionGroup):
            todo.extend(cur.exceptions)
        todo.extend(e for e in (cur.__cause__, cur.__context__) if e is not None)
    return found


def classify_error(exc: BaseException, *, during_handshake: bool = False) -> ErrorKind | None:
    """Which :class:`ErrorKind` *exc* is, or ``None`` if it is not a connection failure (a bug).

    Looks through trio's wrappers (``BrokenResourceError``, ``ClientError``, the
    ``OSError`` of ``open_tcp_stream``) at what caused them.
    """
    chain = _causes(exc)
    for cur in chain:
        if isinstance(cur, trio.TooSlowError):
            return ErrorKind.TIMEOUT
        if isinstance(cur, ConnectionRefusedError):
            return ErrorKind.REFUSED
        if isinstance(cur, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return ErrorKind.RESET
        if isinstance(cur, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) or (
            isinstance(cur, ssl.SSLError) and (getattr(cur, "reason", None) or "") in _EOF_REASONS
        ):
            # A server that hangs up mid-handshake is refusing the session; after it,
            # the echo was cut short.
            return ErrorKind.TLS_REJECTED if during_handshake else ErrorKind.SHORT_READ
        if isinstance(cur, ssl.SSLError):
            return ErrorKind.TLS_REJECTED
    for cur in chain:
        if isinstance(cur, OSError) and cur.errno == errno.ETIMEDOUT:
            return ErrorKind.TIMEOUT
        if isinstance(cur, (OSError, ClientError)) and during_handshake:
            # Unreachable, no route, unknown host: the connection could not be opened.
            return ErrorKind.REFUSED
        if isinstance(cur, trio.BrokenResourceError):
            return ErrorKind.RESET
    return None


# -- the transport -------------------------------------------------------------------


class _Connection:
    """One client connection: a non-blocking ``ssl.SSLSocket`` driven by trio's I/O waits.

    Why not ``trio.SSLStream`` (``open_client``)?  A load generator must not be the
    bottleneck, and on this project's 2-core machine one worker using ``SSLStream``
    spent ~52 µs of CPU per small round trip and saturated its core at ~20,000 round
    trips/s; driving OpenSSL's socket directly costs ~27 µs (benchmarks/README.md).
    The TLS policy is still the one :func:`client_context` builds.

    One task may send while another receives (large echoes); each call is atomic with
    respect to the event loop, and partial writes are retried with the same bytes.
    """

    __slots__ = ("_sock", "waits")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        #: How often a call had to wait for the socket (so callers know they yielded).
        self.waits = 0

    @classmethod
    async def open(
        cls, target: _Target, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
    ) -> _Connection:
        raw = socket.socket(target.family, socket.SOCK_STREAM)
        try:
            await _connect(raw, target)
            if target.proxy_protocol is not None:
                _send_proxy_header(raw, target.proxy_protocol)
            sock = ctx.wrap_socket(
                raw, server_hostname=target.server_hostname, do_handshake_on_connect=False, session=session
            )
        except BaseException:
            raw.close()
            raise
        try:
            while True:
                try:
                    sock.do_handshake()
                    return cls(sock)
                except ssl.SSLWantReadError:
                    await trio.lowlevel.wait_readable(sock)
                except ssl.SSLWantWriteError:
                    await trio.lowlevel.wait_writable(sock)
        except BaseException:
            sock.close()
            raise

    async def send_all(self, data: memoryview) -> None:
        sock, sent, n = self._sock, 0, len(data)
        while sent < n:
            try:
                sent += sock.send(data[sent:])
            except ssl.SSLWantWriteError:
                self.waits += 1
                await trio.lowlevel.wait_writable(sock)
            except ssl.SSLWantReadError:
                self.waits += 1
                await trio.lowlevel.wait_readable(sock)

    async def receive_into(self, buffer: memoryview) -> int:
        """Read at least one byte into *buffer*; 0 means the server closed the connection."""
        sock = self._sock
        while True:
            try:
                return sock.recv_into(buffer)
            except ssl.SSLWantReadError:
                self.waits += 1
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                self.waits += 1
                await trio.lowlevel.wait_writable(sock)

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session to resume later (with TLS 1.3, known once a ticket was read)."""
        return self._sock.session

    @property
    def resumed(self) -> bool:
        return bool(self._sock.session_reused)

    def close(self) -> None:
        """Close now, with a close_notify if it can go out without waiting."""
        try:
            self._sock.unwrap()  # sends close_notify; would then wait for the server's
        except (OSError, ValueError):
            pass
        finally:
            self._sock.close()

    def abort(self) -> None:
        self._sock.close()


def _send_proxy_header(raw: socket.socket, version: int) -> None:
    encode = encode_v1 if version == 1 else encode_v2
    header = encode(raw.getsockname()[:2], raw.getpeername()[:2])
    # A fresh connection's send buffer is empty: the header (at most 108 bytes) fits.
    if raw.send(header) != len(header):
        raise OSError(errno.EAGAIN, "could not send the PROXY header at once")


async def _connect(raw: socket.socket, target: _Target) -> None:
    raw.setblocking(False)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = raw.connect_ex(target.sockaddr)
    if err == errno.EINPROGRESS:
        await trio.lowlevel.wait_writable(raw)
        err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        # OSError(errno, ...) is ConnectionRefusedError for ECONNREFUSED, and so on.
        raise OSError(err, f"connecting to {target.address}: {os.strerror(err)}")


@attrs.frozen
class _Target:
    """Where the clients connect, resolved once (a load generator has no use for happy eyeballs)."""

    address: Address
    family: socket.AddressFamily
    sockaddr: tuple[Any, ...]
    server_hostname: str
    proxy_protocol: int | None = None

    @classmethod
    async def resolve(cls, config: LoadConfig) -> _Target:
        address = config.address
        try:
            infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ClientError(f"cannot connect to {address}: unknown host ({exc.strerror})") from None
        family, _type, _proto, _name, sockaddr = infos[0]
        hostname = config.client.server_hostname or address.host
        return cls(address, family, tuple(sockaddr), hostname, config.proxy_protocol)


# -- one process's share of the clients -------------------------------------------


@attrs.define(eq=False)
class _Run:
    """What the client tasks of one process share."""

    config: LoadConfig
    ssl_context: ssl.SSLContext
    target: _Target
    #: Global index of this process's first client, and how many it runs.
    first_client: int
    count: int
    #: Measured exchanges this process may still start; ``None``: until the time is up.
    tickets: int | None
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

    def __attrs_post_init__(self) -> None:
        # Messages are slices of one random block at random offsets: no allocation
        # and no random-number generation per byte on the hot path.
        self.pool = os.urandom(self.config.sizes.high + 4096)
        if self.count == 0:
            self.finished.set()
        if self.count == 0 or self.config.ramp or self.config.new_connection_per_request:
            self.connected.set()  # no barrier: nobody connects before the start

    def start(self, t0: float) -> None:
        self.t0 = t0
        self.measure_from = t0 + self.config.warmup
        if self.config.duration is not None:
            self.stop_at = self.measure_from + self.config.duration
        self.started.set()

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
        if self.arrived == self.count:
            self.connected.set()

    def leave(self) -> None:
        self.done += 1
        if self.done == self.count:
            self.finished.set()


class _Client:
    """One client task's state: its connection, its random numbers, its schedule."""

    def __init__(self, run: _Run, local_index: int) -> None:
        self.run = run
        self.index = run.first_client + local_index
        self.local_index = local_index
        self.rng = random.Random(self.index)
        self.conn: _Connection | None = None
        self.session: ssl.SSLSession | None = None
        self.buffer = memoryview(bytearray(min(run.config.sizes.high, 65536)))
        self.schedule: OpenLoopSchedule | None = None
        self.k = 0
        #: The exchange in progress, and whether it is measured: what a timeout commits.
        self.io = _IO()
        self.counting = False

    async def main(self) -> None:
        run, cfg = self.run, self.run.config
        persistent = not cfg.new_connection_per_request
        arrived = False
        try:
            if persistent and not cfg.ramp:
                await self._connect_or_record(_now())
                run.arrive()
                arrived = True
            await run.started.wait()
            start = run.t0
            if cfg.ramp:
                start += cfg.ramp * self.local_index / run.count
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
            if self.conn is not None:
                self.conn.abort()

    async def _exchanges(self, scope: trio.CancelScope) -> bool:
        """Exchange until done (``True``) or cancelled by an exchange's deadline."""
        run, timeout, schedule = self.run, self.run.config.timeout, self.schedule
        while True:
            if schedule is not None:
                intended = schedule.due(self.k)
                self.k += 1
                if intended >= run.stop_at:
                    return True
                if intended > _now():
                    await trio.sleep_until(intended)
            else:
                intended = _now()
            counting = run.counting(intended)
            if counting and not run.take_ticket():
                return True
            self.counting = counting
            self.io = _IO()
            scope.deadline = intended + timeout
            await self._exchange(intended, counting, self.io)
            scope.deadline = math.inf

    def _timed_out(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.abort()
        if self.counting:
            io = self.io
            self.run.recorder.io(sent=io.sent, received=io.received, reads=io.reads, writes=io.writes)
            self.run.recorder.error(ErrorKind.TIMEOUT)

    async def _connect_or_record(self, began: float) -> None:
        try:
            with trio.fail_after(self.run.config.timeout):
                await self._connect(began, counting=self.run.counting(began))
        except _FAILURES as exc:
            self._failed(exc, during_handshake=True, counting=self.run.counting(began))

    async def _connect(self, began: float, *, counting: bool) -> None:
        run = self.run
        self.conn = await _Connection.open(run.target, run.ssl_context, self.session)
        if counting:
            run.recorder.handshake_done(int((_now() - began) * 1e6), resumed=self.conn.resumed)

    def _failed(self, exc: BaseException, *, during_handshake: bool, counting: bool) -> None:
        kind = classify_error(exc, during_handshake=during_handshake)
        if kind is None:
            raise exc
        if counting:
            self.run.recorder.error(kind)

    async def _exchange(self, began: float, counting: bool, io: _IO) -> None:
        """One send and its echo (and, per request mode, the connection around it).

        Latency runs from *began*: the send in a closed loop, the intended send time in
        an open one.  *io* is filled in as the exchange goes, so that however it ends,
        what it did is committed.
        """
        run, cfg = self.run, self.run.config
        low, high = cfg.sizes.low, cfg.sizes.high
        n = low if low == high else self.rng.randint(low, high)
        offset = self.rng.randrange(4096)
        payload = memoryview(run.pool)[offset : offset + n]
        in_handshake = False
        failure: BaseException | None = None
        try:
            if self.conn is None:
                in_handshake = True
                await self._connect(_now(), counting=counting)
                in_handshake = False
            conn = self.conn
            assert conn is not None
            waits_before = conn.waits
            if n <= _SEQUENTIAL_MAX:
                await conn.send_all(payload)
                io.writes, io.sent = 1, n
                await _read_echo(conn, payload, self.buffer, io)
            else:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send, conn, payload, io)
                    await _read_echo(conn, payload, self.buffer, io)
                    if io.received < n:
                        nursery.cancel_scope.cancel()
            done = _now()
        except _FAILURES as exc:
            failure = exc
        except BaseExceptionGroup as group:  # from the nursery of a large echo
            matched, rest = group.split(_FAILURES)
            if rest is not None:  # cancelled (a deadline, the end of the run), or a bug
                raise rest from None
            failure = _first_cause(matched) if matched is not None else group
        rec = run.recorder
        if failure is not None:
            await self._drop()
            if counting:
                rec.io(sent=io.sent, received=io.received, reads=io.reads, writes=io.writes)
            self._failed(failure, during_handshake=in_handshake, counting=counting)
            return
        if counting:
            rec.io(sent=io.sent, received=io.received, reads=io.reads, writes=io.writes)
            if io.mismatched:
                rec.mismatch()
            elif io.received < n:
                rec.error(ErrorKind.SHORT_READ)
            else:
                rec.round_trip(int((done - began) * 1e6))
        if io.received < n or cfg.new_connection_per_request:
            # Cut short or out of step: this connection is done.  (A mismatch of the
            # right length leaves the stream in step, and it is kept.)
            await self._close()
        elif self.conn is not None and self.conn.waits == waits_before:
            # Every exchange yields at least once, even against an instant server.
            await trio.lowlevel.checkpoint()

    async def _drop(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.abort()
        await trio.lowlevel.checkpoint()

    async def _close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            if self.run.config.resume:
                self.session = conn.session
            conn.close()
        await trio.lowlevel.checkpoint()


@attrs.define
class _IO:
    """The I/O of one exchange so far."""

    sent: int = 0
    received: int = 0
    reads: int = 0
    writes: int = 0
    mismatched: bool = False


async def _send(conn: _Connection, payload: memoryview, io: _IO) -> None:
    await conn.send_all(payload)
    io.writes, io.sent = 1, len(payload)


async def _read_echo(conn: _Connection, payload: memoryview, buffer: memoryview, io: _IO) -> None:
    """Read until *payload* is echoed whole, the server closes, or a byte differs."""
    n = len(payload)
    while io.received < n:
        got = await conn.receive_into(buffer[: min(n - io.received, len(buffer))])
        if not got:
            return
        io.reads += 1
        if buffer[:got] != payload[io.received : io.received + got]:
            io.mismatched = True
            io.received += got
            return
        io.received += got


def _first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves = [e for e in _causes(group) if not isinstance(e, BaseExceptionGroup)]
    with_cause = [e for e in leaves if e.__cause__ is not None]
    return (with_cause or leaves or [group])[0]


@attrs.frozen
class Progress:
    """Totals so far, for a live display."""

    elapsed: float
    round_trips: int
    errors: int
    mismatches: int


ProgressCallback = Callable[[Progress], None]


async def _run_here(
    run: _Run,
    *,
    before_start: Callable[[], Awaitable[None]] | None = None,
    progress: ProgressCallback | None = None,
) -> LoadReport:
    cfg = run.config
    async with trio.open_nursery() as nursery:
        for i in range(run.count):
            nursery.start_soon(_Client(run, i).main)
        # Bounded: every connect attempt is bounded by the timeout.
        with trio.move_on_after(cfg.timeout + 1.0):
            await run.connected.wait()
        if before_start is not None:
            await before_start()
        run.start(_now())
        if progress is not None:
            nursery.start_soon(_report_progress, run, progress)
        with trio.move_on_at(run.stop_at):
            await run.finished.wait()
        nursery.cancel_scope.cancel()
    end = min(_now(), run.stop_at)
    return run.recorder.report(clients=run.count, seconds=max(end - run.measure_from, 0.0))


async def _report_progress(run: _Run, progress: ProgressCallback) -> None:
    # Ends when the run's nursery is cancelled; at most one call per interval.
    while True:
        await trio.sleep(PROGRESS_INTERVAL)
        rec = run.recorder
        progress(Progress(_now() - run.t0, rec.round_trips, rec.error_count, rec.mismatches))


async def run_load(config: LoadConfig, *, progress: ProgressCallback | None = None) -> LoadReport:
    """Run the load *config* describes against a server and return what it measured.

    *progress*, if given, is called about once a second with the totals so far.
    """
    if config.workers == 1:
        run = _Run(
            config=config,
            ssl_context=client_context(config.client),
            target=await _Target.resolve(config),
            first_client=0,
            count=config.clients,
            tickets=config.requests,
        )
        return await _run_here(run, progress=progress)
    return await _run_workers(config, progress)


# -- worker processes ---------------------------------------------------------------


def _config_to_wire(config: LoadConfig) -> dict[str, Any]:
    tls = config.client.tls
    return {
        "address": str(config.address),
        "cert": str(tls.cert),
        "key": str(tls.key),
        "ca": str(tls.ca),
        "server_hostname": config.client.server_hostname,
        "handshake_timeout": config.client.handshake_timeout,
        "clients": config.clients,
        "requests": config.requests,
        "duration": config.duration,
        "sizes": str(config.sizes),
        "rate": config.rate,
        "new_connection_per_request": config.new_connection_per_request,
        "warmup": config.warmup,
        "ramp": config.ramp,
        "timeout": config.timeout,
        "proxy_protocol": config.proxy_protocol,
        "resume": config.resume,
    }


def _config_from_wire(data: Mapping[str, Any]) -> LoadConfig:
    data = dict(data)
    client = ClientConfig(
        tls=TLSFiles(cert=data.pop("cert"), key=data.pop("key"), ca=data.pop("ca")),
        server_hostname=data.pop("server_hostname"),
        handshake_timeout=data.pop("handshake_timeout"),
    )
    return LoadConfig(client=client, **data)


_WORKER_COMMAND = "from trio_tlsecho._loadgen import worker_main; worker_main()"


class _LineReader:
    """Lines from a byte stream, bounded in length."""

    _MAX_LINE = 16 * 1024 * 1024

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next_line(self) -> bytes | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > self._MAX_LINE:
                raise RuntimeError("loadgen worker wrote an over-long line")
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk


@attrs.define(eq=False)
class _Worker:
    number: int
    process: trio.Process
    lines: _LineReader
    ready: trio.Event = attrs.Factory(trio.Event)
    progress: tuple[int, int, int] = (0, 0, 0)
    report: LoadReport | None = None

    async def read(self) -> None:
        while (line := await self.lines.next_line()) is not None:
            message = json.loads(line)
            if "ready" in message:
                self.ready.set()
            elif "progress" in message:
                rt, errors, mismatches = message["progress"]
                self.progress = (int(rt), int(errors), int(mismatches))
            elif "report" in message:
                self.report = LoadReport.from_wire(message["report"])
        self.ready.set()  # a worker that died early must not hold the barrier


async def _run_workers(config: LoadConfig, progress: ProgressCallback | None) -> LoadReport:
    client_context(config.client)  # fail here, once, on bad certificate files
    shares = split(config.clients, config.workers)
    requests = split(config.requests, config.workers) if config.requests is not None else None
    wire = _config_to_wire(config)
    workers: list[_Worker] = []
    async with trio.open_nursery() as nursery:
        first = 0
        for number, count in enumerate(shares):
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [sys.executable, "-c", _WORKER_COMMAND],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stdin is not None
            assert process.stdout is not None
            spec = {
                "config": wire,
                "first_client": first,
                "count": count,
                "tickets": requests[number] if requests is not None else None,
            }
            await process.stdin.send_all(json.dumps(spec).encode() + b"\n")
            worker = _Worker(number, process, _LineReader(process.stdout))
            nursery.start_soon(worker.read)
            workers.append(worker)
            first += count
        with trio.fail_after(_WORKER_START_TIMEOUT + config.timeout):
            for worker in workers:
                await worker.ready.wait()
        for worker in workers:
            assert worker.process.stdin is not None
            await worker.process.stdin.send_all(b"go\n")
        if progress is not None:
            nursery.start_soon(_report_worker_progress, workers, progress)
        for worker in workers:
            await worker.process.wait()
        nursery.cancel_scope.cancel()
    reports = []
    for worker in workers:
        if worker.report is None:
            raise ClientError(
                f"loadgen worker {worker.number} exited with status {worker.process.returncode}"
                " without a report (see its message above)"
            )
        reports.append(worker.report)
    return merge(reports)


async def _report_worker_progress(workers: list[_Worker], progress: ProgressCallback) -> None:
    start = _now()
    while True:
        await trio.sleep(PROGRESS_INTERVAL)
        rt, errors, mismatches = (sum(w.progress[i] for w in workers) for i in range(3))
        progress(Progress(_now() - start, rt, errors, mismatches))


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def worker_main() -> None:
    """Entry point of one worker process (see the module docstring for the protocol)."""
    spec = json.loads(sys.stdin.readline())
    trio.run(_worker, spec)


async def _worker(spec: Mapping[str, Any]) -> None:
    config = _config_from_wire(spec["config"])
    run = _Run(
        config=config,
        ssl_context=client_context(config.client),
        target=await _Target.resolve(config),
        first_client=int(spec["first_client"]),
        count=int(spec["count"]),
        tickets=spec["tickets"],
    )

    async def wait_for_go() -> None:
        _emit({"ready": True})
        # The parent answers once every worker is ready; EOF (a dead parent) also ends it.
        await trio.to_thread.run_sync(sys.stdin.readline)

    def on_progress(p: Progress) -> None:
        _emit({"progress": [p.round_trips, p.errors, p.mismatches]})

    report = await _run_here(run, before_start=wait_for_go, progress=on_progress)
    _emit({"report": report.to_wire()})
