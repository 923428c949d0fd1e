"""benchmarks/scaling.py, the --workers scaling run: it works end to end where it can.

Its real use is on a machine with 16 cores, which a session rarely gets; a script that
breaks there wastes the machine.  Here it runs N = 1 (2 cores: one for the worker, one
for the load) and must skip, saying why, an N the machine has no cores for.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .tools import missing, require_tool

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scaling.py"


@pytest.fixture
def scaling(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports run.py beside it
    return importlib.import_module("scaling")


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_inherit_the_cores_and_nothing_outlives_the_stop(
    scaling: ModuleType, pki: Path, tmp_path: Path
) -> None:
    # N = 2 on one CPU: not a measurement, the supervisor's path (N = 1 runs without one).
    cpu = min(os.sched_getaffinity(0))
    server = scaling.start_workers(2, pki, {cpu}, tmp_path / "serve.log")
    try:
        children = _children(server.process.pid)
        assert len(children) >= 2  # the workers (and multiprocessing's resource tracker)
        for child in children:
            assert os.sched_getaffinity(child) == {cpu}
        # Watched before the stop: a pid could be reused after, a pidfd cannot.
        exits = [os.pidfd_open(child) for child in children]
    finally:
        scaling.stop_workers(server.process)
    try:
        for fd in exits:
            readable, _, _ = select.select([fd], [], [], 30)  # readable once it has exited
            assert readable == [fd]
    finally:
        for fd in exits:
            os.close(fd)


@pytest.mark.parametrize(
    ("text", "cpus"), [("3", [3]), ("0,8", [0, 8]), ("0-1", [0, 1]), ("0-1,8-9", [0, 1, 8, 9])]
)
def test_cpu_lists_as_the_kernel_writes_them(scaling: ModuleType, text: str, cpus: list[int]) -> None:
    assert scaling._cpu_list(text) == cpus


def test_scaling_runs_one_worker_and_skips_what_it_cannot(tmp_path: Path) -> None:
    require_tool("cc", "gcc libssl-dev")
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing("OpenSSL's C headers are not installed", "libssl-dev")
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("needs 2 cores: one for the server worker, one for the load")
    args = [sys.executable, str(SCRIPT), "--workers", f"1,{cpus}", "--duration", "0.3", "--warmup", "0.1",
            "--repeat", "1", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert f"N = {cpus} skipped: needs {2 * cpus} cores" in out
    assert "| 1 | " in out
    [written] = tmp_path.glob("scaling-*.json")
    result = json.loads(written.read_text())
    [row] = result["medians"]
    assert row["workers"] == 1
    assert row["median"] > 0
    [run] = result["runs"]
    assert run["server_cores"] == sorted(os.sched_getaffinity(0))[:1]
    [load] = run["loads"]
    assert load["errors"] == dict.fromkeys(["connect", "handshake", "closed", "mismatch", "timeout", "io"], 0)
    assert run["errors"] == 0


def test_scaling_with_our_loadgen_workers(tmp_path: Path) -> None:
    # The wording: "shown with the loadgen's --workers".  No C compiler needed.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores: one for the server worker, one for the load")
    args = [sys.executable, str(SCRIPT), "--load", "loadgen", "--workers", "1", "--duration", "0.5",
            "--warmup", "0.2", "--repeat", "1", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "load: loadgen" in done.stdout
    [written] = tmp_path.glob("scaling-*.json")
    result = json.loads(written.read_text())
    assert result["settings"]["load"] == "loadgen"
    [run] = result["runs"]
    [load] = run["loads"]  # one loadgen process, with the 64 clients of its one worker
    assert load["clients"] == 64
    assert load["round_trips"] > 0
    assert run["round_trips_per_sec"] == pytest.approx(load["round_trips_per_sec"], abs=0.1)
    assert load["errors"] == {} or not any(load["errors"].values())
    assert run["errors"] == 0


def test_bad_workers_flag_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--workers", "one"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("--workers: expected comma-separated integers, got 'one'")
    )


def test_unusable_out_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--workers", "1", "--out", str(blocker / "results")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith(f"scaling.py: error: --out {blocker / 'results'}: ")
    )
