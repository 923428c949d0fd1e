"""Server counters, and serving them in Prometheus' text format over plain HTTP.

Theory of operation
-------------------
Everything is counted in int64 slots on the one trio thread: exact, and cheap
on the per-connection path (``prometheus_client``'s own ``Counter.inc`` takes a
lock per call).  The slots can be shared memory, which is how a supervisor sums
its workers without losing what a crashed worker had counted.
``prometheus_client`` is used for what it is good at: turning those numbers
into correct exposition text at scrape time, through a custom collector on a
registry of our own (never the process-global one: two servers in one process
must not share counters).

Byte counters are application bytes: what handlers read and write (and what a
load generator counts on its side), the same with either TLS engine.  They
reach these slots once a second and when a connection ends (:mod:`._liveness`),
which keeps the per-read cost to one integer addition.

Beside the server's own numbers, a scrape exports the process's: ``process_*``
(prometheus_client's ``ProcessCollector``, from ``/proc``) and ``python_*``
(``PlatformCollector``, ``GCCollector``).  Under ``serve --workers`` the
supervisor exports :class:`ProcessTotals`: the same ``/proc`` figures read for
itself and each live worker, and summed (CPU seconds, resident and virtual
memory, open descriptors), with the CPU time of workers that have exited kept in
the sum (the kernel's count for waited-for children), so that the counter never
goes back when a worker is restarted; and :class:`GCTotals`: its own garbage
collections and those each worker counts into its shared slots (a ``gc``
callback), a restarted worker adding to its predecessor's.  Not prometheus_client's multiprocess mode:
that mode has no ``process_*`` figures for other processes, and needs a
directory of files where our counters already share memory.

``GET /healthz`` on the same port answers 200 while the server serves and 503
before it does and from the moment a stop begins (the collector's ``serving``),
so that a balancer stops sending clients before the listeners close.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import logging
import os
import resource
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import NoReturn

import trio
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .._exceptions import ListenError
from .._net import Address, accept
from ._outcome import Outcome

log = logging.getLogger("trio_tlsecho")

HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONNECTION_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)

#: Every handshake outcome, so that each series exists (at 0) from the first scrape.
HANDSHAKE_RESULTS = tuple(Outcome)
_RESULT_INDEX: dict[str, int] = {result: i for i, result in enumerate(HANDSHAKE_RESULTS)}


_SCALARS = (
    "connections_open",
    "connections_total",
    "bytes_received",
    "bytes_sent",
    "handler_errors",
    "idle_closed",
    "upstream_errors",
)
_RESULTS_AT = len(_SCALARS)
_HANDSHAKE_HIST_AT = _RESULTS_AT + len(HANDSHAKE_RESULTS)
_CONNECTION_HIST_AT = _HANDSHAKE_HIST_AT + len(HANDSHAKE_BUCKETS) + 2
#: gc.get_stats()'s figures per generation, for a worker's supervisor to sum (python_gc_*).
_GC_KEYS = ("collections", "collected", "uncollectable")
_GC_GENERATIONS = len(gc.get_stats())
_GC_AT = _CONNECTION_HIST_AT + len(CONNECTION_BUCKETS) + 2
#: How many int64 slots one server's metrics take (see :class:`ServerMetrics`).
METRIC_SLOTS = _GC_AT + len(_GC_KEYS) * _GC_GENERATIONS


def _new_slots(n: int = METRIC_SLOTS) -> memoryview:
    return memoryview(bytearray(8 * n)).cast("q")


class Histogram:
    """Fixed upper bounds (seconds), counts per bucket and the sum, in int64 slots.

    The sum is kept in whole nanoseconds so that every slot is an integer and a
    histogram can live in shared memory beside the counters.
    """

    def __init__(self, bounds: tuple[float, ...], slots: memoryview | None = None, at: int = 0) -> None:
        self.bounds = bounds
        self._slots = slots if slots is not None else _new_slots(len(bounds) + 2)
        self._at = at
        self._sum_at = at + len(bounds) + 1

    def observe(self, value: float) -> None:
        self._slots[self._at + bisect.bisect_left(self.bounds, value)] += 1
        self._slots[self._sum_at] += round(value * 1e9)

    @property
    def counts(self) -> list[int]:
        return list(self._slots[self._at : self._sum_at])

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def total(self) -> float:
        return self._slots[self._sum_at] / 1e9

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class _Results(MutableMapping[str, int]):
    """Handshake counts by result, over the slots."""

    def __init__(self, slots: memoryview) -> None:
        self._slots = slots

    def __getitem__(self, result: str) -> int:
        return int(self._slots[_RESULTS_AT + _RESULT_INDEX[result]])

    def __setitem__(self, result: str, value: int) -> None:
        self._slots[_RESULTS_AT + _RESULT_INDEX[result]] = value

    def __delitem__(self, result: str) -> None:
        raise TypeError("handshake results cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(HANDSHAKE_RESULTS)

    def __len__(self) -> int:
        return len(HANDSHAKE_RESULTS)


class _Scalar:
    """A counter attribute stored in the slots."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __get__(self, instance: ServerMetrics, owner: object) -> int:
        return int(instance.slots[self.index])

    def __set__(self, instance: ServerMetrics, value: int) -> None:
        instance.slots[self.index] = value


