"""Benchmark our server against two baselines with ``trio_tlsecho``'s load generator.

    nox -s bench                      # or: python benchmarks/run.py [--duration 5] [--repeat 3]

Starts four mutual-TLS echo servers on the same development certificates (ours via
``python -m trio_tlsecho serve`` with each TLS engine, ``--engine trio`` and
``--engine socket``, and the baselines ``asyncio_echo.py`` and ``trio_naive_echo.py``),
runs the same workloads against each, ``--repeat`` times, alternating the servers and
rotating their order, and reports the median of the runs:

  (a) 64 clients, 1-100 byte messages, closed loop      round trips/s, latency
  (b) 4 clients, 256 KiB messages                       MB/s (echoed payload)
  (c) 8 clients, new connection per request             handshakes/s
  (e) 64 clients, open loop at half the slowest (a)     p99 latency
  (d) N idle connections held open (default 2000)       server RSS per connection
  (a*), (b*), (e*): (a), (b), (e) driven by tlsload.c, an independent C load generator
      cheap enough to saturate the server (our Python one is not: see README.md);
      (e*) at half the slowest server's (a*) rate
  (d*) (d) with tlsload's clients, which send their own certificate only, as Go's
      crypto/tls does; OpenSSL-based clients such as (d)'s also send the CA, and the
      server keeps both for the connection's life

For (a), (b) and (c) it also reports the rate per CPU-second the *server* used in the
measured window (utime + stime from ``/proc/PID/stat``, sampled every 50 ms): when the
load generator, not the server, is the bottleneck, raw rates do not separate the
servers, and this does.  (e) runs every server at the same absolute rate: half the
median (a) rate of the slowest server (``--open-loop-rate`` to choose it).

Servers run on CPU 0 and the load generator on the other CPUs (``--no-pin`` to let the
kernel place them): on the 2-core machine this was measured on, the scheduler otherwise
puts a woken server next to the client that woke it, and both run at half speed.

Writes ``benchmarks/results/<date>.json`` and a latency percentile plot ``<date>.png``
(matplotlib, a bench-only dependency), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
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
from trio_tlsecho._load._config import Progress
from trio_tlsecho._load._stats import Histogram, LoadReport, merge
from trio_tlsecho._tls import client_context

HERE = Path(__file__).resolve().parent
SERVERS = ("ours_trio", "ours_socket", "asyncio", "trio_naive")
OURS = ("ours_trio", "ours_socket")
BASELINES = ("asyncio", "trio_naive")
LABELS = {
    "ours_trio": "ours (trio engine)",
    "ours_socket": "ours (socket engine)",
    "asyncio": "asyncio stdlib",
    "trio_naive": "naive trio",
}
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
#: (a) and (b) again, driven by the independent C load generator (``tlsload.c``).
C_WORKLOADS = (
    Workload(
        "a*", "64 clients, 1-100 B, C loadgen", "round trips/s", "/s", True, {"clients": 64, "size": "1-100"}
    ),
    Workload("b*", "4 clients, 256 KiB, C loadgen", "MB/s", "MB/s", True, {"clients": 4, "size": "262144"}),
)
#: (e*): (a*) in an open loop at half the slowest server's (a*) rate, the C loadgen timing it.
OPEN_LOOP_C = Workload(
    "e*", "64 clients, 1-100 B, open loop, C loadgen", "p99 latency µs", "µs", False, C_WORKLOADS[0].config
)
TLSLOAD_SOURCE = HERE / "tlsload.c"
#: (e): (a)'s clients and sizes, open loop; the rate is set once (a) has been measured.
OPEN_LOOP = Workload(
    "e", "64 clients, 1-100 B, open loop", "p99 latency µs", "µs", False, WORKLOADS[0].config
)
#: What the efficiency of (a), (b), (c) counts per server CPU-second.
EFFICIENCY = {
    "e*": "round trips",
    "a": "round trips",
    "b": "MB",
    "c": "handshakes",
    "e": "round trips",
    "a*": "round trips",
    "b*": "MB",
}
#: How often the server's CPU time is sampled during a run.
CPU_SAMPLE_INTERVAL = 0.05
#: No efficiency from a window shorter than this (s), or in which the server used less
#: CPU than this (s): /proc/PID/stat counts CPU in 10 ms clock ticks, so a few ticks
#: more or less would swing the figure by a factor (a 1 s run once gave 1.3 million
#: round trips per server CPU-second).
MIN_EFFICIENCY_WINDOW = 1.0
MIN_EFFICIENCY_CPU = 0.1


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
    if name in OURS:
        # --log-level warning: the baselines log nothing per connection either.
        engine = name.removeprefix("ours_")
        return [sys.executable, "-m", "trio_tlsecho", "--log-level", "warning", "serve", "--engine", engine,
                "--listen", "127.0.0.1:0", *files]  # fmt: skip
    script = {"asyncio": "asyncio_echo.py", "trio_naive": "trio_naive_echo.py"}[name]
    return [sys.executable, str(HERE / script), "--listen", "127.0.0.1:0", *files]


def start_server(name: str, pki: Path, log: Path, cpus: set[int] | None) -> Server:
    with log.open("ab") as err:
        process = subprocess.Popen(server_command(name, pki), stdout=subprocess.PIPE, stderr=err)
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    address, said = read_listening(process)
    if address is None:
        process.kill()
        process.communicate()  # reaped, its pipe closed
        raise RuntimeError(f"server {name} did not start (said {said!r}; see {log})")
    return Server(name, process, address)


def read_listening(process: subprocess.Popen[bytes]) -> tuple[Address | None, str]:
    """The address in the "listening on ADDRESS" line a server prints once bound, and its
    first line; waits at most START_TIMEOUT (``None`` if no such line came by then)."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                chunk = os.read(process.stdout.fileno(), 1)  # a byte at a time: no more than the line
                if not chunk:
                    break
                line += chunk
    text = line.decode(errors="replace").strip()
    if not text.startswith("listening on "):
        return None, text
    return Address.parse(text.split()[-1]), text


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    if server.process.stdout is not None:
        server.process.stdout.close()


