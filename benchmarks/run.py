"""Benchmark our server against two baselines with ``trio_tlsecho``'s load generator.

    nox -s bench                      # or: python benchmarks/run.py [--duration 5] [--repeat 3]

Starts three mutual-TLS echo servers on the same development certificates (ours via
``python -m trio_tlsecho serve``, ``asyncio_echo.py`` and ``trio_naive_echo.py``), runs
the same workloads against each, ``--repeat`` times, alternating the servers and
rotating their order, and reports the median of the runs:

  (a) 64 clients, 1-100 byte messages, closed loop      round trips/s, latency
  (b) 4 clients, 256 KiB messages                       MB/s (echoed payload)
  (c) 8 clients, new connection per request             handshakes/s
  (d) N idle connections held open (default 2000)       server RSS per connection

Servers run on CPU 0 and the load generator on the other CPUs (``--no-pin`` to let the
kernel place them): on the 2-core machine this was measured on, the scheduler otherwise
puts a woken server next to the client that woke it, and both run at half speed.

Writes ``benchmarks/results/<date>.json`` and a latency percentile plot ``<date>.png``
(matplotlib, a bench-only dependency), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import selectors
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from trio_tlsecho import Address, ClientConfig, LoadConfig, TLSFiles, make_dev_pki, open_client, run_load
from trio_tlsecho._stats import Histogram, LoadReport, merge
from trio_tlsecho._tls import client_context

HERE = Path(__file__).resolve().parent
SERVERS = ("ours", "asyncio", "trio_naive")
LABELS = {"ours": "trio_tlsecho", "asyncio": "asyncio stdlib", "trio_naive": "naive trio"}
#: Percentiles drawn in the plot (HdrHistogram's usual x axis: 1 / (1 - p)).
PLOT_PERCENTILES = (0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0)
START_TIMEOUT = 30.0
IDLE_TIMEOUT = 300.0


@dataclass
class Workload:
    name: str
    title: str
    metric: str
    unit: str
    #: Which way is better, for the reader of the ratio.
    higher_is_better: bool
    config: dict[str, Any] = field(default_factory=dict)


WORKLOADS = (
    Workload("a", "64 clients, 1-100 B", "round trips/s", "/s", True, {"clients": 64, "sizes": "1-100"}),
    Workload("b", "4 clients, 256 KiB", "MB/s", "MB/s", True, {"clients": 4, "sizes": "256k"}),
    Workload(
        "c",
        "8 clients, new connection per request",
        "handshakes/s",
        "/s",
        True,
        {"clients": 8, "sizes": "1-100", "new_connection_per_request": True},
    ),
)


# -- servers -------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    address: Address

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"server {self.name} exited with status {self.process.returncode}")


def server_command(name: str, pki: Path) -> list[str]:
    files = ["--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"), "--ca", str(pki / "ca.pem")]
    if name == "ours":
        # --log-level warning: the baselines log nothing per connection either.
        return [sys.executable, "-m", "trio_tlsecho", "--log-level", "warning", "serve", "--listen",
                "127.0.0.1:0", *files]  # fmt: skip
    script = {"asyncio": "asyncio_echo.py", "trio_naive": "trio_naive_echo.py"}[name]
    return [sys.executable, str(HERE / script), "--listen", "127.0.0.1:0", *files]


def start_server(name: str, pki: Path, log: Path, cpus: set[int] | None) -> Server:
    with log.open("ab") as err:
        process = subprocess.Popen(server_command(name, pki), stdout=subprocess.PIPE, stderr=err)
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    assert process.stdout is not None
    # Bounded wait for the one line every server prints once bound.
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
    text = line.decode(errors="replace").strip()
    if not text.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"server {name} did not start (said {text!r}; see {log})")
    return Server(name, process, Address.parse(text.split()[-1]))


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


# -- measuring -----------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # loadgen workers, once reaped
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_workload(
    server: Server, workload: Workload, client: ClientConfig, args: argparse.Namespace
) -> dict[str, Any]:
    config = LoadConfig(
        address=server.address,
        client=client,
        duration=args.duration,
        warmup=args.warmup,
        workers=args.workers,
        **workload.config,
    )
    server_cpu, own_cpu, wall = server.cpu_seconds(), own_cpu_seconds(), time.monotonic()
    busy = machine_busy_seconds()
    report = trio.run(run_load, config)
    wall = time.monotonic() - wall
    server.check()
    server_cpu = server.cpu_seconds() - server_cpu
    own_cpu = own_cpu_seconds() - own_cpu
    # Whatever else ran meanwhile (another test suite, a build): a run it disturbed is suspect.
    other = max(machine_busy_seconds() - busy - server_cpu - own_cpu, 0.0)
    summary = report.to_json()
    value = {
        "a": summary["round_trips_per_sec"],
        "b": summary["mb_per_sec"],
        "c": summary["round_trips_per_sec"],
    }
    return {
        "server": server.name,
        "workload": workload.name,
        "value": value[workload.name],
        # Busy fraction of one CPU over the run (warm-up and connecting included): near 1.0
        # means that side was the bottleneck.
        "server_cpu": round(server_cpu / wall, 3),
        "loadgen_cpu": round(own_cpu / wall, 3),
        "other_cpu": round(other / wall, 3),
        "report": summary,
        "_report": report,
    }


async def hold_idle(server: Server, client: ClientConfig, count: int) -> dict[str, Any]:
    """Open *count* mTLS connections, echo one byte on each, and read the server's RSS."""
    ctx = client_context(client)
    streams: list[trio.SSLStream[trio.SocketStream]] = []
    limiter = trio.CapacityLimiter(16)

    async def one() -> None:
        async with limiter:
            stream = await open_client(server.address, client, ssl_context=ctx)
            streams.append(stream)
            # One echo: the server has finished the handshake and entered its handler.
            await stream.send_all(b"x")
            while not await stream.receive_some(1):
                raise RuntimeError("server closed an idle connection")

    before = server.rss_kb()
    try:
        with trio.fail_after(IDLE_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
        after = server.rss_kb()
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)
    return {
        "server": server.name,
        "workload": "d",
        "value": round((after - before) / count, 2),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "connections": count,
    }


