"""``loadgen``'s command line as a user meets it: wrk2's flags, progress, Ctrl-C,
``--start-at``, ``--latency``/``--hgrm``, and ``report``, which merges runs of several
machines."""

from __future__ import annotations

import datetime
import io
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import attrs
import pytest
import trio

from trio_tlsecho import Address, ClientConfig, ConfigError, Connection, ServerConfig, TLSFiles
from trio_tlsecho._cli import build_parser, main
from trio_tlsecho._cli._loadgen import ProgressDisplay, config_from_args, warnings
from trio_tlsecho._load import LoadConfig, Progress, RunResult, parameters, run_load
from trio_tlsecho._load._stats import ErrorKind, ExchangeIO, Recorder

from .conftest import start_server
from .processes import PY, ServeProcess
from .processes import run_cli as run_program_cli
from .test_loadgen import parse_cli, run_cli
from .test_stats import JSON_KEYS, PARAMETER_KEYS

# -- flags --------------------------------------------------------------------------


def test_wrk2_short_flags_and_duration_units(pki: Path) -> None:
    args = ["--certs", str(pki), "-c", "8", "-d", "500ms", "-R", "100", "--warmup", "2m", "--ramp", "1.5s",
            "--timeout", "250ms"]  # fmt: skip
    config = config_from_args(parse_cli(args))
    assert (config.clients, config.duration, config.rate) == (8, 0.5, 100.0)
    assert (config.warmup, config.ramp, config.timeout) == (120.0, 1.5, 0.25)
    # A bare number is seconds, as before.
    assert config_from_args(parse_cli(["--certs", str(pki), "--duration", "30"])).duration == 30.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-d", "5x"],
            "argument -d/--duration: '5x' is not a duration (seconds, or with a unit: 500ms, 30s, 2m, 1h)",
        ),
        (["-d", "0s"], "argument -d/--duration: must be a positive number of seconds"),
        (
            ["--warmup", "5 parsecs"],
            "argument --warmup: '5 parsecs' is not a duration (seconds, or with a unit:",
        ),
        (["--ramp", "1d"], "argument --ramp: '1d' is not a duration (seconds, or with a unit:"),
        (["--timeout", "soon"], "argument --timeout: 'soon' is not a duration (seconds, or with a unit:"),
        (["--start-at", "tomorrow"], "argument --start-at: 'tomorrow' is not a time"),
    ],
)
def test_bad_flags_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_cli(argv)
    assert info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"trio-tlsecho: error: {message}")
    assert line.endswith("(see trio-tlsecho loadgen --help)")