# -- measuring -----------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(limit: float, patience: float, log: Callable[..., None]) -> float:
    """Wait until the machine is at most *limit* CPUs busy over a 0.5 s sample, or *patience* s.

    Called between runs, when none of our processes should be working: whatever is busy
    now is someone else (another test suite, a build).  Returns the last busy sample.
    """
    deadline = time.monotonic() + patience
    said = False
    while True:
        before, t = machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        busy = (machine_busy_seconds() - before) / (time.monotonic() - t)
        if busy <= limit or time.monotonic() >= deadline:
            if said:
                log(
                    f"  ... machine {'quiet' if busy <= limit else 'still busy'} ({busy:.0%} of a CPU)",
                    flush=True,
                )
            return busy
        if not said:
            log(f"  other processes use {busy:.0%} of a CPU: waiting up to {patience:g} s", flush=True)
            said = True


def own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # loadgen workers, once reaped
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def window_cpu(samples: list[tuple[float, float]], begin: float, end: float) -> float | None:
    """The CPU seconds used in ``[begin, end]`` from *samples* (time, CPU seconds), or
    ``None`` where the samples do not cover the window (nothing to interpolate between)
    or the window is too short to measure (:data:`MIN_EFFICIENCY_WINDOW`)."""
    if not samples or end - begin < MIN_EFFICIENCY_WINDOW:
        return None
    if begin < samples[0][0] or end > samples[-1][0]:
        return None
    return interpolate(samples, end) - interpolate(samples, begin)


def interpolate(samples: list[tuple[float, float]], t: float) -> float:
    """The server CPU seconds at time *t*, linear between the samples around it."""
    before = [s for s in samples if s[0] <= t] or samples[:1]
    after = [s for s in samples if s[0] >= t] or samples[-1:]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 if t1 <= t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)


async def load_with_server_cpu(server: Server, config: LoadConfig) -> tuple[LoadReport, float | None]:
    """Run *config* and return its report and the server's CPU seconds in the measured window.

    The loadgen's progress callback says ``now - start`` where ``start`` is when the
    measured window opened (after the warm-up); the window lasts ``report.seconds``.
    ``None`` if the run ended before the first progress call, or the window is too
    short to measure (:func:`window_cpu`).
    """
    samples: list[tuple[float, float]] = []
    starts: list[float] = []

    def progress(p: Progress) -> None:
        starts.append(trio.current_time() - p.elapsed)

    async def sample() -> None:
        while True:
            samples.append((trio.current_time(), server.cpu_seconds()))
            await trio.sleep(CPU_SAMPLE_INTERVAL)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        report = await run_load(config, progress=progress)
        samples.append((trio.current_time(), server.cpu_seconds()))
        nursery.cancel_scope.cancel()
    if not starts:
        return report, None
    # (Adding the warm-up here again placed the window after the run: the server's CPU
    # in it was next to nothing, and the efficiency absurd.)
    begin = starts[0]
    return report, window_cpu(samples, begin, begin + report.seconds)


