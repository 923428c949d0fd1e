"""Multi-core scaling of ``serve --workers N``: round trips/s against N, one worker's rate.

    python benchmarks/scaling.py [--workers 1,2,4,8] [--duration 10] [--repeat 3]

The issue's target: with N worker processes (SO_REUSEPORT, one trio loop each), round
trips/s grow to at least 0.75·N times one worker's, up to N = 8.  For each N this starts
``python -m trio_tlsecho serve --engine socket --workers N`` pinned to N CPUs (the
supervisor's affinity, which its workers inherit) and N ``tlsload`` processes (the (a*)
workload of ``run.py``: 64 clients each, 1-100 byte messages, closed loop) pinned one
each to N other CPUs, so the load never takes a server's CPU and one ``tlsload`` (about
3 µs of CPU per round trip) has several times the rate of the worker it faces.  CPUs
are handed out one per physical core first (SMT siblings last), so the servers and the
load share no physical core while there are enough; a run where they must is marked.
An N without 2·N CPUs to spare is skipped, and said so.

``--load loadgen`` drives the same workload with our own load generator instead, as one
``python -m trio_tlsecho loadgen --workers N`` (64·N clients) pinned to the N load CPUs,
whose workers inherit them.  It needs no C compiler, but it spends about as much CPU per
round trip as a server worker does, so N of its workers cannot saturate N server
workers: its table measures the pair's scaling, and the server-cores-busy column says
by how much the servers were short of full.

Each run reports the sum of the ``tlsload`` rates (their windows are concurrent) and how
busy the server cores were over the run (``/proc/stat``): well below 100 % means the
load, not the servers, was the limit, and the row does not measure scaling.  Runs
alternate over N, ``--repeat`` times; the table shows medians.  Writes
``scaling-<date>.json`` (with the machine; rewritten after every run, so a failure
keeps what was measured) and each N's server log into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from run import HERE, START_TIMEOUT, Server, build_tlsload, read_listening, tlsload_command

from trio_tlsecho import make_dev_pki

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


def cpu_order(cpus: list[int]) -> tuple[list[int], dict[int, list[int]]]:
    """*cpus*, one per physical core first, then their SMT siblings; and each one's siblings."""
    siblings: dict[int, list[int]] = {}
    for cpu in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        text = path.read_text().strip() if path.exists() else str(cpu)
        siblings[cpu] = _cpu_list(text)
    first: list[int] = []
    rest: list[int] = []
    seen: set[int] = set()
    for cpu in cpus:
        core = min(siblings[cpu])
        (rest if core in seen else first).append(cpu)
        seen.add(core)
    return first + rest, siblings


def _cpu_list(text: str) -> list[int]:
    """The kernel's CPU list format: "0,8" or "0-1" or "0-1,8-9"."""
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def start_workers(n: int, pki: Path, cores: set[int], log: Path) -> Server:
    """``serve --workers N`` on *cores*, in a process group of its own (see stop_workers)."""
    command = [
        sys.executable, "-m", "trio_tlsecho", "--log-level", "warning", "serve", "--engine", "socket",
        "--workers", str(n), "--listen", "127.0.0.1:0", "--shutdown-grace", "1",
        "--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"), "--ca", str(pki / "ca.pem"),
    ]  # fmt: skip
    with log.open("ab") as err:
        # Pinned before it runs, so that every worker it starts inherits the cores.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
        )
    # The supervisor prints it once every worker is up.
    address, said = read_listening(process)
    if address is None:
        stop_workers(process)
        raise RuntimeError(f"serve --workers {n} did not start (said {said!r}): {_tail(log)}")
    return Server(f"workers={n}", process, address)


def stop_workers(supervisor: subprocess.Popen[bytes]) -> None:
    """SIGINT to the supervisor, which stops its workers; then SIGKILL to what is left of
    its process group, so that no worker outlives a failed or stuck run."""
    if supervisor.poll() is None:
        supervisor.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            supervisor.wait(timeout=START_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    if supervisor.stdout is not None:
        supervisor.stdout.close()


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " / ".join(lines[-3:]) or f"nothing in {log}"


def load_commands(
    n: int, server: Server, binary: Path | None, pki: Path, args: argparse.Namespace, out: Path
) -> list[list[str]]:
    """The (a*) workload against *server*: one command per load CPU (tlsload), or one
    ``loadgen --workers N`` for all of them, writing its JSON to *out*."""
    duration, warmup = ("--duration", str(args.duration)), ("--warmup", str(args.warmup))
    if binary is not None:
        command = tlsload_command(binary, server, pki, "--clients", str(CLIENTS_PER_LOAD), "--size", "1-100",
                                  *duration, *warmup)  # fmt: skip
        return [command] * n
    return [[
        sys.executable, "-m", "trio_tlsecho", "--log-level", "warning", "loadgen",
        "--connect", str(server.address), "--workers", str(n), "--clients", str(CLIENTS_PER_LOAD * n),
        "--size", "1-100", *duration, *warmup, "--json", str(out),
        "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"), "--ca", str(pki / "ca.pem"),
    ]]  # fmt: skip


