"""(e*) over longer runs: open-loop p99 latency at one rate, every server, many runs.

    python benchmarks/tail_latency.py [--rate 10000] [--duration 10] [--repeat 5]

``run.py``'s three 4-second (e*) runs do not separate tail latencies on a noisy VM: a
single run's p99 moves by 2x or more.  This runs only (e*) (``tlsload``, 64 clients,
1-100 byte messages, open loop at ``--rate`` round trips/s in total, latency from the
intended send time), with ``run.py``'s servers, pinning and functions, ``--repeat``
times each, the servers' order rotated every repetition, and prints every run's p99
and the medians with their ratios to asyncio.  Writes ``tail-<date>.json`` into
``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    OPEN_LOOP_C,
    SERVERS,
    LoadGenerators,
    run_c_workload,
    running_servers,
    scratch,
    two_cpus,
    wait_for_quiet,
)

from trio_tlsecho import ClientConfig, TLSFiles  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=10000.0, help="round trips/s in total (default: 10000)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default: 10)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-other-cpu", type=float, default=0.15)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.repeat < 1:
        parser.error("--rate, --duration and --repeat must be positive")
    args.workers = 1  # what run.py's LoadGenerators reads of its command line
    cpus = two_cpus()
    server_cpus = {cpus[0]}
    os.sched_setaffinity(0, set(cpus[1:]))
    p99: dict[str, list[int]] = {name: [] for name in SERVERS}
    runs: list[dict[str, Any]] = []
    with scratch("tlsecho-tail-") as (tmp, pki, tlsload):
        load = LoadGenerators(args, pki, ClientConfig(tls=TLSFiles.from_dir(pki, "client")), tlsload)
        with running_servers(pki, tmp, server_cpus) as servers:
            for rep in range(args.repeat):
                k = rep % len(SERVERS)
                for name in SERVERS[k:] + SERVERS[:k]:
                    wait_for_quiet(args.max_other_cpu, args.quiet_wait, print)
                    run = run_c_workload(load, servers[name], OPEN_LOOP_C, args.rate)
                    p99[name].append(run["value"])
                    runs.append({k: v for k, v in run.items() if not k.startswith("_")})
                    other = run["other_cpu"]
                    print(f"run {rep + 1} {name:12} p99 {run['value']:7,} µs  other {other:.0%}", flush=True)
    medians = {name: statistics.median(values) for name, values in p99.items()}
    print(f"\n(e*) p99 µs at {args.rate:,.0f} round trips/s, {args.repeat} runs of {args.duration:g} s each:")
    for name, values in p99.items():
        ratio = medians[name] / medians["asyncio"]
        print(f"  {name:12} median {medians[name]:7,.0f}  / asyncio {ratio:.2f}  runs {sorted(values)}")
    out = args.out / f"tail-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "p99_us": p99,
                               "medians": medians, "runs": runs}, indent=1, default=str))  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