class RunCost:
    """The CPU one workload run costs, counted from when this is made (just before the load)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.start = time.monotonic()
        self.server_cpu, self.own_cpu = server.cpu_seconds(), own_cpu_seconds()
        self.busy = machine_busy_seconds()

    def shares(self, end: float) -> dict[str, float]:
        """Check that the server survived the run that ended at *end*; the busy fraction of
        one CPU over the run (warm-up and connecting included) of the server, of the load
        generator (with its reaped children) and of whatever else ran."""
        wall = end - self.start
        self.server.check()
        server_cpu = self.server.cpu_seconds() - self.server_cpu
        own_cpu = own_cpu_seconds() - self.own_cpu
        # Whatever else ran meanwhile (another test suite, a build): a run it disturbed is suspect.
        other = max(machine_busy_seconds() - self.busy - server_cpu - own_cpu, 0.0)
        return {
            "server_cpu": round(server_cpu / wall, 3),
            "loadgen_cpu": round(own_cpu / wall, 3),
            "other_cpu": round(other / wall, 3),
        }


def workload_result(
    server: Server,
    workload: Workload,
    rate: float | None,
    value: float,
    per_second: float,
    seconds: float,
    cpu_in_window: float | None,
    shares: dict[str, float],
    report: dict[str, Any],
) -> dict[str, Any]:
    """One run's row: its *value* for the table, and *per_second* (round trips or MB)
    over the *seconds* measured against the server's CPU seconds in that window."""
    efficiency = None
    cpu = cpu_in_window
    if cpu is not None and cpu >= MIN_EFFICIENCY_CPU and seconds >= MIN_EFFICIENCY_WINDOW:
        efficiency = round(per_second * seconds / cpu, 1)
    return {
        "server": server.name,
        "workload": workload.name,
        "value": value,
        "rate": rate,
        "efficiency": efficiency,
        # Busy fraction of one CPU in the measured window: near 1.0 means the server was
        # the bottleneck.
        "server_cpu_window": round(cpu / seconds, 3) if cpu and seconds else None,
        **shares,
        "report": report,
    }


@dataclass(frozen=True)
class LoadGenerators:
    """What drives the workloads: our load generator as *client*, or tlsload (the binary,
    if it could be built) as *pki*'s client; and the command line (durations, workers)."""

    args: argparse.Namespace
    pki: Path
    client: ClientConfig
    tlsload: Path | None


