"""``serve --workers N`` on a small machine: what a second worker costs, and how SO_REUSEPORT spreads.

    nox -s workers        # or: python benchmarks/workers.py [--repeat 3] [--duration 5]

Two questions, each answered from outside the server (nothing in it is changed):

1. Efficiency.  Round trips per *server* CPU-second with ``--workers 2`` must stay
   within 10 % of ``--workers 1``: the ratio (2 over 1) at least 0.90; more efficient
   with two is no failure.  Both run the (a*) workload of ``run.py``: one ``tlsload``,
   64 clients, 1-100 byte messages, closed loop.  The server's CPU is that of every
   process in its tree (the supervisor, its workers and multiprocessing's resource
   tracker: utime + stime from ``/proc/PID/stat``), sampled every 50 ms and taken over
   tlsload's measured window.  Raw rates are printed too but are not the comparison:
   on 2 cores the load generator shares the machine with the server.  On 2 or more CPUs
   the server (its supervisor pinned before it starts; the workers inherit that) runs
   on one CPU and tlsload, with this script, on another, as ``run.py`` pins: one CPU
   per physical core first, so the two share no core while there are enough.  With
   one CPU nothing is pinned, and the JSON says so.  Runs alternate 1, 2, 1, 2, ...,
   ``--repeat`` times each; the medians and their ratio are printed.  A window shorter
   than ``run.py``'s MIN_EFFICIENCY_WINDOW, or less server CPU than MIN_EFFICIENCY_CPU,
   is counted but marked: /proc counts CPU in 10 ms ticks.

2. Spread.  For each N of ``--workers-spread`` (default 2, 4, 8; not pinned) one server
   with N workers is started and, ``--spread-repeat`` times, ``tlsload --hold`` opens a
   fresh set of 64 connections and holds them while each worker's ESTABLISHED
   connections on the server's port are counted: the socket inodes in
   ``/proc/PID/fd/`` matched against ``/proc/net/tcp`` and ``tcp6``.  A worker is a
   process of the server's tree that holds a listening socket on the port (the
   supervisor only reserves the port, unlistened).  Printed: each repeat's counts,
   min and max, and the min and max over all repeats.

Writes ``workers-<date>.json`` into ``--out`` (the machine, the pinning, every run and
the medians; rewritten after each run, so a failure keeps what was measured) and the
server logs beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import ssl
import statistics
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run import (
    HERE,
    IDLE_TIMEOUT,
    MIN_EFFICIENCY_CPU,
    MIN_EFFICIENCY_WINDOW,
    START_TIMEOUT,
    RunCost,
    Server,
    interpolate,
    run_sampling,
    scratch,
    tlsload_command,
    wait_for_quiet,
)
from scaling import CLIENTS_PER_LOAD, cpu_order, start_workers, stop_workers

#: /proc/net/tcp's states (include/net/tcp_states.h).
ESTABLISHED = "01"
LISTEN = "0A"
#: The efficiency target: ``--workers 2`` at least this fraction of ``--workers 1``.
TARGET = 0.90


# -- the server's processes, from /proc -------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below *pid*, children first (any of its threads may have started one)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerTree(Server):
    """A ``--workers`` server whose CPU is that of every process in its tree, as it was
    when this was made: a worker restarted later is a failed run (see :meth:`check`)."""

    pids: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, server: Server) -> ServerTree:
        pid = server.process.pid
        return cls(server.name, server.process, server.address, [pid, *descendants(pid)])

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def check(self) -> None:
        super().check()
        now = [self.process.pid, *descendants(self.process.pid)]
        if sorted(now) != sorted(self.pids):
            raise RuntimeError(
                f"server {self.name}: its processes changed during the run ({self.pids} -> {now})"
            )


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets *pid* has open."""
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def tcp_inodes(port: int, state: str) -> set[int]:
    """The inodes of the TCP sockets in *state* whose local port is *port*, IPv4 and IPv6."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):  # no IPv6 in this kernel
            for line in Path(table).read_text().splitlines()[1:]:
                # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
                fields = line.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(fields[9]))
    return inodes


def established(pids: Iterable[int], port: int) -> dict[int, int]:
    """How many ESTABLISHED connections on local *port* each of *pids* holds."""
    connections = tcp_inodes(port, ESTABLISHED)
    return {pid: len(socket_inodes(pid) & connections) for pid in pids}


def workers_of(server: Server) -> list[int]:
    """The processes of *server*'s tree that listen on its port: its workers."""
    listening = tcp_inodes(server.address.port, LISTEN)
    pids = [server.process.pid, *descendants(server.process.pid)]
    return [pid for pid in pids if socket_inodes(pid) & listening]


