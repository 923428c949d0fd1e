"""Our ``forward`` handler as an mTLS terminator, against stunnel4 and HAProxy.

    nox -s terminator                 # or: python benchmarks/terminator.py [--duration 3] [--repeat 3]

Four terminators in front of the same plain echo target (``echo_target.c``), with the
same certificates (mutual TLS, client certificate required and verified):

  ours_trio, ours_socket   ``trio-tlsecho serve --handler forward`` with each engine
  stunnel                  stunnel4 (``verifyChain = yes``, ``requireCert = yes``)
  haproxy                  HAProxy in TCP mode, ``ssl ... verify required``, ``nbthread 1``

and the same load generators as ``benchmarks/run.py``, in the same run:

  (a*) 64 clients, 1-100 B messages, closed loop   round trips/s  (tlsload.c)
  (b*) 4 clients, 256 KiB messages                 MB/s           (tlsload.c)
  (c)  8 clients, new connection per request       handshakes/s   (our Python load generator:
                                                                   tlsload has no such mode)

Every terminator runs on CPU 0 (stunnel's threads too), the target and the load
generator on the other CPUs.  The terminators alternate run by run and rotate their
order each repetition; the table is the median of ``--repeat`` runs, with each of ours
over stunnel and over HAProxy.  Writes ``benchmarks/results/<date>-terminator.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from run import (
    C_WORKLOADS,
    HERE,
    WORKLOADS,
    LoadGenerators,
    Server,
    Workload,
    read_listening,
    run_c_workload,
    run_workload,
    scratch,
    stop,
)

from trio_tlsecho import Address, ClientConfig, TLSFiles

TERMINATORS = ("ours_trio", "ours_socket", "stunnel", "haproxy")
LABELS = {
    "ours_trio": "forward (trio engine)",
    "ours_socket": "forward (socket engine)",
    "stunnel": "stunnel4",
    "haproxy": "HAProxy (1 thread)",
}
ROWS: tuple[Workload, ...] = (C_WORKLOADS[0], C_WORKLOADS[1], WORKLOADS[2])
START_TIMEOUT = 30.0

HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend tls
    bind 127.0.0.1:{port} ssl crt {crt} ca-file {ca} verify required
    default_backend target
backend target
    server echo {target}
"""

STUNNEL_CONFIG = """\
foreground = yes
pid =
debug = 3
[tls]
accept = 127.0.0.1:{port}
connect = {target}
cert = {cert}
key = {key}
CAfile = {ca}
verifyChain = yes
requireCert = yes
"""


def free_port() -> int:
    # stunnel and HAProxy cannot report a port they chose: take one the kernel just gave out.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(process: subprocess.Popen[bytes], port: int, name: str, log: Path) -> Address:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log.read_text(errors="replace").strip()
            raise RuntimeError(f"{name} exited with status {process.returncode} at start: {said}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return Address("127.0.0.1", port)
        time.sleep(0.05)  # polling a process we do not control for its port
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:g}s")


def start_terminator(name: str, pki: Path, target: Address, tmp: Path, cpus: set[int] | None) -> Server:
    files = {"cert": pki / "server.pem", "key": pki / "server.key", "ca": pki / "ca.pem"}
    log = (tmp / f"{name}.log").open("ab")
    if name.startswith("ours_"):
        command = [
            sys.executable, "-m", "trio_tlsecho", "--log-level", "warning", "serve",
            "--engine", name.removeprefix("ours_"), "--listen", "127.0.0.1:0",
            "--cert", str(files["cert"]), "--key", str(files["key"]), "--ca", str(files["ca"]),
            "--handler", "forward", "--handler-option", f"target={target}",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        address, said = read_listening(process)
        if address is None:
            process.kill()
            raise RuntimeError(f"{name} did not start: {said!r}")
    else:
        port = free_port()
        config = tmp / f"{name}.cfg"
        if name == "stunnel":
            config.write_text(STUNNEL_CONFIG.format(port=port, target=target, **files))
            command = ["stunnel4", str(config)]
        else:
            crt = tmp / "server-with-key.pem"
            crt.write_text(files["cert"].read_text() + files["key"].read_text())
            config.write_text(HAPROXY_CONFIG.format(port=port, crt=crt, ca=files["ca"], target=target))
            command = ["haproxy", "-db", "-f", str(config)]
        process = subprocess.Popen(command, stdout=log, stderr=log)
        address = wait_listening(process, port, name, tmp / f"{name}.log")
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
        for task in Path(f"/proc/{process.pid}/task").iterdir():  # threads started already
            os.sched_setaffinity(int(task.name), cpus)
    return Server(name, process, address)


@contextlib.contextmanager
def echo_target(tmp: Path, cpus: set[int] | None) -> Iterator[tuple[Address, int]]:
    """The C echo target, started: its address and its process id."""
    binary = tmp / "echo_target"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "echo_target.c")], check=True, timeout=120)
    process = subprocess.Popen([str(binary)], stdout=subprocess.PIPE)
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    try:
        address, said = read_listening(process)
        if address is None:
            raise RuntimeError(f"echo_target did not start: {said!r}")
        yield address, process.pid
    finally:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(load: LoadGenerators, server: Server, workload: Workload, target_pid: int) -> dict[str, Any]:
    """One run; its ``other_cpu`` (run.py's: neither server nor loadgen) less the target's share."""
    start, target_before = time.monotonic(), cpu_seconds(target_pid)
    if workload.name.endswith("*"):
        run = run_c_workload(load, server, workload)
    else:
        run = run_workload(load, server, workload)
        run.pop("_report")
    if (
        not Path(f"/proc/{target_pid}").exists()
        or Path(f"/proc/{target_pid}/stat").read_text().split()[2] == "Z"
    ):
        raise RuntimeError("the echo target died during the run")
    target = (cpu_seconds(target_pid) - target_before) / (time.monotonic() - start)
    run["target_cpu"] = round(target, 3)
    run["other_cpu"] = round(max(run["other_cpu"] - target, 0.0), 3)
    return run