def run_workload(
    load: LoadGenerators, server: Server, workload: Workload, rate: float | None = None
) -> dict[str, Any]:
    """(a)/(b)/(c)/(e): one run of our load generator, with the server's CPU in its window."""
    args = load.args
    config = LoadConfig(
        address=server.address,
        client=load.client,
        duration=args.duration,
        warmup=args.warmup,
        workers=args.workers,
        rate=rate,
        **workload.config,
    )
    cost = RunCost(server)
    report, cpu = trio.run(load_with_server_cpu, server, config)
    shares = cost.shares(time.monotonic())
    summary = report.to_json()
    value = {
        "a": summary["round_trips_per_sec"],
        "b": summary["mb_per_sec"],
        "c": summary["round_trips_per_sec"],
        "e": summary["latency_us"]["p99"],
    }
    # Rounds trips (a, c, e: one handshake per round trip in c) or MB (b) per server CPU-second,
    # both counted over the measured window only.
    done = summary["mb_per_sec"] if workload.name == "b" else summary["round_trips_per_sec"]
    return {
        **workload_result(
            server, workload, rate, value[workload.name], done, report.seconds, cpu, shares, summary
        ),
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
    return idle_result(server, "d", before, after, count)


def idle_result(server: Server, workload: str, before: int, after: int, count: int) -> dict[str, Any]:
    """A (d)/(d*) run: the server's RSS growth per connection, in KiB."""
    return {
        "server": server.name,
        "workload": workload,
        "value": round((after - before) / count, 2),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "connections": count,
    }


def tlsload_command(binary: Path, server: Server, pki: Path, *extra: str) -> list[str]:
    """tlsload against *server*, as the development PKI's client, with *extra* flags."""
    return [
        str(binary), "--connect", str(server.address),
        "--ca", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"),
        *extra,
    ]  # fmt: skip


def hold_idle_c(server: Server, binary: Path, pki: Path, count: int) -> dict[str, Any]:
    """(d*): (d) with tlsload's clients, which send only their own certificate, as Go's do.

    OpenSSL-based clients (ours, (d)'s) also send the CA, and every server keeps what a
    client sent for the connection's life: about 5 KB more per connection.
    """
    command = tlsload_command(
        binary, server, pki, "--clients", str(count), "--size", "1",
        "--hold", str(IDLE_TIMEOUT), "--timeout", str(IDLE_TIMEOUT),
    )  # fmt: skip
    before = server.rss_kb()
    pipe = subprocess.PIPE
    with subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe) as proc:
        assert proc.stdout is not None
        # Bounded: tlsload gives up on its own after IDLE_TIMEOUT.
        held = proc.stdout.readline()
        after = server.rss_kb()
        # communicate() closes stdin first: tlsload then closes them all and reports.
        out, err = proc.communicate(timeout=START_TIMEOUT)
    server.check()
    if not held.startswith(b'{"held"') or proc.returncode != 0:
        said = (err or held + out).decode(errors="replace").strip()
        raise RuntimeError(f"tlsload --hold against {server.name} failed (exit {proc.returncode}): {said}")
    return {**idle_result(server, "d*", before, after, count), "report": json.loads(out)}


# -- reporting -------------------------------------------------------------------------


def two_cpus() -> list[int]:
    """This process's CPUs, sorted: at least two (the server's and the load's), or exit saying so."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs 2 CPUs: one for the server, one for the load generator")
    return cpus


@contextmanager
def scratch(prefix: str, *, tlsload: bool = True) -> Iterator[tuple[Path, Path, Path]]:
    """A temporary directory with a development PKI in it and, unless told not to, a
    built ``tlsload``: ``(directory, pki, tlsload)``.  Exit status 1 when ``tlsload``
    cannot be built (``build_tlsload`` has said why)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        tmp = Path(name)
        make_dev_pki(tmp / "pki")
        binary = build_tlsload(tmp, print) if tlsload else tmp / "no-tlsload"
        if binary is None:
            raise SystemExit(1)
        yield tmp, tmp / "pki", binary


def build_tlsload(out_dir: Path, log: Callable[..., None]) -> Path | None:
    """Compile ``tlsload.c`` (needs a C compiler and libssl-dev); ``None``, said why, if it can't."""
    binary = out_dir / "tlsload"
    cc = os.environ.get("CC", "cc")
    command = [cc, "-O2", "-o", str(binary), str(TLSLOAD_SOURCE), "-lssl", "-lcrypto"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"(a*), (b*), (d*), (e*) skipped: cannot run {cc}: {exc}")
        return None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        log(f"(a*), (b*), (d*), (e*) skipped: {cc} could not build tlsload.c (gcc, libssl-dev?): {first}")
        return None
    return binary


@dataclass
class Sampled:
    """A load generator's run: its output, the server's CPU samples, and when it exited."""

    out: bytes
    err: bytes
    returncode: int
    samples: list[tuple[float, float]]
    end: float


def run_sampling(command: list[str], server: Server, deadline: float) -> Sampled:
    """Run *command* (killed at *deadline*, ``time.monotonic()``), sampling the server's
    CPU every ``CPU_SAMPLE_INTERVAL`` while it runs."""
    samples: list[tuple[float, float]] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), server.cpu_seconds()))
            # Waiting on the process, not sleeping: *end* below is then its exit to
            # within a millisecond, and the window placed from it is not late.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=CPU_SAMPLE_INTERVAL)
                break
        if proc.poll() is None:
            proc.kill()
        end = time.monotonic()
        samples.append((end, server.cpu_seconds()))
        out, err = proc.communicate()
    return Sampled(out, err, proc.returncode, samples, end)


