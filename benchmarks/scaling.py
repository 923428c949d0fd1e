"""Multi-core scaling of ``serve --workers N``: round trips/s against N, one worker's rate.

    python benchmarks/scaling.py [--workers 1,2,4,8] [--duration 10] [--repeat 3]

The issue's target: with N worker processes (SO_REUSEPORT, one trio loop each), round
trips/s grow to at least 0.75·N times one worker's, up to N = 8.  For each N this starts
``python -m trio_tlsecho serve --engine socket --workers N`` pinned to cores 0..N-1 (the
supervisor's affinity, which its workers inherit) and N ``tlsload`` processes (the (a*)
workload of ``run.py``: 64 clients each, 1-100 byte messages, closed loop) pinned one
each to cores N..2N-1, so the load never takes a server's core and one ``tlsload``
(about 3 µs of CPU per round trip) has several times the rate of the worker it faces.
An N without 2·N cores to spare is skipped, and said so.

Each run reports the sum of the ``tlsload`` rates (their windows are concurrent) and how
busy the server cores were over the run (``/proc/stat``): well below 100 % means the
load, not the servers, was the limit, and the row does not measure scaling.  Runs
alternate over N, ``--repeat`` times; the table shows medians.  Writes
``results/scaling-<date>.json`` with the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import HERE, START_TIMEOUT, Server, build_tlsload, stop, tlsload_command

from trio_tlsecho import Address, make_dev_pki

CLIENTS_PER_LOAD = 64


def cpu_ticks(cpus: list[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of *cpus* so far, from ``/proc/stat``."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            busy += sum(ticks) - idle
            total += sum(ticks)
    return busy, total


def start_workers(n: int, pki: Path, cores: set[int], log: Path) -> Server:
    command = [
        sys.executable, "-m", "trio_tlsecho", "--log-level", "warning", "serve", "--engine", "socket",
        "--workers", str(n), "--listen", "127.0.0.1:0",
        "--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"), "--ca", str(pki / "ca.pem"),
    ]  # fmt: skip
    with log.open("ab") as err:
        # Pinned before it runs, so that every worker it starts inherits the cores.
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, preexec_fn=lambda: os.sched_setaffinity(0, cores)
        )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    while not line.startswith(b"listening on") and time.monotonic() < deadline:
        line = process.stdout.readline()  # the supervisor prints it once every worker is up
        if not line:
            break
    if not line.startswith(b"listening on"):
        process.kill()
        raise RuntimeError(f"serve --workers {n} did not start (see {log})")
    return Server(f"workers={n}", process, Address.parse(line.decode().split()[-1]))


def one_run(
    n: int, cpus: list[int], binary: Path, pki: Path, args: argparse.Namespace, logs: Path
) -> dict[str, Any]:
    server_cores, load_cores = cpus[:n], cpus[n : 2 * n]
    server = start_workers(n, pki, set(server_cores), logs / f"workers-{n}.log")
    try:
        command = tlsload_command(
            binary, server, pki, "--clients", str(CLIENTS_PER_LOAD), "--size", "1-100",
            "--duration", str(args.duration), "--warmup", str(args.warmup),
        )  # fmt: skip
        busy0, total0 = cpu_ticks(server_cores)
        loads = [
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}),  # type: ignore[misc]
            )
            for core in load_cores
        ]
        reports = []
        for load in loads:
            out, err = load.communicate(timeout=args.warmup + args.duration + START_TIMEOUT)
            if load.returncode != 0:
                raise RuntimeError(f"tlsload failed against {n} workers: {(err or out).decode().strip()}")
            reports.append(json.loads(out))
        busy1, total1 = cpu_ticks(server_cores)
        server.check()
    finally:
        stop(server)
    return {
        "workers": n,
        "round_trips_per_sec": round(sum(r["round_trips_per_sec"] for r in reports), 1),
        "server_cores_busy": round((busy1 - busy0) / max(total1 - total0, 1), 3),
        "server_cores": server_cores,
        "load_cores": load_cores,
        "loads": reports,
    }


def table(rows: list[dict[str, Any]], repeat: int) -> str:
    one = rows[0]["median"] if rows and rows[0]["workers"] == 1 else None
    lines = [
        f"| workers N | round trips/s (median of {repeat}) | vs one worker | target 0.75·N"
        " | server cores busy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        n, rate = row["workers"], row["median"]
        times = f"{rate / one:.2f}" if one else "n/a"
        lines.append(f"| {n} | {rate:,.0f} | {times} | {0.75 * n:.2f} | {row['busy']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated N values (default: 1,2,4,8)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default: 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N (default: 3)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="default: benchmarks/results")
    args = parser.parse_args(argv)
    try:
        wanted = sorted({int(part) for part in args.workers.split(",")})
    except ValueError:
        parser.error(f"--workers: expected comma-separated integers, got {args.workers!r}")
    if not wanted or wanted[0] < 1 or args.repeat < 1 or args.duration <= 0 or args.warmup <= 0:
        parser.error("--workers values, --repeat, --duration and --warmup must be positive")
    cpus = sorted(os.sched_getaffinity(0))
    runnable = [n for n in wanted if 2 * n <= len(cpus)]
    for n in wanted:
        if n not in runnable:
            print(f"N = {n} skipped: needs {2 * n} cores (N for workers, N for load), this has {len(cpus)}")
    if not runnable:
        print("nothing to run")
        return 1

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tlsecho-scaling-") as tmp:
        pki = Path(tmp) / "pki"
        make_dev_pki(pki)
        binary = build_tlsload(Path(tmp), print)
        if binary is None:
            return 1
        for rep in range(args.repeat):
            for n in runnable if rep % 2 == 0 else runnable[::-1]:
                run = one_run(n, cpus, binary, pki, args, Path(tmp))
                runs.append(run)
                print(
                    f"run {rep + 1} N={n}: {run['round_trips_per_sec']:,.0f} round trips/s, "
                    f"server cores {run['server_cores_busy']:.0%} busy",
                    flush=True,
                )
    rows = [
        {
            "workers": n,
            "median": statistics.median(r["round_trips_per_sec"] for r in runs if r["workers"] == n),
            "busy": statistics.median(r["server_cores_busy"] for r in runs if r["workers"] == n),
        }
        for n in runnable
    ]
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "?",
    )  # fmt: skip
    machine = {
        "cpus": len(cpus),
        "model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }
    print()
    print(f"{machine['cpus']} CPUs ({model}), {args.duration:g} s runs after {args.warmup:g} s warm-up")
    print()
    print(table(rows, args.repeat))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scaling-{dt.date.today().isoformat()}.json"
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine,
              "settings": vars(args) | {"out": str(args.out)}, "medians": rows, "runs": runs}  # fmt: skip
    path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
