"""``loadgen --workers``: worker processes, and merging what they measured.

The parent resolves the server's address (once, so that an unknown host is one
error, and every worker connects to the same address), then spawns ``python -c
'from trio_tlsecho._load._workers import worker_main; worker_main()'`` with
``trio.run_process`` and talks to it over its stdin and stdout, one message a line
(:func:`encode`, :func:`decode`).  It writes the worker's :class:`._client.Share`
(the config, the resolved target, its clients and requests); the worker connects
its clients and answers ``READY``; when all are ready the parent writes ``GO``;
workers send their :class:`Progress` each second and finally their whole
:class:`LoadReport`, histograms included, which the parent merges exactly
(:func:`._stats.merge`).

A message is an object pickled, then base64-encoded: no code per field, so what a
config or a report holds crosses as it is, and a field added to either needs
nothing here.  Pickle runs code of the sender's choosing, which is fine because
the two ends are one program: the worker is our own child, running the same
interpreter and the same code, on pipes no one else holds.  Base64 keeps a message
on one line, so the parent reads bounded lines and a worker waits for ``GO`` with
a plain ``readline``.

A worker that meets one of our errors (:class:`TLSEchoError`) sends that error
instead and exits; the parent raises it (and, if it came before the start, stops
the others instead of starting them).  A worker that dies otherwise closes its
pipes: a write to it that fails is that death, reported once every worker is done.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import pickle
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial

import attrs
import trio

from .._exceptions import ClientError, TLSEchoError, user_error
from .._tls import client_context
from ._client import Share, run_here
from ._config import LoadConfig, Progress, ProgressCallback
from ._stats import LoadReport, merge
from ._transport import Target

#: How long workers may take to start (a Python process, imports, handshakes).
_WORKER_START_TIMEOUT = 60.0

WORKER_COMMAND = "from trio_tlsecho._load._workers import worker_main; worker_main()"


# -- the messages -------------------------------------------------------------------


class Barrier(enum.Enum):
    """The start barrier's two messages: a worker's clients are connected; start."""

    READY = "ready"
    GO = "go"


def encode(message: object) -> bytes:
    """*message* as one line: pickled, base64-encoded, ``\\n``-terminated."""
    return base64.b64encode(pickle.dumps(message)) + b"\n"


def decode(line: bytes | str) -> object:
    """The message *line* holds (its line ending, if any, is ignored)."""
    return pickle.loads(base64.b64decode(line))


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


# -- the parent's side ------------------------------------------------------------------

#: A worker's progress until it sends some.
_NO_PROGRESS = Progress(0.0, 0, 0, 0)


@attrs.define(eq=False)
class _Worker:
    number: int
    process: trio.Process
    lines: _LineReader
    ready: trio.Event = attrs.Factory(trio.Event)
    progress: Progress = _NO_PROGRESS
    #: How many progress messages it sent: the parent shows a sum once every worker has
    #: sent the same number, so that the sum is of counts taken at the same time.
    ticks: int = 0
    on_progress: Callable[[], None] = lambda: None
    report: LoadReport | None = None
    #: The error the worker reported instead of running (see :func:`worker_main`).
    error: TLSEchoError | None = None

    @classmethod
    async def start(cls, nursery: trio.Nursery, number: int, share: Share) -> _Worker:
        """Spawn a worker, send it *share*, and read what it says in *nursery*."""
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-c", WORKER_COMMAND],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        assert process.stdout is not None
        worker = cls(number, process, _LineReader(process.stdout))
        await worker.send(share)
        nursery.start_soon(worker.read)
        return worker

    async def read(self) -> None:
        while (line := await self.lines.next_line()) is not None:
            match decode(line):
                case Barrier.READY:
                    self.ready.set()
                case Progress() as progress:
                    self.progress = progress
                    self.ticks += 1
                    self.on_progress()
                case LoadReport() as report:
                    self.report = report
                case TLSEchoError() as error:
                    self.error = error
                case other:
                    raise RuntimeError(f"loadgen worker {self.number} sent {other!r}")
        self.ready.set()  # a worker that died early must not hold the barrier

    async def send(self, message: object) -> None:
        """Write to the worker; if it has died, that is all (its exit status tells)."""
        assert self.process.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError):
            await self.process.stdin.send_all(encode(message))


async def run_workers(
    config: LoadConfig, progress: ProgressCallback | None, stop: trio.Event | None = None
) -> LoadReport:
    # Fail here, once, on bad certificate files or an unknown host.
    client_context(config.client)
    target = await Target.resolve(config)
    workers: list[_Worker] = []
    async with trio.open_nursery() as nursery:
        for number, share in enumerate(Share.divide(config, target, config.workers)):
            workers.append(await _Worker.start(nursery, number, share.launched()))
        if progress is not None:
            _ProgressSum(workers, progress).attach()
        if stop is not None:
            nursery.start_soon(_interrupt_when, stop, workers)
        with trio.fail_after(_WORKER_START_TIMEOUT + config.timeout):
            for worker in workers:
                await worker.ready.wait()
        if not any(worker.error for worker in workers):
            for worker in workers:
                await worker.send(Barrier.GO)
            for worker in workers:
                await worker.process.wait()
        # Ends the readers, and the workers that still wait for GO if one failed.
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


@attrs.define
class _ProgressSum:
    """The workers' progress added up, once each has sent its next report."""

    workers: list[_Worker]
    progress: ProgressCallback
    shown: int = 0

    def attach(self) -> None:
        for worker in self.workers:
            worker.on_progress = self.update

    def update(self) -> None:
        if min(worker.ticks for worker in self.workers) <= self.shown:
            return
        self.shown += 1
        latest = [worker.progress for worker in self.workers]
        self.progress(
            Progress(
                max(p.elapsed for p in latest),
                sum(p.round_trips for p in latest),
                sum(p.errors for p in latest),
                sum(p.mismatches for p in latest),
            )
        )


async def _interrupt_when(stop: trio.Event, workers: list[_Worker]) -> None:
    """Pass Ctrl-C on (a terminal's reaches them too, a ``kill -INT`` of the parent does
    not): each worker ends its run and sends what it measured."""
    await stop.wait()
    for worker in workers:
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGINT)


# -- the worker's side ------------------------------------------------------------------


def _tell_parent(message: object) -> None:
    sys.stdout.write(encode(message).decode("ascii"))
    sys.stdout.flush()


def worker_main() -> None:
    """Entry point of one worker process (see the module docstring for the protocol)."""
    share = decode(sys.stdin.readline())
    assert isinstance(share, Share), share
    try:
        trio.run(_worker, share)
    except KeyboardInterrupt:
        # Ctrl-C before the run could catch it: the parent says that it had no report.
        raise SystemExit(130) from None
    except BaseException as exc:
        # The parent says it once for all workers; a traceback per worker says nothing more.
        # Our errors come alone or in a nursery's group; anything else is a bug.
        error = user_error(exc)
        if error is None:
            raise
        _tell_parent(error)
        raise SystemExit(1) from None


async def _worker(share: Share) -> None:
    async def wait_for_go() -> None:
        _tell_parent(Barrier.READY)
        # The parent answers once every worker is ready; EOF (a dead parent) also ends it.
        await trio.to_thread.run_sync(sys.stdin.readline)

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_on_signal, signals, stop)
            report = await run_here(
                share,
                client_context(share.config.client),
                before_start=wait_for_go,
                progress=_tell_parent,
                stop=stop,
            )
            nursery.cancel_scope.cancel()
    _tell_parent(report)


async def _set_on_signal(signals: AsyncIterator[int], stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()