# -- the two measurements --------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every run shares: tlsload, the PKI, the CPUs, the command line."""

    binary: Path
    pki: Path
    server_cpus: set[int]
    load_cpus: set[int]
    args: argparse.Namespace


def efficiency_run(n: int, setup: Setup) -> dict[str, Any]:
    """(a*) against ``serve --workers N``: round trips per server CPU-second in tlsload's window."""
    args = setup.args
    started = start_workers(n, setup.pki, setup.server_cpus, args.out / f"workers-serve-{n}.log")
    try:
        server = ServerTree.of(started)
        command = tlsload_command(
            setup.binary, server, setup.pki, "--clients", str(CLIENTS_PER_LOAD), "--size", "1-100",
            "--duration", str(args.duration), "--warmup", str(args.warmup),
        )  # fmt: skip
        cost = RunCost(server)
        timed = run_sampling(command, server, cost.start + args.warmup + args.duration + START_TIMEOUT)
        out, err, samples, end = timed.out, timed.err, timed.samples, timed.end
        shares = cost.shares(end)  # checks the server: still up, the same processes
    finally:
        stop_workers(started.process)
    if timed.returncode != 0:
        said = (err or out).decode(errors="replace").strip().splitlines() or ["no message"]
        raise RuntimeError(f"tlsload against {n} workers failed (exit {timed.returncode}): {said[-1]}")
    report: dict[str, Any] = json.loads(out)
    seconds = report["seconds"]
    # The window ends when tlsload stops measuring, just before it exits.
    cpu = interpolate(samples, end) - interpolate(samples, end - seconds)
    return {
        "workers": n,
        "round_trips_per_sec": report["round_trips_per_sec"],
        "server_cpu_seconds": round(cpu, 3),
        "round_trips_per_server_cpu_second": round(report["round_trips"] / cpu, 1) if cpu > 0 else None,
        "short_window": seconds < MIN_EFFICIENCY_WINDOW or cpu < MIN_EFFICIENCY_CPU,
        "server_pids": len(server.pids),
        "errors": sum(report["errors"].values()) + report.get("mismatches", 0),
        **shares,
        "report": report,
    }


def hold_and_count(server: Server, setup: Setup, workers: list[int]) -> dict[str, Any]:
    """Open a fresh set of connections with ``tlsload --hold``; count each worker's while held."""
    command = tlsload_command(
        setup.binary, server, setup.pki, "--clients", str(CLIENTS_PER_LOAD), "--size", "1",
        "--hold", str(IDLE_TIMEOUT), "--timeout", str(IDLE_TIMEOUT),
    )  # fmt: skip
    pipe = subprocess.PIPE
    with subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe) as proc:
        assert proc.stdout is not None
        # Bounded: tlsload gives up on its own after IDLE_TIMEOUT.  Once it says "held",
        # every client has had its echo, so every connection has been accepted by a worker.
        held = proc.stdout.readline()
        counts = established(workers, server.address.port)
        # communicate() closes stdin first: tlsload then closes them all and reports.
        out, err = proc.communicate(timeout=START_TIMEOUT)
    server.check()
    if not held.startswith(b'{"held"') or proc.returncode != 0:
        said = (err or held + out).decode(errors="replace").strip()
        raise RuntimeError(f"tlsload --hold against {server.name} failed (exit {proc.returncode}): {said}")
    per_worker = sorted(counts.values())
    return {
        "held": json.loads(held)["held"],
        "per_worker": per_worker,
        "min": per_worker[0],
        "max": per_worker[-1],
    }


