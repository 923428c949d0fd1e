"""``GET /healthz`` on the metrics port, and the process's own figures (``process_*``, ``python_*``)."""

from __future__ import annotations

import gc
import os
import re
import resource
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client import ProcessCollector
from prometheus_client.core import Metric

from trio_tlsecho import Address, ClientConfig, ServerConfig, ServerMetrics, open_client, serve, serve_metrics
from trio_tlsecho._server import GCTotals, ProcessTotals

from .logs import ServerLog
from .processes import ServeProcess
from .test_metrics import _http


async def _status(address: Address, path: bytes = b"/healthz", method: bytes = b"GET") -> tuple[bytes, bytes]:
    response = await _http(address, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


async def test_healthz_is_200_while_serving_and_503_once_a_stop_begins(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, log: ServerLog
) -> None:
    metrics = ServerMetrics()
    health = await nursery.start(serve_metrics, metrics, Address("127.0.0.1", 0))
    assert await _status(health) == (b"HTTP/1.1 503 Service Unavailable", b"not serving\n")  # not yet
    stop = trio.Event()
    stopped = trio.Event()

    async def run_server(task_status: trio.TaskStatus[list[Address]]) -> None:
        await serve(server_config, shutdown_trigger=stop.wait, metrics=metrics, task_status=task_status)
        stopped.set()

    [address] = await nursery.start(run_server)
    assert await _status(health) == (b"HTTP/1.1 200 OK", b"ok\n")
    assert await _status(health, method=b"HEAD") == (b"HTTP/1.1 200 OK", b"")
    # An open connection keeps the server in its shutdown grace after the stop begins.
    client = await open_client(address, client_config)
    await client.send_all(b"x")
    assert await client.receive_some(1) == b"x"
    stop.set()
    await log.wait_for("shutting down")
    assert not stopped.is_set()
    assert await _status(health) == (b"HTTP/1.1 503 Service Unavailable", b"not serving\n")
    await client.aclose()
    await stopped.wait()


async def test_metrics_include_the_process_and_python(nursery: trio.Nursery) -> None:
    address = await nursery.start(serve_metrics, ServerMetrics(), Address("127.0.0.1", 0))
    status, body = await _status(address, b"/metrics")
    assert status == b"HTTP/1.1 200 OK"
    text = body.decode()
    for name in (
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "python_info{",
        "python_gc_collections_total{",
        "tlsecho_connections_total ",
    ):
        assert f"\n{name}" in text, name


def _values(metrics: list[Metric]) -> dict[str, float]:
    return {family.name: family.samples[0].value for family in metrics}


def test_process_totals_sum_over_the_processes() -> None:
    # This process counted twice: every summed figure doubles, the others do not.
    one = _values(list(ProcessCollector(registry=None).collect()))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    two = _values(list(ProcessTotals(lambda: [os.getpid()]).collect()))
    assert two["process_open_fds"] == 2 * one["process_open_fds"]
    assert two["process_max_fds"] == one["process_max_fds"]
    assert two["process_start_time_seconds"] == one["process_start_time_seconds"]
    assert two["process_resident_memory_bytes"] > one["process_resident_memory_bytes"]
    # With the CPU time of the children already waited for (restarted workers).
    assert (
        two["process_cpu_seconds"] >= 2 * one["process_cpu_seconds"] + children.ru_utime + children.ru_stime
    )


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _metric(text: str, name: str) -> float:
    [value] = re.findall(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(value)


def test_workers_health_and_process_figures(tmp_path: Path, certs: Path, client_config: ClientConfig) -> None:
    with ServeProcess(
        "--workers", "2", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", cwd=tmp_path
    ) as sup:
        health = sup.metrics_url.replace("/metrics", "/healthz")
        line = sup.stderr.wait_for("workers serving: pids")
        pids = [int(p) for p in re.findall(r"\d+", line.split("pids")[1])]
        with urllib.request.urlopen(health, timeout=10) as response:
            assert (response.status, response.read()) == (200, b"ok\n")
        own = [_open_fds(pid) for pid in (sup.proc.pid, *pids)]
        with urllib.request.urlopen(sup.metrics_url, timeout=10) as response:
            text = response.read().decode()
        # The supervisor's and both workers' descriptors (and the scrape's own socket).
        assert sum(own) <= _metric(text, "process_open_fds") <= sum(own) + 2
        assert _metric(text, "process_open_fds") > own[0] + 1
        assert "python_info{" in text
        assert _metric(text, 'python_gc_collections_total{generation="0"}') > 0

        async def hold_and_stop() -> None:
            # A connection open through the stop: the workers drain it, the supervisor waits.
            client = await open_client(sup.address, client_config)
            await client.send_all(b"x")
            assert await client.receive_some(1) == b"x"
            sup.signal(signal.SIGTERM)
            assert await sup.stderr.await_line("stopping workers gracefully")
            with pytest.raises(urllib.error.HTTPError) as unhealthy:
                await trio.to_thread.run_sync(lambda: urllib.request.urlopen(health, timeout=10))
            assert unhealthy.value.code == 503
            unhealthy.value.close()  # it holds the response's socket
            await client.aclose()

        trio.run(hold_and_stop)
        code, err = sup.wait()
    assert code == 0, err


def test_gc_totals_add_what_the_workers_counted() -> None:
    metrics = ServerMetrics()  # a worker's slice of shared memory, in the supervisor's view
    gc.disable()  # only the collections made here, none in between by chance
    try:
        with metrics.counting_gc():
            gc.collect()
            gc.collect(0)
            # Since the process started: what it had collected, and each collection since.
            assert metrics.gc_stats() == gc.get_stats()
        gc.collect()  # after it, not counted
        counted, own = metrics.gc_stats(), gc.get_stats()
        families = {family.name: family for family in GCTotals([metrics, metrics]).collect()}
    finally:
        gc.enable()
    assert counted != own
    for name, key in (
        ("python_gc_collections", "collections"),
        ("python_gc_objects_collected", "collected"),
        ("python_gc_objects_uncollectable", "uncollectable"),
    ):
        values = {sample.labels["generation"]: sample.value for sample in families[name].samples}
        assert values == {str(g): own[g][key] + 2 * counted[g][key] for g in range(len(own))}, name