def run_c_workload(
    load: LoadGenerators, server: Server, workload: Workload, rate: float | None = None
) -> dict[str, Any]:
    """(a*)/(b*)/(e*): one run of the C load generator, with the server's CPU in its window."""
    args = load.args
    assert load.tlsload is not None
    command = tlsload_command(
        load.tlsload, server, load.pki,
        "--clients", str(workload.config["clients"]), "--size", workload.config["size"],
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        *(("--rate", str(rate)) if rate is not None else ()),
    )  # fmt: skip
    cost = RunCost(server)
    timed = run_sampling(command, server, cost.start + args.warmup + args.duration + START_TIMEOUT)
    out, err, samples, end = timed.out, timed.err, timed.samples, timed.end
    shares = cost.shares(end)  # the load generator's share is tlsload's, reaped: in RUSAGE_CHILDREN
    try:
        summary: dict[str, Any] = json.loads(out)
    except ValueError:
        raise RuntimeError(
            f"tlsload against {server.name} failed: {err.decode(errors='replace').strip()}"
        ) from None
    seconds = summary["seconds"]
    # The window ends when tlsload stops measuring, just before it exits.
    used = window_cpu(samples, end - seconds, end)
    done = summary["mb_per_sec"] if workload.name == "b*" else summary["round_trips_per_sec"]
    value = summary["latency_us"]["p99"] if workload.name == "e*" else done
    return workload_result(server, workload, rate, value, done, seconds, used, shares, summary)


def median(runs: list[dict[str, Any]], server: str, workload: str, key: str = "value") -> float | None:
    values: list[float] = [
        r[key] for r in runs if r["server"] == server and r["workload"] == workload and r.get(key) is not None
    ]
    return statistics.median(values) if values else None


def latency_percentiles(runs: list[dict[str, Any]], server: str) -> dict[str, int]:
    reports: list[LoadReport] = [r["_report"] for r in runs if r["server"] == server and r["workload"] == "a"]
    hist: Histogram = merge(reports).latency_histogram()
    values = hist.percentiles(PLOT_PERCENTILES)
    return {f"{p:g}": values[p] for p in PLOT_PERCENTILES}


Row = tuple[str, str, dict[str, float | None]]