def spread_runs(n: int, setup: Setup) -> list[dict[str, Any]]:
    """One server with *n* workers (not pinned), ``--spread-repeat`` fresh sets of connections."""
    cpus = setup.server_cpus | setup.load_cpus
    started = start_workers(n, setup.pki, cpus, setup.args.out / f"workers-spread-{n}.log")
    try:
        workers = workers_of(started)
        if len(workers) != n:
            raise RuntimeError(f"serve --workers {n}: {len(workers)} processes listen on its port")
        runs = []
        for rep in range(setup.args.spread_repeat):
            runs.append({"workers": n, "repeat": rep + 1, **hold_and_count(started, setup, workers)})
    finally:
        stop_workers(started.process)
    return runs


# -- summaries -------------------------------------------------------------------------


def efficiency_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per N: the medians; and the ratio of ``--workers 2``'s efficiency to ``--workers 1``'s."""
    medians: dict[str, Any] = {}
    for n in (1, 2):
        mine = [r for r in runs if r["workers"] == n]
        per_cpu = [r["round_trips_per_server_cpu_second"] for r in mine]
        medians[str(n)] = {
            "round_trips_per_sec": statistics.median(r["round_trips_per_sec"] for r in mine),
            "round_trips_per_server_cpu_second": statistics.median(v for v in per_cpu if v is not None),
            "server_cpu": statistics.median(r["server_cpu"] for r in mine),
            "errors": sum(r["errors"] for r in mine),
        }
    one, two = (medians[n]["round_trips_per_server_cpu_second"] for n in ("1", "2"))
    ratio = round(two / one, 3)
    return {"medians": medians, "ratio": ratio, "target": TARGET, "meets_target": ratio >= TARGET}


def spread_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per N: the min and max connections per worker over every repeat."""
    summary: dict[str, Any] = {}
    for n in sorted({r["workers"] for r in runs}):
        mine = [r for r in runs if r["workers"] == n]
        summary[str(n)] = {"min": min(r["min"] for r in mine), "max": max(r["max"] for r in mine)}
    return summary


