"""A run's result as a document, sans-io: what shaped it (``parameters``), what it
measured, and its histograms; and the exact merge of several such documents.

``loadgen --json`` writes one :class:`RunResult`; ``report`` reads several (one per
load machine, see README "Runs across machines") and merges them into the result
one loader with all their clients would have had: counters add, histograms add
(HdrHistogram histograms are exact under addition), clients and rates add, and the
window is the longest of theirs, as with worker processes (:func:`._stats.merge`).

Runs merge only if they measured the same thing: :data:`MUST_MATCH` are the
parameters that change what a number means (the target, the loop, the message
sizes, the window...).  Clients, workers, the rate (each loader's share of it), the
start time and the version may differ.  They must also have run together: the same
run given twice (same parameters, same start time) is refused, and so are runs whose
measured windows (:func:`window`) do not overlap, whose clients and rates would add
as if they had loaded the server at once.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._exceptions import ConfigError
from ._config import LoadConfig
from ._stats import COUNTERS, ERROR_KINDS, LoadReport, merge

#: Parameters that must be equal for runs to merge (see the module docstring).
MUST_MATCH: tuple[str, ...] = (
    "target",
    "mode",
    "sizes",
    "duration",
    "requests",
    "warmup",
    "new_connection_per_request",
    "timeout",
    "resume",
    "proxy_protocol",
)
#: Parameters that add up across merged runs.
ADDED: tuple[str, ...] = ("clients", "workers", "rate", "runs")


def rfc3339(when: datetime.datetime) -> str:
    """*when* as RFC 3339 in UTC, to the millisecond: ``2026-12-03T11:45:00.123Z``."""
    return when.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parameters(config: LoadConfig, *, version: str, started: datetime.datetime) -> dict[str, Any]:
    """Everything that shaped a run (the ``parameters`` object of ``--json``)."""
    return {
        "target": str(config.address),
        "server_name": config.client.server_hostname,
        "mode": "open" if config.rate is not None else "closed",
        "clients": config.clients,
        "workers": config.workers,
        "sizes": {"low": config.sizes.low, "high": config.sizes.high},
        "rate": config.rate,
        "duration": config.duration,
        "requests": config.requests,
        "warmup": config.warmup,
        "ramp": config.ramp,
        "timeout": config.timeout,
        "new_connection_per_request": config.new_connection_per_request,
        "resume": config.resume,
        "proxy_protocol": config.proxy_protocol,
        "version": version,
        "start_time": rfc3339(started),
        "runs": 1,
    }


@attrs.frozen
class RunResult:
    """One run (or several merged): its parameters and its :class:`LoadReport`."""

    parameters: Mapping[str, Any]
    report: LoadReport

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: ``parameters``, the measured keys of
        :meth:`LoadReport.to_json`, and ``histograms`` (README "loadgen")."""
        return {
            "parameters": dict(self.parameters),
            **self.report.to_json(),
            "histograms": self.report.histograms(),
        }

    @classmethod
    def from_json(cls, data: object, *, source: str) -> RunResult:
        """Read back what :meth:`to_json` wrote; *source* names it in a ConfigError."""
        try:
            assert isinstance(data, dict)
            hists = data["histograms"]
            report = LoadReport(
                clients=int(data["clients"]),
                seconds=float(data["seconds"]),
                **{name: int(data[_JSON_NAME.get(name, name)]) for name in COUNTERS},
                errors={kind: int(data["errors"][kind]) for kind in ERROR_KINDS},
                latency=str(hists["latency_us"]),
                handshake=str(hists["handshake_us"]),
                latency_uncorrected=str(hists["latency_uncorrected_us"]),
            )
            report.latency_histogram()  # a damaged encoding is said here, not later
            report.uncorrected_histogram()
            report.handshake_histogram()
            params = data["parameters"]
            assert isinstance(params, dict)
        except Exception as exc:  # anything malformed in a file a user gave is one line
            raise ConfigError(
                f"{source} is not a 'loadgen --json' result ({type(exc).__name__}: {exc})"
            ) from None
        return cls(params, report)


#: Counters whose ``--json`` key is not their name.
_JSON_NAME = {"resumed": "handshakes_resumed"}


def merge_results(results: Sequence[RunResult], *, sources: Sequence[str]) -> RunResult:
    """One result from several runs side by side, exactly; ConfigError if they differ
    in what matters (:data:`MUST_MATCH`)."""
    if not results:
        raise ConfigError("no results to merge")
    first = results[0].parameters
    for result, source in zip(results[1:], sources[1:], strict=True):
        for key in MUST_MATCH:
            if result.parameters.get(key) != first.get(key):
                raise ConfigError(
                    f"cannot merge {source} with {sources[0]}: {key} differs"
                    f" ({result.parameters.get(key)!r} vs {first.get(key)!r})"
                )
    _check_side_by_side(results, sources)
    merged = dict(first)
    for key in ADDED:
        values = [r.parameters.get(key) for r in results]
        merged[key] = None if any(v is None for v in values) else sum(v for v in values if v is not None)
    merged["start_time"] = min(str(r.parameters.get("start_time", "")) for r in results)
    versions = sorted({str(r.parameters.get("version")) for r in results})
    merged["version"] = versions[0] if len(versions) == 1 else ", ".join(versions)
    return RunResult(merged, merge([r.report for r in results]))


def _check_side_by_side(results: Sequence[RunResult], sources: Sequence[str]) -> None:
    """Refuse the same run given twice, and runs that did not run together: clients and
    rates add only for runs whose measured windows overlap (``loadgen --start-at``)."""
    for j, later in enumerate(results):
        for i, earlier in enumerate(results[:j]):
            if later.parameters == earlier.parameters:
                raise ConfigError(
                    f"cannot merge {sources[j]} with {sources[i]}: the same run"
                    f" (same parameters, started {later.parameters.get('start_time')})"
                )
            a, b = window(earlier), window(later)
            if a is not None and b is not None and _apart(a, b):
                raise ConfigError(
                    f"cannot merge {sources[j]} with {sources[i]}: their measured windows do not"
                    f" overlap ({_span(b)} vs {_span(a)}); merged rates add runs that ran together"
                    " (start them with loadgen --start-at)"
                )


def window(result: RunResult) -> tuple[float, float] | None:
    """When *result*'s measured window ran (Unix seconds), from its start time, or ``None``
    if it has none.  A run with a duration ends ``warmup + duration`` after its start and
    measured its last ``seconds``; one of a number of requests measured ``seconds`` from
    the end of its warm-up (its connecting, not recorded, is taken as nothing)."""
    params = result.parameters
    try:
        start = datetime.datetime.fromisoformat(str(params["start_time"])).timestamp()
        warmup = float(params.get("warmup") or 0.0)
    except (KeyError, TypeError, ValueError):
        return None
    seconds = result.report.seconds
    duration = params.get("duration")
    end = start + warmup + (float(duration) if isinstance(duration, int | float) else seconds)
    return end - seconds, end


def _apart(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two windows do not overlap (one that measured nothing overlaps any)."""
    return a[0] < a[1] and b[0] < b[1] and (b[0] >= a[1] or a[0] >= b[1])


def _span(window: tuple[float, float]) -> str:
    begin, end = (datetime.datetime.fromtimestamp(t, datetime.UTC) for t in window)
    return f"{rfc3339(begin)} to {rfc3339(end)}"