def table(rows: list[Row]) -> str:
    """Markdown: one column per server, then each of ours over each baseline."""
    short = {
        "ours_trio": "trio engine",
        "ours_socket": "socket engine",
        "asyncio": "asyncio",
        "trio_naive": "naive",
    }
    ratio_heads = [f"{short[o]} / {short[b]}" for o in OURS for b in BASELINES]
    heads = ["workload", "metric", *(LABELS[s] for s in SERVERS), *ratio_heads]
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for name, metric, values in rows:
        cells = [name, metric]
        for server in SERVERS:
            v = values.get(server)
            cells.append("n/a" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:,.1f}")
        for o in OURS:
            for b in BASELINES:
                ov, bv = values.get(o), values.get(b)
                ratio = ov / bv if ov is not None and bv else None
                cells.append("n/a" if ratio is None else f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_rows(medians: dict[str, dict[str, Any]], efficiency: dict[str, dict[str, Any]], p99: dict[str, Any],
               rate: float | None, c_rate: float | None = None) -> list[Row]:  # fmt: skip
    rows: list[Row] = [
        ("(a) 64 clients, 1-100 B", "round trips/s", medians["a"]),
        ("(a) 64 clients, 1-100 B", "round trips per server CPU-s", efficiency["a"]),
        ("(a) 64 clients, 1-100 B", "p99 latency µs (closed loop)", p99),
        ("(b) 4 clients, 256 KiB", "MB/s", medians["b"]),
        ("(b) 4 clients, 256 KiB", "MB per server CPU-s", efficiency["b"]),
        ("(c) 8 clients, new conn. per request", "handshakes/s", medians["c"]),
        ("(c) 8 clients, new conn. per request", "handshakes per server CPU-s", efficiency["c"]),
    ]
    for w in C_WORKLOADS:
        if w.name in medians:
            per = "round trips" if w.name == "a*" else "MB"
            rows.append((f"({w.name}) {w.title}", w.metric, medians[w.name]))
            rows.append((f"({w.name}) {w.title}", f"{per} per server CPU-s", efficiency[w.name]))
    if rate is not None:
        rows.append((f"(e) open loop, {rate:,.0f} round trips/s", "p99 latency µs", medians["e"]))
    if c_rate is not None:
        rows.append(
            (f"(e*) open loop, {c_rate:,.0f} round trips/s, C loadgen", "p99 latency µs", medians["e*"])
        )
    rows.append(("(d) idle connections", "RSS KiB per conn.", medians["d"]))
    if "d*" in medians:
        rows.append(("(d*) idle connections, C loadgen", "RSS KiB per conn.", medians["d*"]))
    return rows


#: The C load generator's percentiles, as HdrHistogram's x axis places them.
_C_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def capacity_bars(medians: dict[str, dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """The left panel: what each server does on one core, (a*) (the C load generator
    saturates the server), or (a) when there is no (a*) (then the Python load generator
    saturates first: the title says so)."""
    if any(medians.get("a*", {}).values()):
        title = "(a*) capacity on one core: 64 clients, 1-100 B, C loadgen"
        return title, {s: v for s, v in medians["a*"].items() if v is not None}
    title = "(a) 64 clients, 1-100 B (Python loadgen: load-generator-bound)"
    return title, {s: v for s, v in medians.get("a", {}).items() if v is not None}


def latency_lines(
    runs: list[dict[str, Any]], rate: float | None, c_rate: float | None
) -> tuple[str, dict[str, dict[float, float]]]:
    """The right panel: latency by percentile at one open-loop rate for every server,
    (e*) (median of the C load generator's percentiles over the runs) or else (e) (the
    exact merge of our load generator's histograms); µs."""
    lines: dict[str, dict[float, float]] = {}
    if c_rate:
        for server in SERVERS:
            reports = [
                r["report"]["latency_us"] for r in runs if r["server"] == server and r["workload"] == "e*"
            ]
            if reports:
                lines[server] = {
                    p: statistics.median(rep[key] for rep in reports) for key, p in _C_PERCENTILES.items()
                }
        return f"(e*) open loop at {c_rate:,.0f} round trips/s, C loadgen: latency", lines
    if rate:
        for server in SERVERS:
            reports = [r["_report"] for r in runs if r["server"] == server and r["workload"] == "e"]
            if reports:
                values = merge(reports).latency_histogram().percentiles(PLOT_PERCENTILES)
                lines[server] = {p: float(v) for p, v in values.items() if p < 100.0}
        return f"(e) open loop at {rate:,.0f} round trips/s: latency", lines
    return "no open-loop run", lines


def plot(capacity: tuple[str, dict[str, float]], latency: tuple[str, dict[str, dict[float, float]]],
         path: Path, title: str) -> None:  # fmt: skip
    import matplotlib  # the bench extra only; never a runtime dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    bar_title, bars = capacity
    names = list(bars)
    drawn = left.bar([LABELS[n] for n in names], [bars[n] for n in names], color="tab:blue")
    left.bar_label(drawn, labels=[f"{bars[n]:,.0f}" for n in names])
    left.set_ylabel("round trips/s")
    left.set_title(bar_title, fontsize=10)
    left.tick_params(axis="x", labelrotation=15)
    line_title, lines = latency
    for server, values in lines.items():
        xs = [1 / (1 - p / 100) for p in values]
        right.plot(xs, [v / 1000 for v in values.values()], marker="o", label=LABELS[server])
    ticks = [50.0, 90.0, 99.0, 99.9, 99.99, 99.999]
    right.set_xscale("log")
    right.set_xticks([1 / (1 - p / 100) for p in ticks], [f"{p:g}%" for p in ticks])
    right.set_xlabel("percentile")
    right.set_ylabel("round-trip latency (ms), from the intended send time")
    right.set_title(line_title, fontsize=10)
    right.grid(True, which="both", alpha=0.3)
    if lines:
        right.legend()
    fig.suptitle(title)
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
    """``<out>/<date><suffix>``: a later run on the same day replaces the earlier one."""
    return out / f"{today}{suffix}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run (default: 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server and workload (default: 3)")
    parser.add_argument("--workers", type=int, default=1, help="loadgen processes (default: 1)")
    parser.add_argument("--idle-connections", type=int, default=2000, help="for (d) (default: 2000)")
    parser.add_argument(
        "--open-loop-rate",
        type=float,
        default=None,
        help="round trips/s for (e), the same for every server (default: half the median (a) rate"
        " of the slowest server; 0 skips (e))",
    )
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.15,
        help="before each run, wait (up to --quiet-wait s) until other processes use at most this"
        " fraction of a CPU, and redo once a run they disturbed more than that (default: 0.15)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="seconds to wait for a quiet machine (default: 60)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="default: benchmarks/results")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and loadgen to CPUs")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument(
        "--no-c-loadgen",
        action="store_true",
        help="skip (a*), (b*), (d*) and (e*), the C load generator's runs",
    )
    parser.add_argument(
        "--replot",
        metavar="RESULT.json",
        type=Path,
        help="only draw the PNG of an earlier run's results/<date>.json (next to it), and exit",
    )
    args = parser.parse_args(argv)
    if args.replot is not None:
        return replot(args.replot)
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

    def one_run(server: Server, workload: Workload, rate: float | None) -> dict[str, Any]:
        if workload in (*C_WORKLOADS, OPEN_LOOP_C):
            return run_c_workload(load, server, workload, rate)
        return run_workload(load, server, workload, rate)

    def measure(server: Server, workload: Workload, rate: float | None = None) -> dict[str, Any]:
        wait_for_quiet(args.max_other_cpu, args.quiet_wait, log)
        run = one_run(server, workload, rate)
        if run["other_cpu"] > args.max_other_cpu:
            log(f"  disturbed (other processes {run['other_cpu']:.0%} of a CPU): once more", flush=True)
            wait_for_quiet(args.max_other_cpu, args.quiet_wait, log)
            again = one_run(server, workload, rate)
            again["disturbed_first_try"] = {k: v for k, v in run.items() if not k.startswith("_")}
            run = again
        return run

    with tempfile.TemporaryDirectory(prefix="tlsecho-bench-") as tmp:
        pki = Path(tmp) / "pki"
        make_dev_pki(pki)
        client = ClientConfig(tls=TLSFiles.from_dir(pki, "client"))
        tlsload = None if args.no_c_loadgen else build_tlsload(Path(tmp), log)
        load = LoadGenerators(args, pki, client, tlsload)
        workloads = WORKLOADS + (C_WORKLOADS if tlsload is not None else ())
        with running_servers(pki, Path(tmp), server_cpus) as servers:
            for rep in range(args.repeat):
                order = _order(rep)
                for workload in workloads:
                    for name in order:
                        run = measure(servers[name], workload)
                        runs.append(run)
                        _say(log, rep, workload.name, name, f"{run['value']:,.1f} {workload.metric}", run)
            rate = args.open_loop_rate
            if rate is None:
                rate = round(min(median(runs, s, "a") or 0.0 for s in SERVERS) / 2)
            if rate > 0:
                for rep in range(args.repeat):
                    for name in _order(rep):
                        run = measure(servers[name], OPEN_LOOP, rate)
                        runs.append(run)
                        _say(log, rep, "e", name, f"p99 {run['value']:,} µs at {rate:,.0f}/s", run)
            c_rate = None
            if tlsload is not None:
                c_rate = round(min(median(runs, s, "a*") or 0.0 for s in SERVERS) / 2) or None
            if c_rate is not None:
                for rep in range(args.repeat):
                    for name in _order(rep):
                        run = measure(servers[name], OPEN_LOOP_C, c_rate)
                        runs.append(run)
                        _say(log, rep, "e*", name, f"p99 {run['value']:,} µs at {c_rate:,.0f}/s", run)
        for rep in range(args.repeat):
            for name in _order(rep):
                # A fresh server each time: one that already served load has freed
                # memory to reuse, and its RSS would not grow with new connections.
                wait_for_quiet(args.max_other_cpu, args.quiet_wait, log)
                fresh = start_server(name, pki, Path(tmp) / f"{name}-idle.log", server_cpus)
                try:
                    run = trio.run(hold_idle, fresh, client, args.idle_connections)
                finally:
                    stop(fresh)
                runs.append(run)
                _say(log, rep, "d", name, f"{run['value']:,.2f} KiB per idle connection", run)
                if tlsload is None:
                    continue
                wait_for_quiet(args.max_other_cpu, args.quiet_wait, log)
                fresh = start_server(name, pki, Path(tmp) / f"{name}-idle.log", server_cpus)
                try:
                    run = hold_idle_c(fresh, tlsload, pki, args.idle_connections)
                finally:
                    stop(fresh)
                runs.append(run)
                _say(log, rep, "d*", name, f"{run['value']:,.2f} KiB per idle connection", run)

    c_names = tuple(w.name for w in workloads if w in C_WORKLOADS) + (("e*",) if c_rate else ())
    names = ("a", "b", "c", *c_names, *(("e",) if rate else ()), "d", *(("d*",) if tlsload else ()))
    medians = {w: {s: median(runs, s, w) for s in SERVERS} for w in names}
    efficiency = {
        w: {s: median(runs, s, w, "efficiency") for s in SERVERS} for w in ("a", "b", "c", *c_names, "e")
    }
    p99 = {s: statistics.median(r["report"]["latency_us"]["p99"] for r in runs
                                if r["server"] == s and r["workload"] == "a") for s in SERVERS}  # fmt: skip
    percentiles = {s: latency_percentiles(runs, s) for s in SERVERS}

    def over(values: dict[str, Any]) -> dict[str, dict[str, float | None]]:
        return {
            o: {b: (round(values[o] / values[b], 3) if values[o] is not None and values[b] else None)
                for b in BASELINES}
            for o in OURS
        }  # fmt: skip

    ratios = {w: over(medians[w]) for w in medians}
    ratios["a_p99"] = over(p99)
    efficiency_ratios = {w: over(efficiency[w]) for w in efficiency}
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
            "open_loop_rate": rate or None,
            "open_loop_rate_c_loadgen": c_rate,
        },
        "servers": LABELS,
        "medians": medians,
        "p99_latency_us": p99,
        "ratios": ratios,
        "efficiency_per_server_cpu_second": {"counts": EFFICIENCY, **efficiency},
        "efficiency_ratios": efficiency_ratios,
        "latency_percentiles_us": percentiles,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    pinning = result["machine"]["pinning"]
    print()
    print(f"medians of {args.repeat} runs, {args.duration:g}s each; {os.cpu_count()} CPUs; {pinning}")
    print()
    print(table(table_rows(medians, efficiency, p99, rate or None, c_rate)))
    print()
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = json_path.with_suffix(".png")
        title = f"Server capacity, and latency at the same rate ({today}, {os.cpu_count()} CPUs)"
        plot(capacity_bars(medians), latency_lines(runs, rate, c_rate), png, title)
        print(f"wrote {png}")
    return 0