def test_start_at_in_the_past_is_one_error(pki: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--start-at is in the past \(2020-01-01T00:00:00\+00:00\)$"):
        config_from_args(parse_cli(["--certs", str(pki), "--start-at", "2020-01-01T00:00:00Z"]))


async def test_start_at_starts_at_that_wall_clock_time(
    server: Address, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start_at = time.time() + 1.0
    out = tmp_path / "run.json"
    argv = ["--connect", str(server), "--certs", str(pki), "-c", "1", "--requests", "5"]
    assert (
        await trio.to_thread.run_sync(run_cli, [*argv, "--start-at", f"{start_at}", "--json", str(out)]) == 0
    )
    started = datetime.datetime.fromisoformat(json.loads(out.read_text())["parameters"]["start_time"])
    # Not before the time asked for (to the millisecond the start time is written in).
    assert started.timestamp() >= start_at - 0.001
    when = datetime.datetime.fromtimestamp(start_at, datetime.UTC).isoformat(timespec="seconds")
    assert f"trio-tlsecho loadgen: starting at {when}\n" in capsys.readouterr().err


def test_a_refused_target_is_one_line_and_exit_1(pki: Path, refusing_port: int) -> None:
    done = run_program_cli(
        "loadgen", "--connect", f"127.0.0.1:{refusing_port}", "--certs", str(pki), "-c", "2"
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"trio-tlsecho: error: cannot connect to 127.0.0.1:{refusing_port}:"
        " connection refused (is the server running?)\n"
    )
    assert done.stdout == ""  # no table of zeros


@pytest.mark.parametrize(
    ("mistake", "reason", "workers"),
    [
        ("other CA", "certificate verify failed: not issued by a trusted CA", "1"),
        ("server name", "certificate verify failed: hostname mismatch", "1"),
        ("other CA", "certificate verify failed: not issued by a trusted CA", "2"),
    ],
)
def test_a_tls_mistake_is_one_line_and_exit_1_after_a_few_handshakes(
    tmp_path: Path, pki: Path, other_pki: Path, mistake: str, reason: str, workers: str
) -> None:
    wrong = (
        ["--certs", str(other_pki)]
        if mistake == "other CA"
        else ["--certs", str(pki), "--server-name", "wrong.example"]
    )
    with ServeProcess("--certs", str(pki), "--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        done = run_program_cli(
            "loadgen", "--connect", str(server.address), *wrong, "-c", "4", "-d", "30s", "--workers", workers
        )
        _status, log = server.stop()
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"trio-tlsecho: error: TLS handshake with {server.address} failed: {reason}")
    assert done.stdout == ""  # no table of zeros
    # A handshake or so per client, not thousands of them flooding the server's log.
    assert 1 <= log.count("handshake failed") <= 8


# -- progress -----------------------------------------------------------------------


def test_progress_in_a_log_is_a_plain_line_every_five_seconds() -> None:
    out = io.StringIO()
    display = ProgressDisplay(total=30.0, stream=out, tty=False)
    display(Progress(-1.0, 0, 0, 0))
    for second in range(1, 9):
        display(Progress(float(second), 1000 * second, 0, 0))
    # The 5th report (4 s into the window after a warm-up second), nothing else; no \r.
    assert out.getvalue() == "trio-tlsecho loadgen:   4.0s/30s  4,000 round trips  1,000/s  errors 0\n"


def test_progress_on_a_terminal_is_one_line_rewritten_with_the_last_seconds_rate() -> None:
    out = io.StringIO()
    display = ProgressDisplay(total=None, stream=out, tty=True)
    display(Progress(-0.5, 0, 2, 0))
    display(Progress(0.5, 100, 2, 0))  # half a second of window: 200/s
    display(Progress(1.5, 1100, 3, 0))  # 1000 in the last second, not 1100 / 1.5
    display.finish()
    parts = out.getvalue().split("\r")
    assert parts[1].rstrip() == "warming up, 0.5s to go  errors 2"
    assert parts[2].rstrip() == "  0.5s  100 round trips  200/s  errors 2"
    assert parts[3].rstrip() == "  1.5s  1,100 round trips  1,000/s  errors 3"
    assert parts[-1] == ""  # the line is cleared for the report


def test_progress_shows_no_rate_until_half_a_second_of_the_window_has_passed() -> None:
    out = io.StringIO()
    display = ProgressDisplay(total=3.0, stream=out, tty=True)
    display(Progress(-0.998, 0, 0, 0))
    display(Progress(0.002, 7, 0, 0))  # 2 ms into the window: not 3,500/s
    display(Progress(0.4, 300, 0, 0))  # still too short to say
    display(Progress(1.002, 1000, 0, 0))  # the rate since the window opened
    display(Progress(2.002, 3000, 0, 0))
    parts = [part.rstrip() for part in out.getvalue().split("\r")]
    assert parts[2:] == [
        "  0.0s/3s  7 round trips  —/s  errors 0",
        "  0.4s/3s  300 round trips  —/s  errors 0",
        "  1.0s/3s  1,000 round trips  998/s  errors 0",
        "  2.0s/3s  3,000 round trips  2,000/s  errors 0",
    ]


async def test_resume_warns_when_the_server_issued_no_ticket(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    [address] = await start_server(nursery, server_config, session_tickets=False)
    config = LoadConfig(
        address=address, client=client_config, clients=1, requests=3, new_connection_per_request=True
    )
    report = await run_load(config)
    assert warnings(config, report) == []  # not asked to resume
    resuming = attrs.evolve(config, resume=True)
    [warning] = warnings(resuming, await run_load(resuming))
    assert warning.startswith("--resume: no handshake resumed a session; the server issued no session ticket")


# -- Ctrl-C ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
async def test_ctrl_c_prints_the_partial_report(
    nursery: trio.Nursery, server_config: ServerConfig, pki: Path, workers: int
) -> None:
    echoing = trio.Event()
    echoes = 0

    async def noting_echo(conn: Connection) -> None:
        nonlocal echoes
        while data := await conn.stream.receive_some(65536):
            echoes += 1
            if echoes == 100:
                echoing.set()
            await conn.stream.send_all(data)

    [address] = await start_server(nursery, server_config, handler=noting_echo)
    command = [*PY, "loadgen", "--connect", str(address), "--certs", str(pki), "-c", "2"]
    proc = await trio.lowlevel.open_process(
        [*command, "-d", "60", "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        with trio.fail_after(60):
            await echoing.wait()
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            out, err = await _read_all(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert out.startswith(
        f"loadgen {address}: 2 clients, 1-100 bytes, closed loop, persistent connections, 60s"
        + (f", {workers} workers" if workers > 1 else "")
        + " (interrupted: partial result)\n"
    )
    [rate] = re.findall(r"^round trips +([\d,]+) ", out, re.MULTILINE)
    assert int(rate.replace(",", "")) > 0
    # The report is all: no error line (an interrupted run is no failure to explain),
    # no traceback, and the shell's status for Ctrl-C.
    assert "error" not in err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    assert proc.returncode == 130


async def _read_all(proc: trio.Process) -> tuple[str, str]:
    assert proc.stdout is not None
    assert proc.stderr is not None
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    async def drain(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
        while chunk := await stream.receive_some():
            into.append(bytes(chunk))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, proc.stdout, chunks["out"])
        nursery.start_soon(drain, proc.stderr, chunks["err"])
    await proc.wait()
    return b"".join(chunks["out"]).decode(), b"".join(chunks["err"]).decode()


# -- --latency, --hgrm, report ------------------------------------------------------


async def test_latency_prints_the_spectrum_and_hgrm_writes_it(
    server: Address, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hgrm = tmp_path / "run.hgrm"
    argv = ["--connect", str(server), "--certs", str(pki), "-c", "2", "--requests", "50", "-R", "500"]
    assert await trio.to_thread.run_sync(run_cli, [*argv, "--latency", "--hgrm", str(hgrm), "-q"]) == 0
    out = capsys.readouterr().out
    assert "Latency distribution (corrected: from the intended send time; ms)" in out
    assert "Uncorrected latency distribution (from the actual send; ms)" in out
    assert "uncorrected (µs)" in out
    written = hgrm.read_text()
    assert written.splitlines()[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert "TotalCount     =       50.000]" in written


def _result(sizes: str = "1-100", *, latencies: tuple[int, ...], clients: int = 2) -> RunResult:
    config = LoadConfig(
        address=Address("10.0.0.1", 4433),
        client=ClientConfig(tls=TLSFiles.from_dir(Path("certs"), "client")),
        clients=clients,
        duration=10.0,
        sizes=sizes,
        rate=100.0,
    )
    rec = Recorder()
    for v in latencies:
        rec.exchange(ExchangeIO(10, sent=10, received=10, reads=1, writes=1), v)
    rec.handshake_done(3000)
    rec.error(ErrorKind.RESET)
    started = datetime.datetime(2026, 12, 3, 12, 0, len(latencies), tzinfo=datetime.UTC)
    return RunResult(
        parameters(config, version="0.1.0", started=started), rec.report(clients=clients, seconds=10.0)
    )


def _write(path: Path, result: RunResult) -> str:
    path.write_text(json.dumps(result.to_json()))
    return str(path)


def test_report_merges_runs_of_several_machines_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _write(tmp_path / "a.json", _result(latencies=(100, 200), clients=2))
    b = _write(tmp_path / "b.json", _result(latencies=(300, 400, 500), clients=3))
    merged = tmp_path / "merged.json"
    assert main(["report", a, b, "--json", str(merged)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "loadgen 10.0.0.1:4433: 5 clients, 1-100 bytes, open loop at 200 round trips/s,"
        " persistent connections, 10s, 2 runs merged\n"
    )
    assert "round trips        5  (0.5/s)" in out
    assert "p50 300" in out  # of all five latencies, not an average of the two runs' medians
    data = json.loads(merged.read_text())
    assert (data["round_trips"], data["clients"], data["handshakes"]) == (5, 5, 2)
    assert data["errors"]["reset"] == 2
    assert data["parameters"]["start_time"] == "2026-12-03T12:00:02.000Z"  # the earlier one
    assert (data["parameters"]["runs"], data["parameters"]["rate"]) == (2, 200.0)
    # A merged result merges again, as one.
    c = _write(tmp_path / "c.json", _result(latencies=(600,), clients=1))
    again = tmp_path / "again.json"
    assert main(["report", str(merged), c, "--json", str(again)]) == 0
    assert json.loads(again.read_text())["round_trips"] == 6


def test_report_refuses_the_same_run_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path / "a.json", _result(latencies=(100, 200)))
    copy = _write(tmp_path / "copy.json", _result(latencies=(100, 200)))
    for twice in ([a, a], [a, copy]):
        assert main(["report", *twice]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line == (
            f"trio-tlsecho: error: cannot merge {twice[1]} with {a}: the same run"
            " (same parameters, started 2026-12-03T12:00:02.000Z)"
        )


def test_report_refuses_runs_made_one_after_the_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _result(latencies=(100,))
    later = dict(first.parameters, start_time="2026-12-03T12:00:11.000Z")  # 10 s run, began at :01
    a = _write(tmp_path / "a.json", first)
    b = _write(tmp_path / "b.json", RunResult(later, first.report))
    assert main(["report", a, b]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"trio-tlsecho: error: cannot merge {b} with {a}: their measured windows do not overlap"
        " (2026-12-03T12:00:11.000Z to 2026-12-03T12:00:21.000Z vs 2026-12-03T12:00:01.000Z to"
        " 2026-12-03T12:00:11.000Z); merged rates add runs that ran together (start them with"
        " loadgen --start-at)"
    )
    # A second sooner, they overlap by a second: merged.
    overlapping = dict(later, start_time="2026-12-03T12:00:10.000Z")
    assert main(["report", a, _write(tmp_path / "c.json", RunResult(overlapping, first.report))]) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"cannot merge b\.json with a\.json: sizes differs"),
        ("{", r"b\.json is not JSON"),
        ('{"clients": 1}', r"b\.json is not a 'loadgen --json' result"),
    ],
)
def test_report_refuses_what_it_cannot_merge_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(Path("a.json"), _result(latencies=(100,)))
    if content is None:
        _write(Path("b.json"), _result("64k", latencies=(100,)))
    else:
        Path("b.json").write_text(content)
    assert main(["report", "a.json", "b.json"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("trio-tlsecho: error: ")
    assert re.search(message, line)


def test_readme_lists_every_json_key() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### loadgen") : readme.index("#### Runs across machines")]
    documented = set(re.findall(r"`(\w+)`", section))
    nested = {"low", "high", "p50", "p90", "p99", "p999", "min", "max", "mean", "stdev"}
    missing = (JSON_KEYS | PARAMETER_KEYS | nested | {"parameters", "histograms"}) - documented
    assert not missing


def test_the_clients_timeout_takes_units_too() -> None:
    assert build_parser().parse_args(["client", "--timeout", "1.5s"]).timeout == 1.5
    assert build_parser().parse_args(["client", "--timeout", "2"]).timeout == 2.0
