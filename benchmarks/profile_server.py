"""Where one server's CPU goes under one workload: by library (``perf``) and by Python layer (``py-spy``).

    python benchmarks/profile_server.py [--engine socket] [--workload a*] [--duration 4]

Starts ``serve --engine ENGINE`` (or ``--server asyncio``) pinned to CPU 0 and drives it
with ``tlsload`` on CPU 1 with ``run.py``'s (a*) or (b*) workload, twice: once under
``perf record -e cpu-clock`` (every library the process runs in, the kernel included:
``perf report --sort dso``), once under ``py-spy record --native`` (each sample charged to its
innermost frame: a C function, by library, or a line of Python, by layer).  Prints both
splits.  Needs ``perf`` and ``py-spy`` (``pip install py-spy``); the kernel may need
``sysctl kernel.perf_event_paranoid=1`` for ``perf`` to attach.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import read_listening, scratch, two_cpus  # noqa: E402

WORKLOADS = {"a*": ("64", "1-100"), "b*": ("4", "262144")}
#: How py-spy's innermost frames are grouped: the first (file part, layer) that matches.
LAYERS = (
    ("ssl.py", "the ssl module's Python layer"),
    ("trio/_ssl.py", "trio.SSLStream"),
    ("trio/_core", "trio's run loop, epoll and scheduling"),
    ("trio/", "the rest of trio"),
    ("trio_tlsecho/_engines", "our engine"),
    ("trio_tlsecho/", "our pipeline, handler and metrics"),
    ("asyncio/", "asyncio's loop, transports and sslproto"),
    ("selectors.py", "asyncio's selector"),
)


#: Native frames (``py-spy --native``), by the library they are in.
NATIVE = (
    ("(libc.so", "system calls (read, write, epoll_wait) and libc"),
    ("(libcrypto", "OpenSSL"),
    ("(libssl", "OpenSSL"),
    ("_ssl.c", "OpenSSL"),
    ("(libpython", "the interpreter's own C"),
)


def _layer(frame: str) -> str:
    for part, name in NATIVE:
        if part in frame:
            return name
    for part, name in LAYERS:
        if part in frame:
            return name
    return "other Python"


def _server(engine: str, pki: Path) -> list[str]:
    if engine == "asyncio":
        return [sys.executable, str(HERE / "asyncio_echo.py"), "--listen", "127.0.0.1:0",
                "--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"),
                "--ca", str(pki / "ca.pem")]  # fmt: skip
    return [sys.executable, "-m", "trio_tlsecho", "--log-level", "warning", "serve", "--engine", engine,
            "--listen", "127.0.0.1:0", "--certs", str(pki)]  # fmt: skip


def _profile(args: argparse.Namespace, tlsload: Path, pki: Path, tmp: Path, tool: str) -> Path:
    server = subprocess.Popen(
        ["taskset", "-c", "0", *_server(args.engine, pki)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        address, problem = read_listening(server)
        if address is None:
            raise SystemExit(f"server did not start: {problem}")
        out = tmp / f"{tool}.out"
        if tool == "perf":
            profiler = [
                "perf",
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "999",
                "-p",
                str(server.pid),
                "-o",
                str(out),
            ]
        else:
            profiler = ["py-spy", "record", "--native", "-r", "500", "-f", "raw", "-p", str(server.pid),
                        "-o", str(out)]  # fmt: skip
        prof = subprocess.Popen(profiler, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        clients, size = WORKLOADS[args.workload]
        subprocess.run(
            ["taskset", "-c", "1", str(tlsload), "--connect", str(address), "--ca", str(pki / "ca.pem"),
             "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"), "--clients", clients,
             "--size", size, "--duration", str(args.duration), "--warmup", "0.5"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        prof.send_signal(2)
        prof.wait(timeout=60)
        return out
    finally:
        server.terminate()
        server.wait()


def _perf_split(data: Path) -> list[tuple[str, float]]:
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return parse_perf_dso(report.stdout)


def parse_perf_dso(text: str) -> list[tuple[str, float]]:
    """``perf report --sort dso --stdio -q``'s rows: (library, per cent of the samples)."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%"):
            rows.append((" ".join(parts[1:]), float(parts[0].rstrip("%"))))
    return rows


def _pyspy_split(raw: Path) -> list[tuple[str, float]]:
    return split_by_layer(raw.read_text())


def split_by_layer(text: str) -> list[tuple[str, float]]:
    """py-spy's raw (collapsed) stacks, each charged to its innermost frame's layer, in per cent."""
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        counts[_layer(stack.split(";")[-1])] += int(n)
    total = sum(counts.values()) or 1
    return [(layer, 100 * n / total) for layer, n in counts.most_common()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", default="socket", choices=["socket", "trio", "asyncio"])
    parser.add_argument("--workload", default="a*", choices=sorted(WORKLOADS))
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args(argv)
    two_cpus()
    with scratch("profile-server-") as (tmp, pki, tlsload):
        print(f"{args.engine} server, ({args.workload}), {args.duration:g} s")
        print("\nby library (perf, share of the server's samples):")
        for dso, pct in _perf_split(_profile(args, tlsload, pki, tmp, "perf")):
            if pct >= 0.5:
                print(f"  {pct:5.1f} %  {dso}")
        print("\nby layer (py-spy --native, innermost frame: a C function, or Python code):")
        for layer, pct in _pyspy_split(_profile(args, tlsload, pki, tmp, "py-spy")):
            print(f"  {pct:5.1f} %  {layer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
