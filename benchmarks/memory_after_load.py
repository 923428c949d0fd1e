"""A server's memory after it has served load: each engine, the same load, side by side.

    python benchmarks/memory_after_load.py [--connections 10000] [--repeat 2]

An idle connection's cost is (d) in ``run.py``; this is the other half: how much a
server holds once a load has come and gone (freed memory that the allocators keep,
caches, fragmentation).  For each engine, a fresh ``serve`` pinned to CPU 0 receives,
from our load generator on CPU 1, ``--connections`` connections of one echo each
(8 clients, a new connection per request), then 512 clients echoing at once for 3 s;
``VmRSS`` from ``/proc/PID/status`` is read before, after each phase, and after 2 s
idle.  Engines alternate ``--repeat`` times; prints every run and the medians, with
the trio engine's figure over the socket engine's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import read_listening, scratch, two_cpus  # noqa: E402

ENGINES = ("trio", "socket")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def one_run(engine: str, pki: Path, connections: int, cpus: list[int]) -> dict[str, float]:
    server = subprocess.Popen(
        ["taskset", "-c", str(cpus[0]), sys.executable, "-m", "trio_tlsecho", "--log-level", "warning",
         "serve", "--engine", engine, "--listen", "127.0.0.1:0", "--certs", str(pki),
         "--max-connections", "4096"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        address, problem = read_listening(server)
        if address is None:
            raise SystemExit(f"{engine} server did not start: {problem}")
        load = ["taskset", "-c", str(cpus[1]), sys.executable, "-m", "trio_tlsecho", "--log-level", "error",
                "loadgen", "--connect", str(address), "--certs", str(pki), "-q"]  # fmt: skip
        sizes = {"started": rss_mb(server.pid)}
        subprocess.run([*load, "-c", "8", "--new-connection-per-request", "--requests", str(connections)],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
        sizes["after one connection per echo"] = rss_mb(server.pid)
        subprocess.run([*load, "-c", "512", "-d", "3s", "--timeout", "30s"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        sizes["after 512 at once"] = rss_mb(server.pid)
        time.sleep(2)  # what the allocators hand back, or keep, once it is idle: a measurement, not a wait
        sizes["idle 2 s later"] = rss_mb(server.pid)
        return sizes
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    cpus = two_cpus()
    results: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
    with scratch("memory-after-load-", tlsload=False) as (_tmp, pki, _tlsload):
        for rep in range(args.repeat):
            for engine in ENGINES if rep % 2 == 0 else ENGINES[::-1]:
                sizes = one_run(engine, pki, args.connections, cpus)
                results[engine].append(sizes)
                print(f"run {rep + 1} {engine:6} " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()),
                      flush=True)  # fmt: skip
    print("\nmedians, MB (trio engine / socket engine):")
    for key in results[ENGINES[0]][0]:
        med = {e: statistics.median(r[key] for r in results[e]) for e in ENGINES}
        ratio = med["trio"] / med["socket"]
        print(f"  {key:30} trio {med['trio']:6.1f}  socket {med['socket']:6.1f}  ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
