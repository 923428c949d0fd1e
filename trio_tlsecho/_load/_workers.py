"""``loadgen --workers``: worker processes, and merging what they measured.

The parent resolves the server's address (once, so that an unknown host is one
error, and every worker connects to the same address), then spawns ``python -c
'from trio_tlsecho._load._workers import worker_main; worker_main()'`` with
``trio.run_process`` and talks JSON lines: it writes the config, the resolved
target and the worker's share on stdin; the worker connects its clients and
answers ``ready``; when all are ready the parent writes ``go``; workers report
progress each second and finally their whole report, histograms included, which
the parent merges exactly (:func:`._stats.merge`).

A worker that meets one of our errors (:class:`TLSEchoError`) answers ``error``
with its one-line message instead and exits; the parent raises that message (and,
if it came before the start, stops the others instead of starting them).  A worker
that dies otherwise closes its pipes: a write to it that fails is that death,
reported once every worker is done.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

import attrs
import trio

from .._config import ClientConfig
from .._exceptions import ClientError, ConfigError, TLSEchoError
from .._tls import TLSFiles, client_context
from ._client import Run, run_here
from ._config import PROGRESS_INTERVAL, LoadConfig, Progress, ProgressCallback, split
from ._stats import LoadReport, merge
from ._transport import Target

_now = trio.current_time
#: How long workers may take to start (a Python process, imports, handshakes).
_WORKER_START_TIMEOUT = 60.0


# -- worker processes ---------------------------------------------------------------


def _config_to_wire(config: LoadConfig) -> dict[str, Any]:
    tls = config.client.tls
    return {
        "address": str(config.address),
        "cert": str(tls.cert),
        "key": str(tls.key),
        "ca": str(tls.ca),
        "server_hostname": config.client.server_hostname,
        "handshake_timeout": config.client.handshake_timeout,
        "clients": config.clients,
        "requests": config.requests,
        "duration": config.duration,
        "sizes": str(config.sizes),
        "rate": config.rate,
        "new_connection_per_request": config.new_connection_per_request,
        "warmup": config.warmup,
        "ramp": config.ramp,
        "timeout": config.timeout,
        "proxy_protocol": config.proxy_protocol,
        "resume": config.resume,
    }


def _config_from_wire(data: Mapping[str, Any]) -> LoadConfig:
    data = dict(data)
    client = ClientConfig(
        tls=TLSFiles(cert=data.pop("cert"), key=data.pop("key"), ca=data.pop("ca")),
        server_hostname=data.pop("server_hostname"),
        handshake_timeout=data.pop("handshake_timeout"),
    )
    return LoadConfig(client=client, **data)


WORKER_COMMAND = "from trio_tlsecho._load._workers import worker_main; worker_main()"


class _LineReader:
    """Lines from a byte stream, bounded in length."""

    _MAX_LINE = 16 * 1024 * 1024

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next_line(self) -> bytes | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > self._MAX_LINE:
                raise RuntimeError("loadgen worker wrote an over-long line")
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk


@attrs.define(eq=False)
class _Worker:
    number: int
    process: trio.Process
    lines: _LineReader
    ready: trio.Event = attrs.Factory(trio.Event)
    progress: tuple[int, int, int] = (0, 0, 0)
    report: LoadReport | None = None
    #: The error the worker reported instead of running (see :func:`worker_main`).
    error: TLSEchoError | None = None

    async def read(self) -> None:
        while (line := await self.lines.next_line()) is not None:
            message = json.loads(line)
            if "ready" in message:
                self.ready.set()
            elif "progress" in message:
                rt, errors, mismatches = message["progress"]
                self.progress = (int(rt), int(errors), int(mismatches))
            elif "report" in message:
                self.report = LoadReport.from_wire(message["report"])
            elif "error" in message:
                kind = ConfigError if message.get("config") else ClientError
                self.error = kind(str(message["error"]))
        self.ready.set()  # a worker that died early must not hold the barrier

    async def send(self, data: bytes) -> None:
        """Write to the worker; if it has died, that is all (its exit status tells)."""
        assert self.process.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError):
            await self.process.stdin.send_all(data)


async def run_workers(config: LoadConfig, progress: ProgressCallback | None) -> LoadReport:
    # Fail here, once, on bad certificate files or an unknown host.
    client_context(config.client)
    target = await Target.resolve(config)
    shares = split(config.clients, config.workers)
    requests = split(config.requests, config.workers) if config.requests is not None else None
    wire = _config_to_wire(config)
    workers: list[_Worker] = []
    async with trio.open_nursery() as nursery:
        first = 0
        for number, count in enumerate(shares):
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [sys.executable, "-c", WORKER_COMMAND],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stdin is not None
            assert process.stdout is not None
            spec = {
                "config": wire,
                "target": target.to_wire(),
                "first_client": first,
                "count": count,
                "tickets": requests[number] if requests is not None else None,
            }
            worker = _Worker(number, process, _LineReader(process.stdout))
            await worker.send(json.dumps(spec).encode() + b"\n")
            nursery.start_soon(worker.read)
            workers.append(worker)
            first += count
        with trio.fail_after(_WORKER_START_TIMEOUT + config.timeout):
            for worker in workers:
                await worker.ready.wait()
        if not any(worker.error for worker in workers):
            for worker in workers:
                await worker.send(b"go\n")
            if progress is not None:
                nursery.start_soon(_report_worker_progress, workers, progress, config.warmup)
            for worker in workers:
                await worker.process.wait()
        # Ends the readers, and the workers that still wait for "go" if one failed.
        nursery.cancel_scope.cancel()
    for worker in workers:
        if worker.error is not None:
            raise worker.error
    reports = []
    for worker in workers:
        if worker.report is None:
            raise ClientError(
                f"loadgen worker {worker.number} exited with status {worker.process.returncode}"
                " without a report (see its message above)"
            )
        reports.append(worker.report)
    return merge(reports)


async def _report_worker_progress(workers: list[_Worker], progress: ProgressCallback, warmup: float) -> None:
    start = _now() + warmup  # "go" starts every worker's clock: the window opens after warm-up
    while True:
        await trio.sleep(PROGRESS_INTERVAL)
        rt, errors, mismatches = (sum(w.progress[i] for w in workers) for i in range(3))
        progress(Progress(_now() - start, rt, errors, mismatches))


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def worker_main() -> None:
    """Entry point of one worker process (see the module docstring for the protocol)."""
    spec = json.loads(sys.stdin.readline())
    try:
        trio.run(_worker, spec)
    except TLSEchoError as exc:
        # The parent says it once for all workers; a traceback per worker says nothing more.
        _emit({"error": str(exc), "config": isinstance(exc, ConfigError)})
        raise SystemExit(1) from None


async def _worker(spec: Mapping[str, Any]) -> None:
    config = _config_from_wire(spec["config"])
    run = Run(
        config=config,
        ssl_context=client_context(config.client),
        target=Target.from_wire(config, spec["target"]),
        first_client=int(spec["first_client"]),
        count=int(spec["count"]),
        tickets=spec["tickets"],
    )

    async def wait_for_go() -> None:
        _emit({"ready": True})
        # The parent answers once every worker is ready; EOF (a dead parent) also ends it.
        await trio.to_thread.run_sync(sys.stdin.readline)

    def on_progress(p: Progress) -> None:
        _emit({"progress": [p.round_trips, p.errors, p.mismatches]})

    report = await run_here(run, before_start=wait_for_go, progress=on_progress)
    _emit({"report": report.to_wire()})
