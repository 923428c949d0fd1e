"""CPU per round trip of our load generator, side by side with ``tlsload`` (C).

Starts ``serve --engine socket`` pinned to the first CPU, then alternates runs of
``loadgen`` (one process) and ``tlsload`` pinned to the second, each with 64 clients
of 1-100 byte messages, and reads each run's CPU time (user + system, from
``RUSAGE_CHILDREN``) and round trips.  CPU per round trip is the number to compare:
where the server saturates before either load generator, round trips/s say little
about the load generators, while what each spends per round trip says how many it
could drive from one core (``1e6 / µs``).

    python benchmarks/loadgen_cpu.py [--duration 3] [--repeat 5] [--clients 64]

Prints one line per run and the medians, the ratio of the two load generators'
capacities per core (loadgen / tlsload), and the ratio of their round trips/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import read_listening, scratch, two_cpus  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measured(command: list[str], cpu: int, result: Path | None = None) -> tuple[dict[str, object], float]:
    """Run *command* on *cpu*: its JSON (stdout's last line, or the file *result*) and its CPU seconds."""
    before = _children_cpu()
    done = subprocess.run(
        ["taskset", "-c", str(cpu), *command], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {done.stderr.strip()}")
    text = result.read_text() if result is not None else done.stdout.strip().splitlines()[-1]
    return json.loads(text), _children_cpu() - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args(argv)
    cpus = two_cpus()
    with scratch("loadgen-cpu-") as (tmp, pki, tlsload):
        server = subprocess.Popen(
            ["taskset", "-c", str(cpus[0]), sys.executable, "-m", "trio_tlsecho", "--log-level", "warning",
             "serve", "--engine", "socket", "--listen", "127.0.0.1:0", "--certs", str(pki)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            address, problem = read_listening(server)
            if address is None:
                raise SystemExit(f"server did not start: {problem}")
            out = Path(tmp) / "loadgen.json"
            base = [sys.executable, "-m", "trio_tlsecho", "loadgen", "--connect", str(address),
                    "--certs", str(pki), "-c", str(args.clients), "-q", "--json", str(out)]  # fmt: skip
            ours = [*base, "-d", f"{args.duration}s", "--warmup", f"{args.warmup}s"]
            theirs = [str(tlsload), "--connect", str(address), "--ca", str(pki / "ca.pem"),
                      "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"),
                      "--clients", str(args.clients), "--size", "1-100",
                      "--duration", str(args.duration), "--warmup", str(args.warmup)]  # fmt: skip
            # The fixed cost of a run (start-up, imports, 64 handshakes): one exchange per client.
            fixed = {
                "loadgen": statistics.median(
                    _measured([*base, "--requests", str(args.clients)], cpus[1], out)[1] for _ in range(3)
                ),
                "tlsload": 0.0,  # a C program's start-up and 64 handshakes: a few ms
            }
            print(f"fixed cost of a loadgen run: {fixed['loadgen']:.2f} CPU-s", flush=True)
            results: dict[str, list[tuple[float, float]]] = {"loadgen": [], "tlsload": []}
            for rep in range(args.repeat):
                for name, command in (("loadgen", ours), ("tlsload", theirs))[:: 1 if rep % 2 == 0 else -1]:
                    started = time.monotonic()
                    summary, cpu = _measured(command, cpus[1], out if name == "loadgen" else None)
                    wall = time.monotonic() - started
                    trips = float(summary["round_trips"])  # type: ignore[arg-type]
                    rate = float(summary["round_trips_per_sec"])  # type: ignore[arg-type]
                    # The CPU of the round trips of the warm-up and the window, at the
                    # window's rate, less the fixed cost.
                    per_trip = (cpu - fixed[name]) / (rate * (args.duration + args.warmup)) * 1e6
                    del trips
                    results[name].append((rate, per_trip))
                    print(f"run {rep + 1} {name:8} {rate:10,.0f} round trips/s  {per_trip:6.1f} µs CPU per"
                          f" round trip  ({cpu:.2f} CPU-s in {wall:.1f} s)", flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.wait()
    med = {name: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
           for name, runs in results.items()}  # fmt: skip
    for name, (rate, per_trip) in med.items():
        print(f"median {name:8} {rate:10,.0f} round trips/s  {per_trip:6.1f} µs CPU per round trip")
    ratio = med["tlsload"][1] / med["loadgen"][1]
    print(f"loadgen / tlsload round trips per CPU-second: {ratio:.2f}")
    # Side by side against the same server: where the server saturates first, this is
    # the server's limit, and the line above says more about the load generators.
    print(f"loadgen / tlsload round trips/s: {med['loadgen'][0] / med['tlsload'][0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
