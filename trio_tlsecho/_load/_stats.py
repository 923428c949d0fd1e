"""Load statistics, sans-io: a recorder for the hot path, a frozen report, an exact merge.

Theory of operation
-------------------
Latencies are integers in microseconds recorded in an HdrHistogram (1 µs to 60 s,
3 significant digits: every value is kept to within 0.1 %).  Histograms add exactly,
so reports from several worker processes merge into the report one process would
have made; percentiles are computed only from the merged histogram, never averaged.

The :class:`Recorder` is the mutable side, written by client tasks: plain counters
and two histograms, nothing else, because it runs once per round trip.  A client
fills in an :class:`ExchangeIO` as an exchange goes and commits it whole when the
exchange ends (:meth:`Recorder.exchange`, :meth:`Recorder.failed`), so what counts
as what is decided here.  A :class:`LoadReport` is what comes out: frozen, with the
histograms held in their standard compressed encoding (``HISTFAAA...``), which is
immutable and small enough to cross from a worker process to its parent.

What is counted:

* ``round_trips``: echoes that came back complete and byte-for-byte equal.
* ``read_ops`` / ``write_ops``: reads that returned data and messages sent (one
  write each, however many calls it took); ``bytes_sent`` / ``bytes_received``:
  plaintext bytes.  These
  count every exchange that was measured, including mismatched and failed ones, so
  a clean run has ``bytes_sent == bytes_received`` and ``write_ops == round_trips``.
* ``mismatches``: echoes that differed from what was sent.  Either a byte differed
  (echoes are compared chunk by chunk as they arrive, so one that differs and is then
  cut short is a mismatch, not a short read), or the echo was longer than the
  message: bytes beyond it were left in the TLS record that ended the echo, or, with
  a new connection per request, had arrived when the connection was about to close.
  (Bytes beyond the echo that come later in a record of their own are seen by the
  next exchange on the connection, which then mismatches.)
* ``errors``: by kind (:data:`ERROR_KINDS`); each ends the connection it happened on.
"""

from __future__ import annotations

import enum
import functools
import io
import math
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

# hdrhistogram ships no type information; everything it returns is wrapped below.
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped, unused-ignore]

LOWEST_US = 1
#: Anything slower is recorded as 60 s: a load test that sees minute-long round trips
#: has an answer already.
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3