class ServerMetrics(Collector):
    """What one server has done, live.  Pass one to :func:`serve` to read it (or scrape it).

    Every number is an int64 in ``slots``: by default private memory, or a region of
    shared memory that a supervisor reads (``serve --workers``), so that counts are
    written through and survive a worker that crashes.
    """

    connections_open = _Scalar(0)
    connections_total = _Scalar(1)
    bytes_received = _Scalar(2)
    bytes_sent = _Scalar(3)
    handler_errors = _Scalar(4)
    idle_closed = _Scalar(5)
    upstream_errors = _Scalar(6)

    def __init__(self, slots: memoryview | None = None) -> None:
        #: Whether the server is serving: set once its listeners are bound, cleared when
        #: a stop begins.  ``GET /healthz`` answers by it.
        self.serving = False
        self.slots = slots if slots is not None else _new_slots()
        if len(self.slots) != METRIC_SLOTS:
            raise ValueError(f"metrics need {METRIC_SLOTS} int64 slots, got {len(self.slots)}")
        self.handshakes = _Results(self.slots)
        self.handshake_seconds = Histogram(HANDSHAKE_BUCKETS, self.slots, _HANDSHAKE_HIST_AT)
        self.connection_seconds = Histogram(CONNECTION_BUCKETS, self.slots, _CONNECTION_HIST_AT)

    @classmethod
    def total(cls, parts: Iterable[ServerMetrics]) -> ServerMetrics:
        """A new, private sum of *parts* (the workers of one server)."""
        summed = cls()
        for part in parts:
            for i in range(METRIC_SLOTS):
                summed.slots[i] += part.slots[i]
        return summed

    @contextlib.contextmanager
    def counting_gc(self) -> Iterator[None]:
        """Add this process's garbage collections to the slots while entered (a worker's, for
        its supervisor's ``python_gc_*``): what it collected so far, then each collection."""
        for generation, stats in enumerate(gc.get_stats()):
            for k, key in enumerate(_GC_KEYS):
                self.slots[_gc_slot(generation, k)] += stats[key]

        def count(phase: str, info: dict[str, int]) -> None:
            if phase == "stop":
                generation = info["generation"]
                self.slots[_gc_slot(generation, 0)] += 1
                self.slots[_gc_slot(generation, 1)] += info["collected"]
                self.slots[_gc_slot(generation, 2)] += info["uncollectable"]

        gc.callbacks.append(count)
        try:
            yield
        finally:
            gc.callbacks.remove(count)

    def gc_stats(self) -> list[dict[str, int]]:
        """What :meth:`counting_gc` counted, shaped as ``gc.get_stats()``."""
        return [
            {key: int(self.slots[_gc_slot(generation, k)]) for k, key in enumerate(_GC_KEYS)}
            for generation in range(_GC_GENERATIONS)
        ]

    @property
    def handshake_failures(self) -> int:
        # A probe (connect and close, no byte) never tried a handshake.
        return sum(n for result, n in self.handshakes.items() if result not in (Outcome.OK, Outcome.PROBE))

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tlsecho_connections_open", "Verified connections open now", self.connections_open
        )
        yield CounterMetricFamily(
            "tlsecho_connections", "Verified connections accepted", self.connections_total
        )
        handshakes = CounterMetricFamily(
            "tlsecho_handshakes", "TLS handshakes by result (ok, or why refused)", labels=["result"]
        )
        for result, count in self.handshakes.items():
            handshakes.add_metric([result], count)
        yield handshakes
        yield CounterMetricFamily(
            "tlsecho_received_bytes", "Application bytes received (TLS plaintext)", self.bytes_received
        )
        yield CounterMetricFamily(
            "tlsecho_sent_bytes", "Application bytes sent (TLS plaintext)", self.bytes_sent
        )
        yield CounterMetricFamily("tlsecho_handler_errors", "Handlers that raised", self.handler_errors)
        yield CounterMetricFamily("tlsecho_idle_closed", "Connections closed for idleness", self.idle_closed)
        yield CounterMetricFamily(
            "tlsecho_upstream_errors",
            "Handlers whose upstream failed (forward's target: refused, timed out, reset)",
            self.upstream_errors,
        )
        for name, doc, hist in (
            (
                "tlsecho_handshake_duration_seconds",
                "Time from accept to verified client",
                self.handshake_seconds,
            ),
            (
                "tlsecho_connection_duration_seconds",
                "Lifetime of verified connections",
                self.connection_seconds,
            ),
        ):
            yield HistogramMetricFamily(name, doc, buckets=hist.cumulative(), sum_value=hist.total)

    def render(self) -> bytes:
        """The Prometheus text exposition of these metrics."""
        return render(self)


