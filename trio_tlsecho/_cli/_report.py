"""The ``report`` subcommand: merge ``loadgen --json`` results of runs side by side
(several load machines) exactly, and print them as one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .._exceptions import ConfigError
from .._load import RunResult, merge_results
from ._common import PROG, describe_command
from ._results import add_output_flags, check_output_flags, show

if TYPE_CHECKING:
    from ._common import SubParsers


def add_report_parser(subparsers: SubParsers) -> None:
    """Add ``report`` to the ``trio-tlsecho`` subcommands."""
    p = subparsers.add_parser(
        "report",
        help="merge 'loadgen --json' results (e.g. one per load machine) and print them as one run",
    )
    describe_command(
        p,
        "Read results written by 'loadgen --json', merge them exactly (counters and\n"
        "HdrHistograms add; runs that differ in target, mode, sizes or window, the same run\n"
        "given twice, and runs whose measured windows do not overlap are refused) and print\n"
        "the report one loader with all their clients would have printed.",
        f"{PROG} loadgen --connect HOST:8443 -c 64 -d 30s --start-at 2026-12-03T12:00:00Z --json a.json",
        f"{PROG} report a.json b.json",
        f"{PROG} report --latency --json merged.json a.json b.json",
    )
    p.add_argument("files", metavar="FILE.json", type=Path, nargs="+", help="loadgen --json results")
    add_output_flags(p)
    p.set_defaults(func=_cmd_report)


def read_result(path: Path) -> RunResult:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None
    return RunResult.from_json(data, source=str(path))


def _cmd_report(args: argparse.Namespace) -> int:
    check_output_flags(args)
    results = [read_result(path) for path in args.files]
    merged = merge_results(results, sources=[str(path) for path in args.files])
    return show(merged, args)
