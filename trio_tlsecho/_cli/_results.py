"""What ``loadgen`` and ``report`` print and write: the table (with ``--latency``, the
percentile spectra), ``--hgrm`` and ``--json``, and whether the run failed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from .._load import LoadReport, RunResult, format_report
from ._common import PROG


def add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        help="also write the result (parameters, summary, histograms) as JSON to FILE",
    )
    p.add_argument(
        "--latency",
        action="store_true",
        help="print the full latency percentile spectrum (HdrHistogram), with mean and stdev",
    )
    p.add_argument(
        "--hgrm",
        metavar="FILE",
        type=Path,
        help="write the latency percentile distribution (HdrHistogram .hgrm, ms) to FILE",
    )


def check_output_flags(args: argparse.Namespace) -> None:
    """Refuse an output file that cannot be written before the run, not after it."""
    for flag, path in (("--json", args.json), ("--hgrm", args.hgrm)):
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"cannot write {flag} {path}: no directory {path.parent}")


def describe(params: Mapping[str, Any]) -> str:
    """One line saying what was run (from a result's ``parameters``)."""
    mode = f"open loop at {params['rate']:g} round trips/s" if params["mode"] == "open" else "closed loop"
    per_request = params["new_connection_per_request"]
    what = "new connection per request" if per_request else "persistent connections"
    requests = params["requests"]
    until = f"{requests:,} requests" if requests is not None else f"{params['duration']:g}s"
    sizes = params["sizes"]
    size = str(sizes["low"]) if sizes["low"] == sizes["high"] else f"{sizes['low']}-{sizes['high']}"
    # Merged runs add their workers: name them only where a loader had several.
    workers = f", {params['workers']} workers" if params["workers"] > params.get("runs", 1) else ""
    runs = f", {params['runs']} runs merged" if params.get("runs", 1) > 1 else ""
    return (
        f"loadgen {params['target']}: {params['clients']} clients, {size} bytes, {mode},"
        f" {what}, {until}{workers}{runs}"
    )


def show(result: RunResult, args: argparse.Namespace, *, interrupted: bool = False) -> int:
    """Print *result*, write the files asked for; the exit status (1: the run failed)."""
    open_loop = result.parameters["mode"] == "open"
    title = describe(result.parameters) + (" (interrupted: partial result)" if interrupted else "")
    report = result.report
    # The files first: a result is kept even if stdout is gone (`| head`).
    if args.json is not None:
        _write(args.json, "--json", json.dumps(result.to_json(), indent=2) + "\n")
    if args.hgrm is not None:
        _write(args.hgrm, "--hgrm", report.latency_histogram().distribution())
    print(format_report(report, title=title, open_loop=open_loop, latency=args.latency), flush=True)
    problem = None if interrupted else verdict(report)  # an interrupted run ends as that
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


def _write(path: Path, flag: str, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None
