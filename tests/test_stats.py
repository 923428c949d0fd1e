"""Statistics are sans-io: recorder, frozen report, exact merge, JSON and text, by plain calls."""

from __future__ import annotations

import pickle
import random
from typing import Any

import attrs
import pytest

from trio_tlsecho._load._stats import (
    ERROR_KINDS,
    HIGHEST_US,
    ErrorKind,
    ExchangeIO,
    Histogram,
    LoadReport,
    Recorder,
    format_progress,
    format_report,
    merge,
)

#: The keys of ``loadgen --json`` (a documented interface: README "loadgen").
JSON_KEYS = {
    "clients",
    "seconds",
    "round_trips",
    "round_trips_per_sec",
    "read_ops",
    "write_ops",
    "bytes_sent",
    "bytes_received",
    "mb_per_sec",
    "errors",
    "mismatches",
    "latency_us",
    "latency_uncorrected_us",
    "handshakes",
    "handshakes_resumed",
    "handshake_us",
}


#: The keys of its ``parameters`` object.
PARAMETER_KEYS = {
    "target",
    "server_name",
    "mode",
    "clients",
    "workers",
    "sizes",
    "rate",
    "duration",
    "requests",
    "warmup",
    "ramp",
    "timeout",
    "new_connection_per_request",
    "resume",
    "proxy_protocol",
    "version",
    "start_time",
    "runs",
}
_SPREAD = {"min", "max", "mean", "stdev"}


def assert_documented_keys(data: dict[str, Any], *, document: bool = False) -> None:
    """*data* (a :meth:`LoadReport.to_json`, or with *document* what ``loadgen --json``
    wrote) has every documented key and no other, nested ones included."""
    if document:
        assert set(data) == JSON_KEYS | {"parameters", "histograms"}
        assert set(data["parameters"]) == PARAMETER_KEYS
        assert set(data["histograms"]) == {"latency_us", "latency_uncorrected_us", "handshake_us"}
        data = {key: value for key, value in data.items() if key in JSON_KEYS}
    assert set(data) == JSON_KEYS
    assert set(data["errors"]) == set(ERROR_KINDS)
    assert set(data["latency_us"]) == {"p50", "p90", "p99", "p999"} | _SPREAD
    assert set(data["latency_uncorrected_us"]) == {"p50", "p90", "p99", "p999"} | _SPREAD
    assert set(data["handshake_us"]) == {"p50", "p90", "p99"} | _SPREAD


def test_histogram_percentiles_within_three_significant_digits() -> None:
    h = Histogram()
    for v in range(1, 10_001):
        h.record(v)
    assert h.count == 10_000
    assert h.max == pytest.approx(10_000, rel=1e-3)
    p = h.percentiles([50.0, 99.0, 99.9])
    assert p[50.0] == pytest.approx(5_000, rel=1e-3)
    assert p[99.0] == pytest.approx(9_900, rel=1e-3)
    assert p[99.9] == pytest.approx(9_990, rel=1e-3)


def test_histogram_clamps_out_of_range_values_instead_of_dropping_them() -> None:
    h = Histogram()
    h.record(0)
    h.record(-5)
    h.record(HIGHEST_US * 10)
    assert h.count == 3
    assert h.max == pytest.approx(HIGHEST_US, rel=1e-3)


def test_empty_histogram_reports_zeros() -> None:
    h = Histogram()
    assert h.count == 0
    assert h.max == 0
    assert h.percentiles([50.0, 99.9]) == {50.0: 0, 99.9: 0}


def test_histogram_encoding_round_trips() -> None:
    h = Histogram()
    for v in (3, 300, 30_000):
        h.record(v)
    back = Histogram.decode(h.encode())
    assert back.count == 3
    assert back.percentiles([50.0]) == h.percentiles([50.0])


def test_recorder_counts_and_report() -> None:
    rec = Recorder()
    rec.exchange(ExchangeIO(10, sent=10, received=10, reads=2, writes=1), 150)
    rec.exchange(ExchangeIO(5, sent=5, received=5, reads=1, writes=1, mismatched=True), 150)
    rec.error(ErrorKind.RESET)
    rec.handshake_done(2_000)
    report = rec.report(clients=3, seconds=2.0)
    assert (report.round_trips, report.read_ops, report.write_ops) == (1, 3, 2)
    assert (report.bytes_sent, report.bytes_received) == (15, 15)
    assert report.mismatches == 1
    assert report.errors["reset"] == 1
    assert report.error_count == 1
    assert report.round_trips_per_sec == 0.5
    assert report.mb_per_sec == pytest.approx(15 / 1e6 / 2.0)
    assert report.latency_histogram().count == 1
    assert report.handshake_histogram().count == 1


