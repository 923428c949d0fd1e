"""The ``loadgen`` subcommand: flags -> :class:`LoadConfig` -> :func:`run_load` -> a table.

Kept apart from :mod:`._main` because it is the one command with a dozen flags of
its own; the flags every client takes (address, certificates, timeout) and the value
types come from :mod:`._common`, and :class:`LoadConfig` checks how the flags fit together.
What is printed (the table, ``--latency``, ``--json``) is :mod:`._results`'s, which
``report`` shares.  Short flags and duration units are wrk2's (``-c 64 -d 30s -R 5000``).
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TextIO

import attrs
import trio

from .._config import from_text, round_trip_rate
from .._exceptions import ConfigError
from .._load import (
    DEFAULT_DURATION,
    LoadConfig,
    LoadReport,
    Progress,
    RunResult,
    SizeRange,
    format_progress,
    parameters,
    run_load,
)
from .._version import __version__
from ._common import (
    PROG,
    add_client_flags,
    add_tls_flags,
    client_config,
    count_arg,
    describe_command,
    duration_arg,
    duration_or_zero_arg,
    flag_type,
    given,
)
from ._results import add_output_flags, check_output_flags, show

if TYPE_CHECKING:
    from ._common import SubParsers

DEFAULT_CLIENTS = 64
DEFAULT_SIZES = "1-100"
#: When stderr is not a terminal (a CI log), one progress line this often.
LOG_PROGRESS_EVERY = 5
#: Seconds of window a rate is shown over, at least: the first report after the warm-up
#: (or the barrier) may come a few ms into the window, and 7 round trips in 2 ms read
#: as thousands a second.
MIN_RATE_SPAN = 0.5

_sizes = flag_type(SizeRange.parse)
_rate = flag_type(from_text(round_trip_rate, float))


def _start_time(text: str) -> float:
    """``--start-at``: RFC 3339 / ISO 8601 (no zone: local time) or a Unix timestamp."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a time: give RFC 3339 (2026-12-03T12:00:00Z) or a Unix timestamp"
        ) from None
    return when.timestamp()


_start_at = flag_type(_start_time)