# -- reporting -------------------------------------------------------------------------


def median(runs: list[dict[str, Any]], server: str, workload: str) -> float:
    values: list[float] = [r["value"] for r in runs if r["server"] == server and r["workload"] == workload]
    return statistics.median(values)


def latency_percentiles(runs: list[dict[str, Any]], server: str) -> dict[str, int]:
    reports: list[LoadReport] = [r["_report"] for r in runs if r["server"] == server and r["workload"] == "a"]
    hist: Histogram = merge(reports).latency_histogram()
    values = hist.percentiles(PLOT_PERCENTILES)
    return {f"{p:g}": values[p] for p in PLOT_PERCENTILES}


def table(medians: dict[str, dict[str, float]], p99: dict[str, float]) -> str:
    rows = [
        ("(a) 64 clients, 1-100 B", "round trips/s", medians["a"], True),
        ("(a) 64 clients, 1-100 B", "p99 latency µs", p99, False),
        ("(b) 4 clients, 256 KiB", "MB/s", medians["b"], True),
        ("(c) 8 clients, new conn. per request", "handshakes/s", medians["c"], True),
        ("(d) idle connections", "RSS KiB per conn.", medians["d"], False),
    ]
    head = "| workload | metric | ours | asyncio | naive trio | ours / asyncio | ours / naive trio |"
    lines = [head, "|" + " --- |" * 7]
    for name, metric, values, _higher in rows:
        ours, a, t = values["ours"], values["asyncio"], values["trio_naive"]
        ratio_a = f"{ours / a:.2f}" if a else "n/a"
        ratio_t = f"{ours / t:.2f}" if t else "n/a"
        lines.append(f"| {name} | {metric} | {ours:,.1f} | {a:,.1f} | {t:,.1f} | {ratio_a} | {ratio_t} |")
    return "\n".join(lines)


