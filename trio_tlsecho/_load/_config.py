"""What a load run is, sans-io: its configuration, message sizes, the open-loop
schedule, the split of clients over workers, and what counts as which error."""

from __future__ import annotations

import errno
import re
import ssl
from collections.abc import Callable

import attrs
import trio

from .._config import (
    ClientConfig,
    count,
    round_trip_rate,
    seconds,
    seconds_or_zero,
    to_address,
    validator,
)
from .._exceptions import ClientError, ConfigError, causes
from .._net import Address, UnixAddress
from ._stats import ErrorKind

#: Largest message ``--size`` accepts.
MAX_SIZE = 16 * 1024 * 1024
#: How often the progress callback runs.
PROGRESS_INTERVAL = 1.0


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


def _to_target(value: Address | UnixAddress | str) -> Address | UnixAddress:
    """An :class:`Address` or :class:`UnixAddress`, or text for one (``unix:/path``)."""
    if isinstance(value, UnixAddress):
        return value
    if isinstance(value, str) and value.startswith("unix:"):
        return UnixAddress(value[len("unix:") :])
    return to_address(value)


def _to_sizes(value: SizeRange | str | int) -> SizeRange:
    if isinstance(value, SizeRange):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return SizeRange(value, value)
    if isinstance(value, str):
        return SizeRange.parse(value)
    raise ConfigError(f"sizes must be a SizeRange, 'LOW-HIGH' or a number, not {value!r}")


#: Measured seconds when neither a duration nor a number of requests is given.
DEFAULT_DURATION = 10.0


def _default_duration(config: LoadConfig) -> float | None:
    return None if config.requests is not None else DEFAULT_DURATION


@attrs.frozen(kw_only=True)
class LoadConfig:
    """One load run.  Build with keywords; change with :func:`attrs.evolve`."""

    #: Where to connect: ``HOST:PORT``, or a UNIX socket's path (``unix:/run/echo.sock``).
    address: Address | UnixAddress = attrs.field(converter=_to_target)
    client: ClientConfig = attrs.field(validator=attrs.validators.instance_of(ClientConfig))
    clients: int = attrs.field(default=64, validator=validator(count))
    #: Stop after this many measured exchanges in total (successful or not)...
    requests: int | None = attrs.field(default=None, validator=validator(count, optional=True))
    #: ... or after this many measured seconds (DEFAULT_DURATION when neither is given).
    duration: float | None = attrs.field(
        default=attrs.Factory(_default_duration, takes_self=True),
        validator=validator(seconds, optional=True),
    )
    sizes: SizeRange = attrs.field(default=SizeRange(1, 100), converter=_to_sizes)
    #: Total round trips per second, open loop; ``None`` is closed loop (full speed).
    rate: float | None = attrs.field(default=None, validator=validator(round_trip_rate, optional=True))
    #: Connect, handshake, echo once and close, for every exchange.
    new_connection_per_request: bool = False
    warmup: float = attrs.field(default=0.0, validator=validator(seconds_or_zero))
    ramp: float = attrs.field(default=0.0, validator=validator(seconds_or_zero))
    workers: int = attrs.field(default=1, validator=validator(count))
    #: Seconds one exchange (connecting included) may take before it counts as a timeout.
    timeout: float = attrs.field(default=10.0, validator=validator(seconds))
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
        if self.proxy_protocol is not None and isinstance(self.address, UnixAddress):
            raise ConfigError(f"a PROXY header names TCP addresses: not with {self.address}")


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


EOF_REASONS = frozenset({"UNEXPECTED_EOF_WHILE_READING", "EOF", "ZERO_RETURN"})


def classify_error(exc: BaseException, *, during_handshake: bool = False) -> ErrorKind | None:
    """Which :class:`ErrorKind` *exc* is, or ``None`` if it is not a connection failure (a bug).

    Looks through trio's wrappers (``BrokenResourceError``, ``ClientError``, the
    ``OSError`` of ``open_tcp_stream``) at what caused them, walked by :func:`causes`.
    """
    chain = causes(exc)
    for cur in chain:
        if isinstance(cur, trio.TooSlowError):
            return ErrorKind.TIMEOUT
        if isinstance(cur, ConnectionRefusedError):
            return ErrorKind.REFUSED
        if isinstance(cur, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return ErrorKind.RESET
        if isinstance(cur, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) or (
            isinstance(cur, ssl.SSLError) and (getattr(cur, "reason", None) or "") in EOF_REASONS
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


@attrs.frozen
class Progress:
    """Totals so far, for a live display."""

    #: Seconds of the measured window so far; negative during the warm-up (the totals
    #: count only the window, so a rate over the whole run so far would read low).
    elapsed: float
    round_trips: int
    errors: int
    mismatches: int


ProgressCallback = Callable[[Progress], None]