def _gc_slot(generation: int, key: int) -> int:
    return _GC_AT + generation * len(_GC_KEYS) + key


class GCTotals(Collector):
    """``python_gc_*`` (as prometheus_client's GCCollector) of this process and the
    collections that *parts* counted (:meth:`ServerMetrics.counting_gc`: its workers)."""

    def __init__(self, parts: list[ServerMetrics]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        totals = gc.get_stats()
        for part in self.parts:
            for total, counted in zip(totals, part.gc_stats(), strict=True):
                for key in _GC_KEYS:
                    total[key] += counted[key]
        for name, doc, key in (
            ("python_gc_objects_collected", "Objects collected during gc", "collected"),
            ("python_gc_objects_uncollectable", "Uncollectable objects found during GC", "uncollectable"),
            ("python_gc_collections", "Number of times this generation was collected", "collections"),
        ):
            family = CounterMetricFamily(name, doc, labels=["generation"])
            for generation, stats in enumerate(totals):
                family.add_metric([str(generation)], stats[key])
            yield family


#: What a supervisor knows of its workers: their live pids, and their metrics.
Workers = tuple[Callable[[], Iterable[int]], list["ServerMetrics"]]


def render(*collectors: Collector) -> bytes:
    """Prometheus text for *collectors*, through a registry of their own (never the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def process_collectors(workers: Workers | None = None) -> list[Collector]:
    """``process_*`` and ``python_*`` collectors, unregistered: this process's, or with
    *workers* the sums over this process and them."""
    if workers is not None:
        pids, parts = workers
        return [ProcessTotals(pids), PlatformCollector(registry=None), GCTotals(parts)]
    # GCCollector registers itself somewhere, always: a registry of its own, thrown away.
    own_gc = GCCollector(registry=CollectorRegistry())
    return [ProcessCollector(registry=None), PlatformCollector(registry=None), own_gc]


#: Summed over processes; the others are the first process's (the supervisor's).
_SUMMED = frozenset(
    {
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
    }
)


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


class ProcessTotals(Collector):
    """``process_*`` for a group of processes: this one and *others* (the live workers' pids).

    Start time and the descriptor limit are this process's; the rest are sums.  CPU
    time includes the children this process has waited for (workers that exited).
    """

    def __init__(self, others: Callable[[], Iterable[int]]) -> None:
        self.others = others

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in [os.getpid(), *self.others()]:
            for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
                if family.name not in families:
                    families[family.name] = family
                elif family.name in _SUMMED:
                    families[family.name].samples[0] = (
                        families[family.name]
                        .samples[0]
                        ._replace(value=families[family.name].samples[0].value + family.samples[0].value)
                    )
        if "process_cpu_seconds" in families:
            exited = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = families["process_cpu_seconds"].samples[0]
            families["process_cpu_seconds"].samples[0] = cpu._replace(
                value=cpu.value + exited.ru_utime + exited.ru_stime
            )
        yield from families.values()


# -- HTTP --------------------------------------------------------------------------

_MAX_REQUEST = 8192
_REQUEST_TIMEOUT = 5.0
_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


async def serve_metrics(
    metrics: Collector,
    address: Address,
    *,
    workers: Workers | None = None,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``GET /metrics`` and ``GET /healthz`` on plain HTTP at *address* until cancelled.

    *metrics* with ``process_*`` and ``python_*`` of this process, or summed with its
    *workers*' (a supervisor's).  ``/healthz`` is 200 while ``metrics.serving`` is true (always, for
    a collector without one), else 503.  Plain HTTP on purpose (as every Prometheus
    exporter): bind it to loopback or a management network, not to where the TLS
    clients are.
    """
    collectors = [metrics, *process_collectors(workers)]
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise ListenError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    [listener, *extra] = listeners
    for other in extra:  # one address family is enough for a scrape target
        other.socket.close()  # no checkpoint: a cancellation here must not leak *listener*
    async with listener, trio.open_nursery() as nursery:
        sockname = listener.socket.getsockname()
        task_status.started(Address(str(sockname[0]), int(sockname[1])))
        while True:
            stream, _ = await accept(listener, f"metrics {address}")
            nursery.start_soon(_answer, stream, collectors)


async def _answer(stream: trio.SocketStream, collectors: list[Collector]) -> None:
    async with stream:
        with trio.move_on_after(_REQUEST_TIMEOUT):
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = await stream.receive_some(4096)
                    if not chunk or len(head) + len(chunk) > _MAX_REQUEST:
                        return
                    head += chunk
                method, _, rest = head.partition(b" ")
                path = rest.partition(b" ")[0].partition(b"?")[0]
                await stream.send_all(_route(method, path, collectors))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def _route(method: bytes, path: bytes, collectors: list[Collector]) -> bytes:
    if method not in (b"GET", b"HEAD"):
        return _response(b"405 Method Not Allowed", b"GET only\n")
    if path == b"/healthz":
        status, body = _health(collectors[0])
        content_type = b"text/plain; charset=utf-8"
    elif path in (b"/metrics", b"/"):
        status, body, content_type = b"200 OK", render(*collectors), _CONTENT_TYPE
    else:
        return _response(b"404 Not Found", b"try /metrics or /healthz\n")
    return _response(status, body if method == b"GET" else b"", content_type, len(body))


def _health(metrics: Collector) -> tuple[bytes, bytes]:
    if getattr(metrics, "serving", True):
        return b"200 OK", b"ok\n"
    # Starting, or stopping: either way, not a place to send a new client.
    return b"503 Service Unavailable", b"not serving\n"


def _response(
    status: bytes, body: bytes, content_type: bytes = b"text/plain", length: int | None = None
) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(len(body) if length is None else length).encode()
        + b"\r\nConnection: close\r\n\r\n" + body
    )  # fmt: skip
