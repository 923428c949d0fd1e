"""benchmarks/workers.py, ``--workers 2`` against ``--workers 1`` on a small machine.

The script's numbers come from a quiet run; here it runs end to end with tiny ones, and
its connection counter (/proc/PID/fd matched against /proc/net/tcp) is checked against
connections whose owner is known.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .tools import missing, require_tool

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "workers.py"


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports run.py and scaling.py beside it
    return importlib.import_module("workers")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(params=["127.0.0.1", "::1"])
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    host: str = request.param
    if host == "::1" and not _has_ipv6():
        pytest.skip("no IPv6 loopback here")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        sock.listen(8)
        yield sock


def test_counts_the_accepted_connections_of_a_process(workers: ModuleType, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    me = os.getpid()
    with socket.socket(listener.family) as other:
        other.bind((listener.getsockname()[0], 0))
        other.listen(1)  # another port: its connections are not counted
        opened = [socket.create_connection(listener.getsockname()[:2]) for _ in range(4)]
        elsewhere = socket.create_connection(other.getsockname()[:2])
        try:
            accepted = [listener.accept()[0] for _ in range(3)]  # the 4th waits in the backlog: no fd
            extra = other.accept()[0]
            try:
                # The clients' ends are this process's too, but their local port is not *port*.
                assert workers.established([me], port) == {me: 3}
                assert workers.socket_inodes(me) >= workers.tcp_inodes(port, workers.LISTEN)
                accepted.pop().close()
                assert workers.established([me], port) == {me: 2}
            finally:
                for sock in [*accepted, extra]:
                    sock.close()
        finally:
            for sock in [*opened, elsewhere]:
                sock.close()
    assert workers.established([me], port) == {me: 0}


def test_workers_on_two_cpus_end_to_end(tmp_path: Path) -> None:
    require_tool("cc", "gcc libssl-dev")
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing("OpenSSL's C headers are not installed", "libssl-dev")
    args = [sys.executable, str(SCRIPT), "--repeat", "1", "--duration", "0.5", "--warmup", "0.2",
            "--workers-spread", "2", "--spread-repeat", "2", "--quiet-wait", "0",
            "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--workers 2 / --workers 1 per server CPU-second: " in done.stdout
    [written] = tmp_path.glob("workers-*.json")
    result = json.loads(written.read_text())

    efficiency = result["efficiency"]
    assert [run["workers"] for run in efficiency["runs"]] == [1, 2]
    assert all(run["errors"] == 0 for run in efficiency["runs"])
    # Two workers and their supervisor (and multiprocessing's resource tracker) are counted.
    assert efficiency["runs"][1]["server_pids"] >= 3
    one, two = (efficiency["medians"][n]["round_trips_per_server_cpu_second"] for n in ("1", "2"))
    assert one > 0
    assert two > 0
    assert efficiency["ratio"] == pytest.approx(two / one, abs=0.001)
    assert efficiency["meets_target"] == (efficiency["ratio"] >= 0.9)

    spread = result["spread"]
    assert [run["repeat"] for run in spread["runs"]] == [1, 2]  # a fresh set of connections each
    for run in spread["runs"]:
        assert run["held"] == 64
        assert len(run["per_worker"]) == 2
        assert sum(run["per_worker"]) == run["held"]
        assert (run["min"], run["max"]) == (min(run["per_worker"]), max(run["per_worker"]))
    assert spread["summary"]["2"]["min"] == min(run["min"] for run in spread["runs"])
    assert spread["summary"]["2"]["max"] == max(run["max"] for run in spread["runs"])
    if len(os.sched_getaffinity(0)) >= 2:
        assert "efficiency runs: server on CPU" in result["machine"]["pinning"]


def test_bad_spread_flag_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--workers-spread", "two"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("--workers-spread: expected comma-separated integers, got 'two'")
    )