#: Percentiles reported for round trips (``p999`` is the 99.9th) and handshakes.
LATENCY_PERCENTILES: Mapping[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
HANDSHAKE_PERCENTILES: Mapping[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0}


class ErrorKind(enum.StrEnum):
    """Why an exchange failed; each ends the connection."""

    #: The TCP connection could not be opened.
    REFUSED = "refused"
    #: A TLS failure: the server rejected our certificate, or we rejected its.
    TLS_REJECTED = "tls_rejected"
    #: The peer reset the connection (RST, broken pipe).
    RESET = "reset"
    #: No handshake or no complete echo within the timeout.
    TIMEOUT = "timeout"
    #: The server closed the connection before the whole echo came back.
    SHORT_READ = "short_read"


ERROR_KINDS: tuple[str, ...] = tuple(kind.value for kind in ErrorKind)

_FOOTER_RE = re.compile(r"^#\[Mean .*\]$", re.MULTILINE)


#: Distinct values a :class:`Histogram` counts in a dict before it records them.
_PENDING_MAX = 16384


class Histogram:
    """A typed face on ``hdrh``'s HdrHistogram, in microseconds, clamped to its range.

    :meth:`record` runs once per round trip, and hdrh's ``record_value`` is Python
    that finds a bucket by arithmetic (a few µs); latencies in µs repeat a lot, so
    they are counted in a dict (one increment) and recorded with their counts when
    the histogram is read, or when the dict holds :data:`_PENDING_MAX` values.
    """

    __slots__ = ("_h", "_pending")

    def __init__(self, hdr: Any = None) -> None:
        self._h: Any = hdr if hdr is not None else HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self._pending: dict[int, int] = {}

    def record(self, value_us: int) -> None:
        pending = self._pending
        pending[value_us] = pending.get(value_us, 0) + 1
        if len(pending) >= _PENDING_MAX:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        # Clamped, not dropped: a value outside the range is still one observation.
        clamped: dict[int, int] = {}
        for value, n in pending.items():
            key = min(max(value, LOWEST_US), HIGHEST_US)
            clamped[key] = clamped.get(key, 0) + n
        for value, n in clamped.items():
            self._h.record_value(value, n)

    @property
    def hdr(self) -> Any:
        """The hdrh histogram, with every value recorded so far."""
        if self._pending:
            self._flush()
        return self._h

    def add(self, other: Histogram) -> None:
        self.hdr.add(other.hdr)

    @property
    def count(self) -> int:
        return int(self.hdr.get_total_count())

    @property
    def max(self) -> int:
        return int(self.hdr.get_max_value()) if self.count else 0

    @property
    def min(self) -> int:
        return int(self.hdr.get_min_value()) if self.count else 0

    def _recorded(self) -> list[tuple[float, int]]:
        """(value, count) of every recorded bucket, each at its middle, as hdrh's own mean
        and stdev place them: hdrh walks every bucket with an iterator object per step
        (about 0.1 s per histogram), this reads its counts array once."""
        h = self.hdr
        counts = h.counts[: h.counts_len]
        return [
            (float(h._hdr_median_equiv_value(h.get_value_from_index(i))), c)
            for i, c in enumerate(counts)
            if c
        ]

    @property
    def mean(self) -> float:
        recorded = self._recorded()
        return sum(v * c for v, c in recorded) / self.count if recorded else 0.0

    @property
    def stdev(self) -> float:
        recorded = self._recorded()
        if not recorded:
            return 0.0
        mean = sum(v * c for v, c in recorded) / self.count
        return math.sqrt(sum((v - mean) ** 2 * c for v, c in recorded) / self.count)

    def distribution(self, *, scale: float = 1000.0) -> str:
        """HdrHistogram's percentile distribution (``.hgrm``, what wrk2 ``--latency``
        prints and the usual HdrHistogram plotters read), values divided by *scale*
        (1000: milliseconds)."""
        out = io.BytesIO()
        self.hdr.output_percentile_distribution(out, scale)
        text = out.getvalue().decode("ascii")
        # hdrh scales the mean but not the standard deviation in its footer.
        return _FOOTER_RE.sub(
            f"#[Mean    = {self.mean / scale:12.3f}, StdDeviation   = {self.stdev / scale:12.3f}]", text
        )

    def percentiles(self, wanted: Iterable[float]) -> dict[float, int]:
        """Value at each percentile (0 for an empty histogram), in one pass."""
        wanted = list(wanted)
        if not self.count:
            return dict.fromkeys(wanted, 0)
        found = self.hdr.get_percentile_to_value_dict(wanted)
        # hdrh reports "highest equivalent value", which may exceed the true maximum.
        return {p: min(int(found.get(p, self.max)), self.max) for p in wanted}

    def encode(self) -> str:
        return bytes(self.hdr.encode()).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Histogram:
        return cls(HdrHistogram.decode(text.encode("ascii")))


def _empty_encoded() -> str:
    return Histogram().encode()


def _to_errors(value: Mapping[str, int]) -> Mapping[str, int]:
    unknown = set(value) - set(ERROR_KINDS)
    if unknown:
        raise ValueError(f"unknown error kinds: {sorted(unknown)}")
    return types.MappingProxyType({kind: int(value.get(kind, 0)) for kind in ERROR_KINDS})


@attrs.define(kw_only=True)
class _Counters:
    """The plain counters a :class:`Recorder` keeps and a :class:`LoadReport` holds.

    Declared once for both (a report is frozen by its own class), and added up
    field by field across workers by :func:`merge`.
    """

    round_trips: int = 0
    read_ops: int = 0
    write_ops: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    mismatches: int = 0
    #: Handshakes that resumed an earlier TLS session (``loadgen --resume``).
    resumed: int = 0


#: The names of the plain counters, in order.
COUNTERS: tuple[str, ...] = tuple(field.name for field in attrs.fields(_Counters))


@attrs.frozen(kw_only=True)
class LoadReport(_Counters):
    """What a load run measured: counters and encoded histograms.  Merge with :func:`merge`."""

    clients: int
    #: Length of the measured window (after warm-up), in seconds.
    seconds: float
    #: Count for every kind in :data:`ERROR_KINDS`, zeros included.
    errors: Mapping[str, int] = attrs.field(factory=dict, converter=_to_errors)
    #: Round-trip latency histogram (µs), HdrHistogram's compressed base64 encoding.
    latency: str = attrs.field(factory=_empty_encoded)
    #: Handshake latency histogram (µs), same encoding.
    handshake: str = attrs.field(factory=_empty_encoded)
    #: Round-trip latency from the actual send (µs): in an open loop, without the wait
    #: behind late sends that ``latency`` counts (wrk2 ``-U``); otherwise ``latency``.
    latency_uncorrected: str = attrs.field(factory=_empty_encoded)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def round_trips_per_sec(self) -> float:
        return self.round_trips / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_sec(self) -> float:
        """Echoed payload (bytes received) per second, in 10^6 bytes."""
        return self.bytes_received / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def latency_histogram(self) -> Histogram:
        return Histogram.decode(self.latency)

    def handshake_histogram(self) -> Histogram:
        return Histogram.decode(self.handshake)

    def uncorrected_histogram(self) -> Histogram:
        return Histogram.decode(self.latency_uncorrected)

    def to_json(self) -> dict[str, Any]:
        """The summary object ``loadgen --json`` writes (its keys are a documented
        interface, README "loadgen"): every key in every run, zeros included, so that a
        consumer never has to ask whether one is there.
        """
        summary = {
            "clients": self.clients,
            "seconds": round(self.seconds, 6),
            "round_trips": self.round_trips,
            "round_trips_per_sec": round(self.round_trips_per_sec, 3),
            "read_ops": self.read_ops,
            "write_ops": self.write_ops,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "mb_per_sec": round(self.mb_per_sec, 6),
            "errors": dict(self.errors),
            "mismatches": self.mismatches,
            "latency_us": _summary(self.latency_histogram(), LATENCY_PERCENTILES),
            "latency_uncorrected_us": _summary(self.uncorrected_histogram(), LATENCY_PERCENTILES),
            "handshakes": self.handshake_histogram().count,
            "handshakes_resumed": self.resumed,
            "handshake_us": _summary(self.handshake_histogram(), HANDSHAKE_PERCENTILES),
        }
        return summary

    def histograms(self) -> dict[str, str]:
        """The histograms, HdrHistogram's compressed base64 (``HISTFAAA...``), for ``--json``."""
        return {
            "latency_us": self.latency,
            "latency_uncorrected_us": self.latency_uncorrected,
            "handshake_us": self.handshake,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # How a worker's report reaches its parent (pickled, see _workers): every field
        # as it is, but the read-only view of the errors, which does not pickle, as
        # the dict it shows (the converter makes it read-only again).
        fields = attrs.asdict(self, recurse=False) | {"errors": dict(self.errors)}
        return (functools.partial(LoadReport, **fields), ())


def _summary(hist: Histogram, names: Mapping[str, float]) -> dict[str, float]:
    values = hist.percentiles(names.values())
    out: dict[str, float] = {name: values[p] for name, p in names.items()}
    out |= {"min": hist.min, "max": hist.max, "mean": round(hist.mean, 1), "stdev": round(hist.stdev, 1)}
    return out


def merge(reports: Sequence[LoadReport]) -> LoadReport:
    """Exactly the report one process running all the clients would have made.

    Counters and histograms add; clients add; the workers ran side by side, so the
    window is the longest of theirs.
    """
    if not reports:
        raise ValueError("nothing to merge")
    latency, handshake, uncorrected = Histogram(), Histogram(), Histogram()
    errors = dict.fromkeys(ERROR_KINDS, 0)
    for r in reports:
        latency.add(r.latency_histogram())
        handshake.add(r.handshake_histogram())
        uncorrected.add(r.uncorrected_histogram())
        for kind, n in r.errors.items():
            errors[kind] += n
    return LoadReport(
        clients=sum(r.clients for r in reports),
        seconds=max(r.seconds for r in reports),
        **{name: sum(getattr(r, name) for r in reports) for name in COUNTERS},
        errors=errors,
        latency=latency.encode(),
        handshake=handshake.encode(),
        latency_uncorrected=uncorrected.encode(),
    )


@attrs.define
class ExchangeIO:
    """What one exchange did so far: written as it goes, committed whole when it ends."""

    #: The message's length: the echo is complete when as many bytes came back.
    size: int
    sent: int = 0
    received: int = 0
    reads: int = 0
    writes: int = 0
    #: A byte differed, or the server sent more than the message (then also over_long,
    #: and the stream is out of step).
    mismatched: bool = False
    over_long: bool = False

    def take(self, buffer: memoryview, got: int, payload: memoryview) -> bool:
        """Count a read of *got* bytes of the echo into *buffer*; whether they are the
        bytes of *payload* due there (if not, the exchange is a mismatch, and ends)."""
        self.reads += 1
        start = self.received
        self.received += got
        if buffer[:got] != payload[start : self.received]:
            self.mismatched = True
            return False
        return True


@attrs.define
class Recorder(_Counters):
    """The mutable counters client tasks write to; :meth:`report` freezes them."""

    errors: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    latency: Histogram = attrs.field(factory=Histogram)
    handshake: Histogram = attrs.field(factory=Histogram)
    #: Only an open loop's differs from ``latency`` (see :attr:`LoadReport.latency_uncorrected`).
    uncorrected: Histogram | None = None

    def exchange(self, io: ExchangeIO, latency_us: int, uncorrected_us: int = 0) -> None:
        """One measured exchange that did not fail: a round trip taking *latency_us*
        (and, in an open loop, *uncorrected_us* from the actual send), a mismatch, or
        (the server closed before the whole echo) a short read.
        """
        self.io(io)
        if io.mismatched:
            self.mismatch()
        elif io.received < io.size:
            self.error(ErrorKind.SHORT_READ)
        else:
            self.round_trip(latency_us)
            if self.uncorrected is not None:
                self.uncorrected.record(uncorrected_us)

    def failed(self, io: ExchangeIO, kind: ErrorKind) -> None:
        """One measured exchange that failed: what it did, and why it ended."""
        self.io(io)
        self.error(kind)

    def io(self, io: ExchangeIO) -> None:
        """The I/O of one measured exchange, whatever its outcome."""
        self.bytes_sent += io.sent
        self.bytes_received += io.received
        self.read_ops += io.reads
        self.write_ops += io.writes

    def round_trip(self, latency_us: int) -> None:
        """One verified echo."""
        self.round_trips += 1
        self.latency.record(latency_us)

    def mismatch(self) -> None:
        """One echo that differed from what was sent (see the module docstring)."""
        self.mismatches += 1

    def error(self, kind: ErrorKind) -> None:
        self.errors[kind] += 1

    def handshake_done(self, latency_us: int, *, resumed: bool = False) -> None:
        self.handshake.record(latency_us)
        self.resumed += resumed

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def report(self, *, clients: int, seconds: float) -> LoadReport:
        return LoadReport(
            clients=clients,
            seconds=seconds,
            **{name: getattr(self, name) for name in COUNTERS},
            errors=self.errors,
            latency=self.latency.encode(),
            handshake=self.handshake.encode(),
            latency_uncorrected=(self.uncorrected or self.latency).encode(),
        )


# -- text -------------------------------------------------------------------------


def _percentile_row(summary: Mapping[str, float]) -> str:
    return (
        f"p50 {summary['p50']:,}  p90 {summary['p90']:,}  p99 {summary['p99']:,}"
        f"  p99.9 {summary['p999']:,}  max {summary['max']:,}"
    )


def format_report(
    report: LoadReport, *, title: str | None = None, open_loop: bool = False, latency: bool = False
) -> str:
    """The table ``loadgen`` prints; an open loop's also shows the uncorrected latency
    (from the actual send), and *latency* (``--latency``) adds the percentile spectra."""
    summary = report.to_json()
    lat, hs = summary["latency_us"], summary["handshake_us"]
    errors = ", ".join(f"{kind} {n:,}" for kind, n in report.errors.items())
    rows = [
        ("clients", f"{report.clients:,}"),
        ("seconds", f"{report.seconds:.2f}"),
        ("round trips", f"{report.round_trips:,}  ({report.round_trips_per_sec:,.1f}/s)"),
        ("throughput", f"{report.mb_per_sec:,.2f} MB/s echoed"),
        (
            "latency (µs)",
            _percentile_row(lat)
            + (f"  mean {lat['mean']:,.1f}  stdev {lat['stdev']:,.1f}" if latency else ""),
        ),
    ]
    if open_loop:
        unc = summary["latency_uncorrected_us"]
        rows.append(
            (
                "uncorrected (µs)",
                _percentile_row(unc)
                + (f"  mean {unc['mean']:,.1f}  stdev {unc['stdev']:,.1f}" if latency else ""),
            )
        )
    rows += [
        (
            "handshake (µs)",
            f"p50 {hs['p50']:,}  p90 {hs['p90']:,}  p99 {hs['p99']:,}  max {hs['max']:,}"
            f"  ({report.handshake_histogram().count:,} handshakes, {report.resumed:,} resumed)",
        ),
        ("read / write ops", f"{report.read_ops:,} / {report.write_ops:,}"),
        ("bytes sent / recv", f"{report.bytes_sent:,} / {report.bytes_received:,}"),
        ("errors", f"{report.error_count:,}  ({errors})"),
        ("mismatches", f"{report.mismatches:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [title] if title else []
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    if latency:
        what = "corrected: from the intended send time" if open_loop else "from the send"
        lines += ["", f"Latency distribution ({what}; ms)", report.latency_histogram().distribution()]
        if open_loop:
            lines += ["Uncorrected latency distribution (from the actual send; ms)"]
            lines += [report.uncorrected_histogram().distribution()]
    return "\n".join(lines).rstrip("\n")


def format_progress(
    *, elapsed: float, total: float | None, round_trips: int, rate: float | None, errors: int, mismatches: int
) -> str:
    """The live line: elapsed of total (measured time: negative while warming up, when
    nothing is counted), the totals, and *rate*, round trips/s over the last interval
    (``None``: too short an interval to say, shown as ``—``)."""
    if elapsed < 0:
        return f"warming up, {-elapsed:.1f}s to go  errors {errors:,}"
    of = f"/{total:g}s" if total is not None else ""
    per_second = f"{rate:,.0f}" if rate is not None else "—"
    line = f"{elapsed:5.1f}s{of}  {round_trips:,} round trips  {per_second}/s  errors {errors:,}"
    if mismatches:
        line += f"  MISMATCHES {mismatches:,}"
    return line