def add_loadgen_parser(subparsers: SubParsers) -> None:
    """Add ``loadgen`` to the ``trio-tlsecho`` subcommands."""
    p = subparsers.add_parser(
        "loadgen",
        help="load an mTLS echo server with many verified clients; report rate and latency",
    )
    describe_command(
        p,
        "Run many mutual-TLS echo clients against a server and report round trips/s, MB/s\n"
        "and latency percentiles (HdrHistogram, coordinated-omission corrected with --rate).",
        f"{PROG} loadgen --duration 5                    # 64 clients, closed loop",
        f"{PROG} loadgen --size 256k --clients 4         # bulk throughput",
        f"{PROG} loadgen --rate 5000 --json out.json     # open loop: latency at a fixed rate",
        f"{PROG} loadgen --new-connection-per-request    # full handshakes per second",
    )
    add_client_flags(
        p, timeout=10.0, timeout_help="for one exchange, connecting included (default: %(default)g)"
    )
    p.add_argument(
        "-c",
        "--clients",
        metavar="N",
        type=count_arg,
        default=DEFAULT_CLIENTS,
        help=f"concurrent clients (default: {DEFAULT_CLIENTS})",
    )
    # LoadConfig refuses both as well; the group is for the usage line, which shows the choice.
    until = p.add_mutually_exclusive_group()
    until.add_argument(
        "-d",
        "--duration",
        metavar="TIME",
        type=duration_arg,
        help="run this long, connecting included (after --warmup): seconds or 500ms, 30s, 2m"
        f" (default: {DEFAULT_DURATION:g}s)",
    )
    until.add_argument("--requests", metavar="N", type=count_arg, help="measure this many exchanges in total")
    p.add_argument(
        "--size",
        metavar="BYTES",
        type=_sizes,
        default=SizeRange.parse(DEFAULT_SIZES),
        help=f"message size: LOW-HIGH (uniform) or fixed, e.g. 65536 or 256k (default: {DEFAULT_SIZES})",
    )
    p.add_argument(
        "-R",
        "--rate",
        metavar="R",
        type=_rate,
        help="open loop: R round trips/s in total, latency from the intended send time"
        " (default: closed loop, full speed)",
    )
    p.add_argument(
        "--new-connection-per-request",
        action="store_true",
        help="connect, handshake, echo once and close for every exchange (handshakes/s)",
    )
    p.add_argument(
        "--warmup",
        metavar="TIME",
        type=duration_or_zero_arg,
        default=0.0,
        help="run this long before measuring (default: 0)",
    )
    p.add_argument(
        "--ramp",
        metavar="TIME",
        type=duration_or_zero_arg,
        default=0.0,
        help="start the clients evenly over this time instead of together (default: 0)",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=count_arg,
        default=1,
        help="processes to share the clients, each with its own event loop (default: 1)",
    )
    p.add_argument(
        "--start-at",
        metavar="TIME",
        type=_start_at,
        help="start at this wall-clock time (RFC 3339 or Unix time): loaders on several"
        " machines start together; merge their --json with 'report'",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line (by default on stderr)")
    add_output_flags(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume the previous TLS session on each reconnect (serve --session-tickets)",
    )
    p.add_argument(
        "--proxy-protocol",
        choices=["v1", "v2"],
        help="send a PROXY protocol header before each handshake (for serve --proxy-protocol)",
    )
    add_tls_flags(p, "client")
    p.set_defaults(func=_cmd_loadgen)


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The :class:`LoadConfig` the parsed flags describe (``ConfigError`` if they do not fit)."""
    client = client_config(args)
    check_output_flags(args)
    if args.start_at is not None and args.start_at <= time.time():
        raise ConfigError(f"--start-at is in the past ({_wall(args.start_at)})")
    return LoadConfig(
        address=args.connect,
        requests=args.requests,
        # Without --duration, LoadConfig's own: DEFAULT_DURATION unless --requests is given.
        **given(duration=args.duration),
        client=client,
        clients=args.clients,
        sizes=args.size,
        rate=args.rate,
        new_connection_per_request=args.new_connection_per_request,
        warmup=args.warmup,
        ramp=args.ramp,
        workers=args.workers,
        timeout=args.timeout,
        proxy_protocol=int(args.proxy_protocol[1]) if args.proxy_protocol else None,
        resume=args.resume,
    )


def _wall(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


@attrs.define
class ProgressDisplay:
    """Progress on stderr: a line rewritten in place on a terminal, a plain line every
    :data:`LOG_PROGRESS_EVERY` reports (seconds) otherwise; the rate is since the last
    report that showed one, once that is :data:`MIN_RATE_SPAN` of the window or more."""

    total: float | None
    stream: TextIO = attrs.field(factory=lambda: sys.stderr)
    tty: bool = attrs.field(default=attrs.Factory(lambda self: self.stream.isatty(), takes_self=True))
    width: int = 0
    calls: int = 0
    #: Where the rate is counted from: the last report that showed one.
    previous: Progress = attrs.Factory(lambda: Progress(0.0, 0, 0, 0))

    def __call__(self, progress: Progress) -> None:
        prev = self.previous
        self.calls += 1
        span = progress.elapsed - max(prev.elapsed, 0.0)
        rate = None
        if span >= MIN_RATE_SPAN:
            rate = (progress.round_trips - prev.round_trips) / span
            self.previous = progress
        line = format_progress(
            elapsed=progress.elapsed,
            total=self.total,
            round_trips=progress.round_trips,
            rate=rate,
            errors=progress.errors,
            mismatches=progress.mismatches,
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        elif self.calls % LOG_PROGRESS_EVERY == 0:
            self.stream.write(f"{PROG} loadgen: {line}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def _cmd_loadgen(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    display = None if args.quiet else ProgressDisplay(config.duration)
    if args.start_at is not None and not args.quiet:
        print(f"{PROG} loadgen: starting at {_wall(args.start_at)}", file=sys.stderr, flush=True)
    try:
        started, report, interrupted = trio.run(_run, config, display, args.start_at)
    finally:
        if display is not None:
            display.finish()
    result = RunResult(parameters(config, version=__version__, started=started), report)
    status = show(result, args, interrupted=interrupted)
    for warning in warnings(config, report):
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    if interrupted:
        # The partial report is out; the program's Ctrl-C handling says the rest.
        raise KeyboardInterrupt
    return status


async def _run(
    config: LoadConfig, display: ProgressDisplay | None, start_at: float | None
) -> tuple[datetime.datetime, LoadReport, bool]:
    if start_at is not None:
        await trio.sleep(max(start_at - time.time(), 0.0))
    started = datetime.datetime.now(datetime.UTC)
    stop = trio.Event()
    # Ctrl-C ends the run with what it measured; Python handles signals only in the
    # main thread (a caller running the command in another one gets trio's Ctrl-C).
    if threading.current_thread() is not threading.main_thread():
        return started, await run_load(config, progress=display), False
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_on_signal, signals, stop)
            report = await run_load(config, progress=display, stop=stop)
            nursery.cancel_scope.cancel()
    return started, report, stop.is_set()


async def _set_on_signal(signals: AsyncIterator[int], stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()


def warnings(config: LoadConfig, report: LoadReport) -> list[str]:
    """What the user should know about a run that did not fail (``--resume`` in vain)."""
    found = []
    if config.resume and not report.resumed and report.handshake_histogram().count > report.clients:
        found.append(
            "--resume: no handshake resumed a session; the server issued no session ticket"
            " (serve --session-tickets)"
        )
    return found
