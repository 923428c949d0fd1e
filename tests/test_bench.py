"""benchmarks/run.py's arithmetic: the efficiency window, what is too short to measure,
and what the plot shows (its drawing needs matplotlib, a bench-only dependency)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from trio_tlsecho import Address, ClientConfig, LoadConfig
from trio_tlsecho._load._stats import Recorder

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_window_cpu_interpolates_inside_the_samples_only(bench: ModuleType) -> None:
    samples = [(10.0, 1.0), (11.0, 1.5), (12.0, 2.5), (13.0, 2.5)]
    assert bench.window_cpu(samples, 10.5, 12.0) == pytest.approx(1.25)
    # A window reaching past the samples would be clamped, and read low: none.
    assert bench.window_cpu(samples, 12.0, 14.0) is None
    assert bench.window_cpu(samples, 9.0, 11.0) is None
    # Too short to measure (below the loadgen's progress interval).
    assert bench.window_cpu(samples, 11.0, 11.5) is None


def _result(bench: ModuleType, seconds: float, cpu: float | None) -> dict[str, Any]:
    server = bench.Server("asyncio", None, Address("127.0.0.1", 1))
    workload = bench.WORKLOADS[0]
    shares = {"server_cpu": 0.5, "loadgen_cpu": 0.5, "other_cpu": 0.0}
    result: dict[str, Any] = bench.workload_result(
        server, workload, None, 1000.0, 1000.0, seconds, cpu, shares, {}
    )
    return result


def test_no_efficiency_from_a_window_too_short_or_too_idle_to_measure(bench: ModuleType) -> None:
    assert _result(bench, 4.0, 2.0)["efficiency"] == 2000.0
    assert _result(bench, 0.9, 0.5)["efficiency"] is None
    # A few 10 ms clock ticks of server CPU: one tick more or less would swing it by half.
    assert _result(bench, 4.0, 0.02)["efficiency"] is None
    assert _result(bench, 4.0, None)["efficiency"] is None


class _Steady:
    """A server that uses half a CPU all the time (of trio's clock)."""

    def __init__(self) -> None:
        self.origin = trio.current_time()

    def cpu_seconds(self) -> float:
        return 0.5 * (trio.current_time() - self.origin)


async def test_the_window_is_the_measured_one_after_the_warmup(
    bench: ModuleType, server: Address, client_config: ClientConfig
) -> None:
    config = LoadConfig(address=server, client=client_config, clients=2, warmup=1.0, duration=2.5)
    report, cpu = await bench.load_with_server_cpu(_Steady(), config)
    # Half a CPU over the window: a window placed after the run would find next to nothing.
    assert cpu == pytest.approx(0.5 * report.seconds, rel=0.05)


def test_the_plot_shows_capacity_and_latency_at_the_same_rate(bench: ModuleType) -> None:
    medians = {
        "a": {"asyncio": 9000.0, "trio_naive": None},
        "a*": {"asyncio": 20000.0, "trio_naive": 12000.0},
    }
    title, bars = bench.capacity_bars(medians)
    assert title.startswith("(a*) capacity on one core")
    assert bars == {"asyncio": 20000.0, "trio_naive": 12000.0}
    title, bars = bench.capacity_bars({"a": medians["a"]})
    assert "load-generator-bound" in title
    assert bars == {"asyncio": 9000.0}

    def c_run(p99: int) -> dict[str, Any]:
        latency = {"p50": 100, "p90": 200, "p99": p99, "p999": 900, "max": 1000}
        return {"server": "asyncio", "workload": "e*", "report": {"latency_us": latency}}

    title, lines = bench.latency_lines([c_run(300), c_run(500), c_run(400)], 5000.0, 6000.0)
    assert title == "(e*) open loop at 6,000 round trips/s, C loadgen: latency"
    assert lines == {"asyncio": {50.0: 100, 90.0: 200, 99.0: 400, 99.9: 900}}
    # Without the C load generator: our open loop, from the merged histograms.
    rec = Recorder()
    for v in (100, 200, 300):
        rec.round_trip(v)
    ours = {"server": "trio_naive", "workload": "e", "_report": rec.report(clients=1, seconds=1.0)}
    title, lines = bench.latency_lines([ours], 5000.0, None)
    assert title == "(e) open loop at 5,000 round trips/s: latency"
    assert lines["trio_naive"][50.0] == 200


@pytest.fixture(scope="module")
def profiler() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))  # it imports run.py beside it
    try:
        spec = importlib.util.spec_from_file_location("profile_server", SCRIPT.parent / "profile_server.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_profile_server_reads_perf_and_py_spy(profiler: ModuleType) -> None:
    perf = "    44.50%  libpython3.11.so.1.0\n    41.70%  [kernel.kallsyms]\n     5.80%  libcrypto.so.3\n"
    assert profiler.parse_perf_dso(perf) == [
        ("libpython3.11.so.1.0", 44.5),
        ("[kernel.kallsyms]", 41.7),
        ("libcrypto.so.3", 5.8),
    ]
    stacks = (
        "main (x.py:1);receive_some (trio_tlsecho/_engines/_socket.py:445);read (libc.so.6) 6\n"
        "main (x.py:1);receive_some (trio_tlsecho/_engines/_socket.py:445) 2\n"
        "main (x.py:1);unrolled_run (trio/_core/_run.py:2928) 1\n"
        "main (x.py:1);read (ssl.py:1167);SSL_read (libssl.so.3) 1\n"
    )
    assert profiler.split_by_layer(stacks) == [
        ("system calls (read, write, epoll_wait) and libc", 60.0),
        ("our engine", 20.0),
        ("trio's run loop, epoll and scheduling", 10.0),
        ("OpenSSL", 10.0),
    ]