def test_an_exchange_is_a_round_trip_a_mismatch_a_short_read_or_a_failure() -> None:
    rec = Recorder()
    rec.exchange(ExchangeIO(4, sent=4, received=4, reads=1, writes=1), 10)
    rec.exchange(ExchangeIO(4, sent=4, received=4, reads=2, writes=1, mismatched=True), 20)
    # A differing byte, then the close: a mismatch, not a short read.
    rec.exchange(ExchangeIO(4, sent=4, received=2, reads=1, writes=1, mismatched=True), 30)
    rec.exchange(ExchangeIO(4, sent=4, received=3, reads=1, writes=1), 40)
    rec.failed(ExchangeIO(4, sent=4, writes=1), ErrorKind.TIMEOUT)
    report = rec.report(clients=1, seconds=1.0)
    assert (report.round_trips, report.mismatches) == (1, 2)
    assert report.latency_histogram().percentiles([100.0]) == {100.0: 10}
    assert report.errors == dict.fromkeys(ERROR_KINDS, 0) | {"short_read": 1, "timeout": 1}
    # Every measured exchange's I/O counts, whatever its outcome.
    assert (report.bytes_sent, report.bytes_received, report.write_ops, report.read_ops) == (20, 13, 5, 5)


def test_report_is_frozen_and_lists_every_error_kind() -> None:
    report = Recorder().report(clients=1, seconds=1.0)
    assert set(report.errors) == set(ERROR_KINDS)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        report.round_trips = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        report.errors["reset"] = 1  # type: ignore[index]


def test_report_rejects_unknown_error_kinds() -> None:
    with pytest.raises(ValueError, match="unknown error kinds"):
        LoadReport(clients=1, seconds=1.0, errors={"gremlins": 1})


def test_merge_is_exact() -> None:
    # Two workers' reports merge into exactly what one recorder of everything holds.
    rng = random.Random(7)
    values = [rng.randint(1, 5_000_000) for _ in range(5_000)]
    whole, parts = Recorder(), [Recorder(), Recorder()]
    for i, v in enumerate(values):
        for rec in (whole, parts[i % 2]):
            rec.exchange(ExchangeIO(v % 100, sent=v % 100, received=v % 100, reads=1, writes=1), v)
            if v % 7 == 0:
                rec.error(ErrorKind.TIMEOUT)
    for rec in (whole, parts[0]):
        rec.handshake_done(1234)
    merged = merge([parts[0].report(clients=2, seconds=1.5), parts[1].report(clients=3, seconds=2.0)])
    expected = whole.report(clients=5, seconds=2.0)
    assert merged.to_json() == expected.to_json()
    assert merged.latency_histogram().count == len(values)


def test_merge_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="nothing to merge"):
        merge([])


def test_json_has_exactly_the_documented_keys() -> None:
    rec = Recorder()
    rec.round_trip(100)
    data = rec.report(clients=1, seconds=1.0).to_json()
    assert_documented_keys(data)
    assert data["latency_us"]["max"] == pytest.approx(100, rel=1e-3)


def test_a_report_survives_pickling_histograms_included() -> None:
    # How a worker hands its report over (see _workers).
    rec = Recorder()
    rec.round_trip(42)
    rec.handshake_done(4200)
    rec.error(ErrorKind.SHORT_READ)
    report = rec.report(clients=2, seconds=0.5)
    back = pickle.loads(pickle.dumps(report))
    assert back == report
    assert back.latency_histogram().count == back.handshake_histogram().count == 1
    with pytest.raises(TypeError):
        back.errors["reset"] = 1  # still read-only


def test_zero_seconds_gives_zero_rates_not_division_errors() -> None:
    report = LoadReport(clients=1, seconds=0.0, round_trips=3, bytes_received=9)
    assert report.round_trips_per_sec == 0.0
    assert report.mb_per_sec == 0.0


def test_format_report_shows_rates_percentiles_and_errors() -> None:
    rec = Recorder()
    for v in (100, 200, 300):
        rec.round_trip(v)
    rec.error(ErrorKind.REFUSED)
    text = format_report(rec.report(clients=4, seconds=1.0), title="a title")
    assert text.splitlines()[0] == "a title"
    assert "3.0/s" in text
    assert "p50 200" in text
    assert "refused 1" in text
    assert "uncorrected" not in text
    assert "Percentile" not in text
    rec.handshake_done(5000)
    text = format_report(rec.report(clients=4, seconds=1.0))
    assert "handshake (µs)     p50 5,003  p90 5,003  p99 5,003  max 5,003  (1 handshakes" in text