def replot(path: Path) -> int:
    """Draw *path*'s PNG from what it holds (the open-loop fallback, (e), needs the
    histograms of a live run: a file without (e*) gets its capacity panel only)."""
    result = json.loads(path.read_text())
    settings = result["settings"]
    latency = latency_lines(result["runs"], None, settings.get("open_loop_rate_c_loadgen"))
    png = path.with_suffix(".png")
    day = result["date"][:10]
    plot(
        capacity_bars(result["medians"]),
        latency,
        png,
        f"Server capacity, and latency at the same rate ({day})",
    )
    print(f"wrote {png}")
    return 0


def _order(rep: int) -> tuple[str, ...]:
    """The servers, rotated by one every repetition."""
    k = rep % len(SERVERS)
    return SERVERS[k:] + SERVERS[:k]


def _say(
    log: Callable[..., None], rep: int, workload: str, server: str, what: str, run: dict[str, Any]
) -> None:
    cpu = ""
    if "server_cpu" in run:
        cpu = f"  (CPU busy: server {run['server_cpu']:.0%}, loadgen {run['loadgen_cpu']:.0%}"
        cpu += f", other processes {run['other_cpu']:.0%})"
        if run.get("efficiency") is not None:
            cpu += f"  {run['efficiency']:,.0f} {EFFICIENCY[workload]} per server CPU-s"
    errors = run.get("report", {}).get("errors", {})
    bad = sum(errors.values()) + run.get("report", {}).get("mismatches", 0)
    log(
        f"run {rep + 1} ({workload}) {LABELS[server]:<14} {what}{cpu}{f'  ERRORS {bad}' if bad else ''}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
