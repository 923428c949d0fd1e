"""Server counters, and serving them in Prometheus' text format over plain HTTP.

Theory of operation
-------------------
Everything is counted in plain ints on the one trio thread: exact, and cheap on
the per-connection path (``prometheus_client``'s own ``Counter.inc`` takes a
lock per call).  ``prometheus_client`` is used for what it is good at: turning
those numbers into correct exposition text at scrape time, through a custom
collector on a registry of our own (never the process-global one: two servers
in one process must not share counters).

Byte counters are *wire* bytes (TLS records included), counted on the TCP
stream under TLS: what the network carries, and what the peer's TCP stream
counts too.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Iterator
from typing import NoReturn

import attrs
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ._config import Address
from ._exceptions import ListenError

log = logging.getLogger("trio_tlsecho")

HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONNECTION_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)

#: Every handshake outcome, so that each series exists (at 0) from the first scrape.
HANDSHAKE_RESULTS = (
    "ok",
    "no_cert",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "identity_refused",
    "timeout",
    "proxy_header",
    "protocol",
)


@attrs.define
class Histogram:
    """Cumulative-on-read histogram with fixed upper bounds (seconds)."""

    bounds: tuple[float, ...]
    counts: list[int] = attrs.field(init=False)
    total: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@attrs.define(eq=False)
class ServerMetrics(Collector):
    """What one server has done, live.  Pass one to :func:`serve` to read it (or scrape it)."""

    connections_open: int = 0
    connections_total: int = 0
    handshakes: Counter[str] = attrs.Factory(Counter)
    bytes_received: int = 0
    bytes_sent: int = 0
    handler_errors: int = 0
    idle_closed: int = 0
    handshake_seconds: Histogram = attrs.Factory(lambda: Histogram(HANDSHAKE_BUCKETS))
    connection_seconds: Histogram = attrs.Factory(lambda: Histogram(CONNECTION_BUCKETS))

    @property
    def handshake_failures(self) -> int:
        return sum(n for result, n in self.handshakes.items() if result != "ok")

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
        for result in (*HANDSHAKE_RESULTS, *sorted(set(self.handshakes) - set(HANDSHAKE_RESULTS))):
            handshakes.add_metric([result], self.handshakes[result])
        yield handshakes
        yield CounterMetricFamily(
            "tlsecho_received_bytes", "Bytes received on the wire (TLS records)", self.bytes_received
        )
        yield CounterMetricFamily(
            "tlsecho_sent_bytes", "Bytes sent on the wire (TLS records)", self.bytes_sent
        )
        yield CounterMetricFamily("tlsecho_handler_errors", "Handlers that raised", self.handler_errors)
        yield CounterMetricFamily("tlsecho_idle_closed", "Connections closed for idleness", self.idle_closed)
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
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


# -- HTTP --------------------------------------------------------------------------

_MAX_REQUEST = 8192
_REQUEST_TIMEOUT = 5.0
_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


async def serve_metrics(
    metrics: ServerMetrics,
    address: Address,
    *,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``GET /metrics`` on plain HTTP at *address* until cancelled.

    Plain HTTP on purpose (as every Prometheus exporter): bind it to loopback or a
    management network, not to where the TLS clients are.
    """
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise ListenError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    [listener, *extra] = listeners
    for other in extra:  # one address family is enough for a scrape target
        await other.aclose()
    async with listener, trio.open_nursery() as nursery:
        sockname = listener.socket.getsockname()
        task_status.started(Address(str(sockname[0]), int(sockname[1])))
        while True:
            stream = await listener.accept()
            nursery.start_soon(_answer, stream, metrics)


async def _answer(stream: trio.SocketStream, metrics: ServerMetrics) -> None:
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
                if method not in (b"GET", b"HEAD"):
                    await stream.send_all(_response(b"405 Method Not Allowed", b"GET only\n"))
                elif path not in (b"/metrics", b"/"):
                    await stream.send_all(_response(b"404 Not Found", b"try /metrics\n"))
                else:
                    body = metrics.render()
                    await stream.send_all(
                        _response(b"200 OK", body if method == b"GET" else b"", _CONTENT_TYPE, len(body))
                    )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def _response(
    status: bytes, body: bytes, content_type: bytes = b"text/plain", length: int | None = None
) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(len(body) if length is None else length).encode()
        + b"\r\nConnection: close\r\n\r\n" + body
    )  # fmt: skip
