"""The ``loadgen`` subcommand: flags -> :class:`LoadConfig` -> :func:`run_load` -> a table.

Kept apart from :mod:`._main` because it is the one command with a dozen flags of
its own; the flags every client takes (address, certificates, timeout) and the value
types come from :mod:`._common`, and :class:`LoadConfig` checks how the flags fit together.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .._config import from_text, round_trip_rate
from .._exceptions import ConfigError
from .._load import (
    DEFAULT_DURATION,
    LoadConfig,
    LoadReport,
    Progress,
    SizeRange,
    format_progress,
    format_report,
    run_load,
)
from ._common import (
    PROG,
    add_client_flags,
    add_tls_flags,
    client_config,
    count_arg,
    describe_command,
    flag_type,
    given,
    seconds_arg,
    seconds_or_zero_arg,
)

if TYPE_CHECKING:
    from ._common import SubParsers

DEFAULT_CLIENTS = 64
DEFAULT_SIZES = "1-100"

_sizes = flag_type(SizeRange.parse)
_rate = flag_type(from_text(round_trip_rate, float))


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
        "--clients",
        metavar="N",
        type=count_arg,
        default=DEFAULT_CLIENTS,
        help=f"concurrent clients (default: {DEFAULT_CLIENTS})",
    )
    # LoadConfig refuses both as well; the group is for the usage line, which shows the choice.
    until = p.add_mutually_exclusive_group()
    until.add_argument(
        "--duration",
        metavar="SECONDS",
        type=seconds_arg,
        help=f"measure for this long (default: {DEFAULT_DURATION:g})",
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
        metavar="SECONDS",
        type=seconds_or_zero_arg,
        default=0.0,
        help="run this long before measuring (default: 0)",
    )
    p.add_argument(
        "--ramp",
        metavar="SECONDS",
        type=seconds_or_zero_arg,
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
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the summary as JSON to FILE")
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
    if args.json is not None and not args.json.parent.is_dir():
        raise ConfigError(f"cannot write --json {args.json}: no directory {args.json.parent}")
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


def describe(config: LoadConfig) -> str:
    """One line saying what was run."""
    loop = f"open loop at {config.rate:g} round trips/s" if config.rate else "closed loop"
    what = "new connection per request" if config.new_connection_per_request else "persistent connections"
    until = f"{config.requests:,} requests" if config.requests is not None else f"{config.duration:g}s"
    workers = f", {config.workers} workers" if config.workers > 1 else ""
    return (
        f"loadgen {config.address}: {config.clients} clients, {config.sizes} bytes, {loop},"
        f" {what}, {until}{workers}"
    )


class _ProgressLine:
    """Rewrites one terminal line in place."""

    def __init__(self) -> None:
        self.width = 0

    def __call__(self, progress: Progress) -> None:
        line = format_progress(
            elapsed=progress.elapsed,
            round_trips=progress.round_trips,
            errors=progress.errors,
            mismatches=progress.mismatches,
        )
        sys.stdout.write("\r" + line.ljust(self.width))
        sys.stdout.flush()
        self.width = len(line)

    def finish(self) -> None:
        if self.width:
            sys.stdout.write("\r" + " " * self.width + "\r")
            sys.stdout.flush()


def _cmd_loadgen(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    line = _ProgressLine() if sys.stdout.isatty() else None
    try:
        report = trio.run(partial(run_load, config, progress=line))
    finally:
        if line is not None:
            line.finish()
    print(format_report(report, title=describe(config)), flush=True)
    if args.json is not None:
        _write_json(args.json, report.to_json())
    problem = verdict(report)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr, flush=True)
        return 1
    return 0


def verdict(report: LoadReport) -> str | None:
    """Why the run failed (mismatched echoes, nothing succeeded), or ``None``."""
    if report.mismatches:
        plural = "es" if report.mismatches != 1 else ""
        return f"{report.mismatches:,} echo{plural} differed from what was sent"
    if not report.round_trips:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in report.errors.items() if n)
        return f"no round trip succeeded ({kinds or 'no errors either: nothing was measured'})"
    return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write --json {path}: {exc.strerror or exc}") from None