def plot(percentiles: dict[str, dict[str, int]], path: Path, title: str) -> None:
    import matplotlib  # the bench extra only; never a runtime dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for server, values in percentiles.items():
        points = [(float(p), v) for p, v in values.items() if float(p) < 100.0]
        xs = [1 / (1 - p / 100) for p, _ in points]
        ax.plot(xs, [v / 1000 for _, v in points], marker="o", label=LABELS[server])
    ticks = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
    ax.set_xscale("log")
    ax.set_xticks([1 / (1 - p / 100) for p in ticks], [f"{p:g}%" for p in ticks])
    ax.set_xlabel("percentile")
    ax.set_ylabel("round-trip latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------


@contextmanager
def running_servers(pki: Path, logs: Path, cpus: set[int] | None) -> Iterator[dict[str, Server]]:
    servers: dict[str, Server] = {}
    try:
        for name in SERVERS:
            servers[name] = start_server(name, pki, logs / f"{name}.log", cpus)
        yield servers
    finally:
        for server in servers.values():
            stop(server)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def result_path(out: Path, today: str, suffix: str) -> Path:
    path = out / f"{today}{suffix}"
    n = 2
    while path.exists():
        path = out / f"{today}-{n}{suffix}"
        n += 1
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default: 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server and workload (default: 3)")
    parser.add_argument("--workers", type=int, default=1, help="loadgen processes (default: 1)")
    parser.add_argument("--idle-connections", type=int, default=2000, help="for (d) (default: 2000)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="default: benchmarks/results")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and loadgen to CPUs")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.duration <= 0 or args.workers < 1 or args.idle_connections < 1:
        parser.error("--repeat, --duration, --workers and --idle-connections must be positive")

    raise_fd_limit(args.idle_connections + 1024)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus: set[int] | None = None
    if not args.no_pin and len(cpus) >= 2:
        server_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))  # this process and the loadgen workers it starts
    log = print
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tlsecho-bench-") as tmp:
        pki = Path(tmp) / "pki"
        make_dev_pki(pki)
        client = ClientConfig(tls=TLSFiles.from_dir(pki, "client"))
        with running_servers(pki, Path(tmp), server_cpus) as servers:
            for rep in range(args.repeat):
                order = SERVERS[rep % 3 :] + SERVERS[: rep % 3]
                for workload in WORKLOADS:
                    for name in order:
                        run = run_workload(servers[name], workload, client, args)
                        runs.append(run)
                        _say(log, rep, workload.name, name, f"{run['value']:,.1f} {workload.metric}", run)
                for name in order:
                    # A fresh server each time: one that already served load has freed
                    # memory to reuse, and its RSS would not grow with new connections.
                    fresh = start_server(name, pki, Path(tmp) / f"{name}-idle.log", server_cpus)
                    try:
                        run = trio.run(hold_idle, fresh, client, args.idle_connections)
                    finally:
                        stop(fresh)
                    runs.append(run)
                    _say(log, rep, "d", name, f"{run['value']:,.2f} KiB per idle connection", run)

    medians = {w: {s: median(runs, s, w) for s in SERVERS} for w in ("a", "b", "c", "d")}
    p99 = {s: statistics.median(r["report"]["latency_us"]["p99"] for r in runs
                                if r["server"] == s and r["workload"] == "a") for s in SERVERS}  # fmt: skip
    percentiles = {s: latency_percentiles(runs, s) for s in SERVERS}
    ratios = {
        w: {
            base: (medians[w]["ours"] / medians[w][base] if medians[w][base] else None)
            for base in SERVERS[1:]
        }
        for w in medians
    }
    today = dt.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = result_path(args.out, today, ".json")
    result: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "pinning": (
                f"servers on CPU {sorted(server_cpus)}, loadgen on CPUs {cpus[1:]}" if server_cpus else "none"
            ),
        },
        "settings": {
            "duration": args.duration,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "workers": args.workers,
            "idle_connections": args.idle_connections,
        },
        "medians": medians,
        "p99_latency_us": p99,
        "ratios": ratios,
        "latency_percentiles_us": percentiles,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    pinning = result["machine"]["pinning"]
    print()
    print(f"medians of {args.repeat} runs, {args.duration:g}s each; {os.cpu_count()} CPUs; {pinning}")
    print()
    print(table(medians, p99))
    print()
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = json_path.with_suffix(".png")
        plot(percentiles, png, f"(a) 64 clients, 1-100 B, closed loop: latency by percentile ({today})")
        print(f"wrote {png}")
    return 0


def _say(
    log: Callable[..., None], rep: int, workload: str, server: str, what: str, run: dict[str, Any]
) -> None:
    cpu = ""
    if "server_cpu" in run:
        cpu = f"  (CPU busy: server {run['server_cpu']:.0%}, loadgen {run['loadgen_cpu']:.0%}"
        cpu += f", other processes {run['other_cpu']:.0%})"
    errors = run.get("report", {}).get("errors", {})
    bad = sum(errors.values()) + run.get("report", {}).get("mismatches", 0)
    log(
        f"run {rep + 1} ({workload}) {LABELS[server]:<14} {what}{cpu}{f'  ERRORS {bad}' if bad else ''}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