def report_lines(result: dict[str, Any]) -> list[str]:
    """The markdown tables printed at the end."""
    efficiency = result["efficiency"]
    lines = [
        f"medians of {result['settings']['repeat']} runs each:",
        "",
        "| workers | round trips/s | round trips per server CPU-s | server CPU busy | errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n, row in efficiency["medians"].items():
        lines.append(
            f"| {n} | {row['round_trips_per_sec']:,.0f} | {row['round_trips_per_server_cpu_second']:,.0f}"
            f" | {row['server_cpu']:.0%} | {row['errors']:,} |"
        )
    verdict = "within" if efficiency["meets_target"] else "NOT within"
    lines += [
        "",
        f"--workers 2 / --workers 1 per server CPU-second: {efficiency['ratio']:.3f}"
        f" ({verdict} 10 %: target >= {TARGET:.2f})",
        "",
        f"| workers | connections per worker, each repeat ({CLIENTS_PER_LOAD} held) | min | max |",
        "| --- | --- | --- | --- |",
    ]
    for n, overall in result["spread"]["summary"].items():
        repeats = [r for r in result["spread"]["runs"] if str(r["workers"]) == n]
        each = "; ".join(f"{r['min']}-{r['max']} {r['per_worker']}" for r in repeats)
        lines.append(f"| {n} | {each} | {overall['min']} | {overall['max']} |")
    return lines


# -- main ------------------------------------------------------------------------------


def machine(cpus: list[int], pinning: str) -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "?",
    )  # fmt: skip
    return {
        "cpus": len(cpus),
        "model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "pinning": pinning,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="efficiency runs per N (default: 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default: 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default: 1)")
    parser.add_argument(
        "--workers-spread", default="2,4,8", help="comma-separated N values for the spread (default: 2,4,8)"
    )
    parser.add_argument(
        "--spread-repeat", type=int, default=5, help="fresh sets of connections per N (default: 5)"
    )
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.15,
        help="before each efficiency run, wait (up to --quiet-wait s) until other processes use at"
        " most this fraction of a CPU (default: 0.15)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="seconds to wait for a quiet machine (default: 60)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="default: benchmarks/results")
    args = parser.parse_args(argv)
    try:
        args.spread = sorted({int(part) for part in args.workers_spread.split(",")})
    except ValueError:
        parser.error(f"--workers-spread: expected comma-separated integers, got {args.workers_spread!r}")
    if not args.spread or args.spread[0] < 1:
        parser.error("--workers-spread values must be positive")
    if min(args.repeat, args.spread_repeat) < 1 or min(args.duration, args.warmup) <= 0:
        parser.error("--repeat, --spread-repeat, --duration and --warmup must be positive")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: {exc.strerror}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cpus = sorted(os.sched_getaffinity(0))
    order, _ = cpu_order(cpus)
    server_cpus, load_cpus = ({order[0]}, {order[1]}) if len(order) >= 2 else (set(cpus), set(cpus))
    pinning = (
        f"efficiency runs: server on CPU {order[0]}, tlsload and this script on CPU {order[1]};"
        " spread runs: not pinned"
        if len(order) >= 2
        else "none (one CPU)"
    )
    # This process and the tlsload it starts; each server is pinned as it starts.
    os.sched_setaffinity(0, load_cpus)
    path = args.out / f"workers-{dt.date.today().isoformat()}.json"
    result: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(cpus, pinning),
        "settings": {k: v for k, v in vars(args).items() if k != "workers_spread"} | {"out": str(args.out)},
        "efficiency": {"runs": []},
        "spread": {"runs": []},
    }

    def save() -> None:
        path.write_text(json.dumps(result, indent=2) + "\n")

    with scratch("tlsecho-workers-") as (_tmp, pki, binary):
        setup = Setup(binary, pki, server_cpus, load_cpus, args)
        for rep in range(args.repeat):
            for n in (1, 2):
                wait_for_quiet(args.max_other_cpu, args.quiet_wait, print)
                run = efficiency_run(n, setup)
                result["efficiency"]["runs"].append(run)
                save()
                short = " (short window: ticks of 10 ms weigh)" if run["short_window"] else ""
                print(
                    f"run {rep + 1} --workers {n}: {run['round_trips_per_sec']:,.0f} round trips/s,"
                    f" {run['round_trips_per_server_cpu_second'] or 0:,.0f} per server CPU-s"
                    f" (server {run['server_cpu']:.0%} of a CPU, other processes {run['other_cpu']:.0%})"
                    f"{short}",
                    flush=True,
                )
        result["efficiency"] |= efficiency_medians(result["efficiency"]["runs"])
        save()
        for n in args.spread:
            runs = spread_runs(n, setup)
            result["spread"]["runs"] += runs
            save()
            for run in runs:
                print(f"spread --workers {n}, repeat {run['repeat']}: {run['per_worker']}", flush=True)
    result["spread"]["summary"] = spread_summary(result["spread"]["runs"])
    save()
    print()
    print(f"{len(cpus)} CPUs ({result['machine']['model']}); pinning: {pinning}")
    print(f"{args.duration:g} s runs after {args.warmup:g} s warm-up, {CLIENTS_PER_LOAD} clients, 1-100 B")
    print()
    print("\n".join(report_lines(result)))
    print()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