def table(medians: dict[str, dict[str, float]], unit: str = "") -> str:
    """Markdown: one column per terminator (each row's metric, followed by *unit*), then ratios."""
    present = [t for t in TERMINATORS if t in medians[ROWS[0].name]]
    pairs = [
        (o, b) for o in ("ours_socket", "ours_trio") for b in ("stunnel", "haproxy") if {o, b} <= {*present}
    ]
    heads = [LABELS[t] for t in present] + [f"{o.removeprefix('ours_')} / {b}" for o, b in pairs]
    lines = ["| workload | " + " | ".join(heads) + " |", "|---" * (1 + len(heads)) + "|"]
    for workload in ROWS:
        row = medians[workload.name]
        cells = [f"{row[t]:,.1f}" for t in present]
        cells += [f"{row[o] / row[b]:.2f}" if row[b] else "-" for o, b in pairs]
        what = f"({workload.name}) {workload.title}, {workload.metric}{unit}"
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run (default: 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per terminator and workload")
    parser.add_argument("--workers", type=int, default=1, help="Python loadgen processes for (c)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="default: benchmarks/results")
    parser.add_argument(
        "--only", default=",".join(TERMINATORS), help=f"some of {','.join(TERMINATORS)} (default: all)"
    )
    args = parser.parse_args(argv)
    chosen = tuple(t for t in TERMINATORS if t in args.only.split(","))
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if len(cpus) >= 2 else None
    if server_cpus:
        os.sched_setaffinity(0, set(cpus[1:]))
    runs: list[dict[str, Any]] = []
    with scratch("tlsecho-terminator-") as (tmp, pki, tlsload):
        load = LoadGenerators(args, pki, ClientConfig(tls=TLSFiles.from_dir(pki, "client")), tlsload)
        with echo_target(tmp, set(cpus[1:]) if server_cpus else None) as (target, target_pid):
            servers: dict[str, Server] = {}
            try:
                for t in chosen:
                    servers[t] = start_terminator(t, pki, target, tmp, server_cpus)
                for rep in range(args.repeat):
                    order = chosen[rep % len(chosen) :] + chosen[: rep % len(chosen)]
                    for workload in ROWS:
                        for t in order:
                            run = one_run(load, servers[t], workload, target_pid)
                            runs.append(run)
                            errors = run["report"].get("errors", {})
                            print(
                                f"run {rep + 1} ({workload.name}) {LABELS[t]:<24} {run['value']:>10,.1f}"
                                f" {workload.metric}  CPU: server {run['server_cpu']:.0%}"
                                f", others {run['other_cpu']:.0%}"
                                f"{'  ERRORS ' + str(errors) if any(errors.values()) else ''}",
                                flush=True,
                            )
            finally:
                for server in servers.values():
                    stop(server)
    medians = {
        w.name: {
            t: statistics.median(r["value"] for r in runs if r["server"] == t and r["workload"] == w.name)
            for t in chosen
        }
        for w in ROWS
    }
    efficiency = {
        w.name: {
            t: statistics.median(
                r["efficiency"] or 0.0 for r in runs if r["server"] == t and r["workload"] == w.name
            )
            for t in chosen
        }
        for w in ROWS
    }
    print()
    print(table(medians))
    print()
    print(table(efficiency, " per server CPU-second"))
    today = dt.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{today}-terminator.json"
    result = {
        "date": today,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "versions": {
            "haproxy": _first_line(["haproxy", "-v"]),
            "stunnel": _first_line(["stunnel4", "-version"], stderr=True),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "medians": medians,
        "per_server_cpu_second": efficiency,
        "runs": runs,
    }
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


def _first_line(command: list[str], *, stderr: bool = False) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    text = done.stderr if stderr else done.stdout
    return next((line for line in text.splitlines() if line.strip() and "inetd" not in line), "?")


if __name__ == "__main__":
    raise SystemExit(main())