def one_run(
    n: int,
    order: list[int],
    siblings: dict[int, list[int]],
    binary: Path | None,
    pki: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    server_cores, load_cores = order[:n], order[n : 2 * n]
    shared = any(s in load_cores for cpu in server_cores for s in siblings[cpu])
    log = args.out / f"scaling-workers-{n}.log"
    server = start_workers(n, pki, set(server_cores), log)
    loads: list[subprocess.Popen[bytes]] = []
    report_file = pki.parent / "loadgen.json"
    try:
        commands = load_commands(n, server, binary, pki, args, report_file)
        busy0, total0 = cpu_ticks(server_cores)
        # One process per load CPU, or one loadgen on all of them (its workers inherit them).
        pins = [{core} for core in load_cores] if len(commands) == n else [set(load_cores)]
        for command, cores in zip(commands, pins, strict=True):
            loads.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores),  # type: ignore[misc]
                )
            )
        reports = []
        for load in loads:
            out, err = load.communicate(timeout=args.warmup + args.duration + START_TIMEOUT)
            if load.returncode != 0:
                said = (err or out).decode(errors="replace").strip().splitlines() or ["no message"]
                raise RuntimeError(f"{args.load} failed against {n} workers: {said[-1]}")
            reports.append(json.loads(out if binary is not None else report_file.read_bytes()))
        busy1, total1 = cpu_ticks(server_cores)
        server.check()
    finally:
        for load in loads:
            if load.poll() is None:
                load.kill()
                load.wait()
        stop_workers(server.process)
    return {
        "workers": n,
        "round_trips_per_sec": round(sum(r["round_trips_per_sec"] for r in reports), 1),
        # Every echoed byte is checked by either load generator; a failed exchange counts here.
        "errors": sum(sum(r["errors"].values()) + r.get("mismatches", 0) for r in reports),
        "server_cores_busy": round((busy1 - busy0) / max(total1 - total0, 1), 3),
        "server_cores": server_cores,
        "load_cores": load_cores,
        "servers_share_physical_cores_with_load": shared,
        "loads": reports,
    }


def table(rows: list[dict[str, Any]], repeat: int) -> str:
    one = rows[0]["median"] if rows and rows[0]["workers"] == 1 else None
    lines = [
        f"| workers N | round trips/s (median of {repeat}) | vs one worker | target 0.75·N"
        " | server cores busy | errors (all runs) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        n, rate = row["workers"], row["median"]
        times = f"{rate / one:.2f}" if one else "n/a"
        lines.append(
            f"| {n} | {rate:,.0f} | {times} | {0.75 * n:.2f} | {row['busy']:.0%} | {row['errors']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated N values (default: 1,2,4,8)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default: 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N (default: 3)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="default: benchmarks/results")
    parser.add_argument(
        "--load",
        choices=["tlsload", "loadgen"],
        default="tlsload",
        help="tlsload (C, N processes; default) or our own loadgen --workers N",
    )
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

    order, siblings = cpu_order(cpus)
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "?",
    )  # fmt: skip
    machine = {
        "cpus": len(cpus),
        "physical_cores": len({min(siblings[cpu]) for cpu in cpus}),
        "model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: {exc.strerror}")
    path = args.out / f"scaling-{dt.date.today().isoformat()}.json"
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []

    def save() -> None:
        result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine,
                  "settings": vars(args) | {"out": str(args.out)}, "medians": rows, "runs": runs}  # fmt: skip
        path.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="tlsecho-scaling-") as tmp:
        pki = Path(tmp) / "pki"
        make_dev_pki(pki)
        binary = None
        if args.load == "tlsload":
            binary = build_tlsload(Path(tmp), print)
            if binary is None:
                print("(--load loadgen needs no C compiler)")
                return 1
        for rep in range(args.repeat):
            for n in runnable if rep % 2 == 0 else runnable[::-1]:
                run = one_run(n, order, siblings, binary, pki, args)
                runs.append(run)
                save()
                shared = (
                    " (servers share physical cores with the load)"
                    * run["servers_share_physical_cores_with_load"]
                )
                errors = f", {run['errors']:,} errors" if run["errors"] else ""
                print(
                    f"run {rep + 1} N={n}: {run['round_trips_per_sec']:,.0f} round trips/s{errors}, "
                    f"server cores {run['server_cores_busy']:.0%} busy{shared}",
                    flush=True,
                )
    rows += [
        {
            "workers": n,
            "median": statistics.median(r["round_trips_per_sec"] for r in runs if r["workers"] == n),
            "busy": statistics.median(r["server_cores_busy"] for r in runs if r["workers"] == n),
            "errors": sum(r["errors"] for r in runs if r["workers"] == n),
        }
        for n in runnable
    ]
    save()
    print()
    print(
        f"{machine['cpus']} CPUs, {machine['physical_cores']} physical cores ({model}),"
        f" {args.duration:g} s runs after {args.warmup:g} s warm-up, load: {args.load}"
    )
    print()
    print(table(rows, args.repeat))
    print()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