def test_open_loop_records_and_reports_uncorrected_latency_beside_corrected() -> None:
    rec = Recorder(uncorrected=Histogram())
    # Sent 900 µs late (queued behind a slow one): 1000 µs from the intended time.
    rec.exchange(ExchangeIO(5, sent=5, received=5), 1000, 100)
    report = rec.report(clients=1, seconds=1.0)
    assert (report.latency_histogram().max, report.uncorrected_histogram().max) == (1000, 100)
    text = format_report(report, open_loop=True)
    assert "latency (µs)       p50 1,000" in text
    assert "uncorrected (µs)   p50 100" in text
    # A closed loop's uncorrected latency is its latency: one measurement.
    closed = Recorder()
    closed.exchange(ExchangeIO(5, sent=5, received=5), 1000, 0)
    assert closed.report(clients=1, seconds=1.0).uncorrected_histogram().max == 1000


def test_latency_adds_the_percentile_spectrum_mean_and_stdev() -> None:
    rec = Recorder()
    for v in (100, 200, 300, 400):
        rec.round_trip(v)
    report = rec.report(clients=1, seconds=1.0)
    text = format_report(report, latency=True)
    assert "mean 250.0  stdev 111.8" in text
    spectrum = text.split("Latency distribution (from the send; ms)\n")[1]
    assert spectrum.splitlines()[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    # The .hgrm footer, in ms like the values (hdrh alone leaves the stdev in µs).
    assert "#[Mean    =        0.250, StdDeviation   =        0.112]" in spectrum
    assert "#[Max     =        0.400, TotalCount     =        4.000]" in spectrum
    with_open_loop = format_report(report, latency=True, open_loop=True)
    assert "Uncorrected latency distribution (from the actual send; ms)" in with_open_loop


def test_format_progress() -> None:
    line = format_progress(elapsed=2.0, total=10.0, round_trips=1000, rate=500.0, errors=3, mismatches=0)
    assert line == "  2.0s/10s  1,000 round trips  500/s  errors 3"
    assert "MISMATCHES 2" in format_progress(
        elapsed=1.0, total=None, round_trips=1, rate=1.0, errors=0, mismatches=2
    )
    # During the warm-up nothing is counted yet: no rate to show.
    assert format_progress(elapsed=-0.5, total=5.0, round_trips=0, rate=0.0, errors=1, mismatches=0) == (
        "warming up, 0.5s to go  errors 1"
    )


def test_every_counter_survives_pickling_and_adds_up_in_a_merge() -> None:
    from trio_tlsecho._load._stats import COUNTERS

    rec = Recorder()
    for i, name in enumerate(COUNTERS, start=1):
        setattr(rec, name, i)
    report = rec.report(clients=1, seconds=1.0)
    assert pickle.loads(pickle.dumps(report)) == report
    merged = merge([report, report])
    assert [getattr(merged, name) for name in COUNTERS] == [2 * i for i in range(1, len(COUNTERS) + 1)]


def test_mean_and_stdev_are_hdrhistograms_own() -> None:
    rng = random.Random(7)
    hist = Histogram()
    for _ in range(5000):
        hist.record(int(rng.lognormvariate(7, 1)))
    # As the HdrHistogram library computes them (each value at the middle of its bucket),
    # without its slow walk over every bucket.
    assert hist.mean == pytest.approx(hist.hdr.get_mean_value(), rel=1e-12)
    assert hist.stdev == pytest.approx(hist.hdr.get_stddev(), rel=1e-9)
    assert (Histogram().mean, Histogram().stdev) == (0.0, 0.0)


def test_values_counted_before_recording_are_all_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_tlsecho._load import _stats

    monkeypatch.setattr(_stats, "_PENDING_MAX", 3)  # a flush while recording, too
    hist = Histogram()
    for v in (5, 5, 7, 0, HIGHEST_US * 2, 9, 5):
        hist.record(v)
    direct = Histogram()
    for v in (5, 5, 7, 1, HIGHEST_US, 9, 5):  # as clamped
        direct.hdr.record_value(v)
    assert hist.count == 7
    assert hist.encode() == direct.encode()
    assert Histogram.decode(hist.encode()).percentiles([50.0]) == {50.0: 5}
