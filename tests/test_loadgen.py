"""The load generator: sans-io pieces by plain calls, behaviour against real loopback servers."""

from __future__ import annotations

import argparse
import datetime
import errno
import io
import itertools
import json
import math
import re
import socket
import ssl
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped, unused-ignore]

import trio_tlsecho
from trio_tlsecho import (
    Address,
    ClientConfig,
    ClientError,
    ConfigError,
    Connection,
    Handler,
    ServerConfig,
    TLSFiles,
    echo,
)
from trio_tlsecho._cli import build_parser
from trio_tlsecho._cli._loadgen import config_from_args
from trio_tlsecho._cli._results import describe, verdict
from trio_tlsecho._load import _client as load_client
from trio_tlsecho._load import _workers as load_workers
from trio_tlsecho._load import parameters, run_load
from trio_tlsecho._load._client import Share
from trio_tlsecho._load._config import (
    LoadConfig,
    OpenLoopSchedule,
    Progress,
    SizeRange,
    classify_error,
    split,
)
from trio_tlsecho._load._stats import ERROR_KINDS, ErrorKind, ExchangeIO, LoadReport
from trio_tlsecho._load._transport import ClientConnection, Target
from trio_tlsecho._load._workers import decode, encode, worker_main

from .conftest import start_server
from .test_stats import assert_documented_keys

# -- handlers the servers under test run ------------------------------------------------

#: Per-echo delay of the slow server.  Long next to a loopback round trip (~0.1 ms), so
#: queueing behind it dominates whatever else the machine is doing.
SLOW_DELAY = 0.020


async def corrupting_echo(conn: Connection) -> None:
    """Echo with the first byte of every chunk flipped: the same length, different bytes."""
    while data := await conn.stream.receive_some(65536):
        await conn.stream.send_all(bytes([data[0] ^ 0xFF]) + data[1:])


async def slow_echo(conn: Connection) -> None:
    """Echo, but serve at most one message per SLOW_DELAY (simulated work, not synchronisation)."""
    while data := await conn.stream.receive_some(65536):
        await trio.sleep(SLOW_DELAY)
        await conn.stream.send_all(data)


async def over_long_echo(conn: Connection) -> None:
    """Echo every chunk with one byte too many, in the same TLS record."""
    while data := await conn.stream.receive_some(65536):
        await conn.stream.send_all(data + b"!")


async def echo_then_more(conn: Connection) -> None:
    """Echo every chunk, then send one byte more in a record of its own."""
    while data := await conn.stream.receive_some(65536):
        await conn.stream.send_all(data)
        await conn.stream.send_all(b"!")


async def silent(conn: Connection) -> None:
    """Read one message and never answer."""
    await conn.stream.receive_some(65536)
    await trio.sleep_forever()


async def hang_up(conn: Connection) -> None:
    """Read one message and close without answering."""
    await conn.stream.receive_some(65536)


def load_config(address: Address, client_config: ClientConfig, **kw: object) -> LoadConfig:
    return LoadConfig(address=address, client=client_config, **kw)  # type: ignore[arg-type]


def parse_cli(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["loadgen", *argv])


def run_cli(argv: list[str]) -> int:
    """``loadgen`` as the CLI runs it (its own ``trio.run``: call it in a thread)."""
    args = parse_cli(argv)
    status: int = args.func(args)
    return status


# -- sans-io ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("1-100", 1, 100), ("65536", 65536, 65536), ("256k", 262144, 262144), ("1k-1m", 1024, 1048576)],
)
def test_size_range_parses(text: str, low: int, high: int) -> None:
    assert SizeRange.parse(text) == SizeRange(low, high)


@pytest.mark.parametrize("text", ["0", "100-1", "x", "1-", "-5", "99m"])
def test_size_range_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        SizeRange.parse(text)


def test_load_config_defaults_to_ten_seconds(client_config: ClientConfig) -> None:
    config = load_config(Address("127.0.0.1", 1), client_config)
    assert (config.duration, config.requests, config.clients) == (10.0, None, 64)
    assert load_config(Address("127.0.0.1", 1), client_config, requests=5).duration is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clients": 0}, "clients"),
        ({"requests": 5, "duration": 1.0}, "not both"),
        ({"requests": 0}, "requests"),
        ({"duration": math.nan}, "duration"),
        ({"rate": -1.0}, "rate"),
        ({"warmup": -1.0}, "warmup"),
        ({"timeout": 0}, "timeout"),
        ({"clients": 2, "workers": 3}, "workers"),
        ({"sizes": "0-5"}, "sizes"),
    ],
)
def test_load_config_rejects(client_config: ClientConfig, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Address("127.0.0.1", 1), client_config, **changes)


@pytest.mark.parametrize(
    ("family", "sockaddr"),
    [(socket.AF_INET, ("127.0.0.1", 9)), (socket.AF_INET6, ("::1", 9, 0, 0))],
)
def test_a_share_survives_the_trip_to_a_worker(
    client_config: ClientConfig, family: socket.AddressFamily, sockaddr: tuple[object, ...]
) -> None:
    client = attrs.evolve(client_config, server_hostname="server.test", handshake_timeout=3.0)
    config = load_config(
        Address("::1", 9),
        client,
        clients=6,
        requests=7,
        sizes="3-9",
        rate=12.5,
        new_connection_per_request=True,
        warmup=1.0,
        ramp=0.5,
        workers=2,
        timeout=4.0,
        resume=True,
        proxy_protocol=2,
    )
    # Every field differs from its default, so one that the trip lost would show.
    defaults = load_config(Address("127.0.0.1", 1), client_config)
    assert all(getattr(config, f.name) != getattr(defaults, f.name) for f in attrs.fields(LoadConfig))
    share = Share(config, Target(config.address, family, sockaddr, "server.test", 2), 3, 3, 4)
    line = encode(share)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    back = decode(line)
    assert back == share
    assert isinstance(back, Share)
    assert back.config.client.tls == client_config.tls
    assert all(isinstance(path, Path) for path in attrs.astuple(back.config.client.tls))
    assert (type(back.config.sizes), type(back.config.address)) == (SizeRange, Address)


def test_shares_divide_the_clients_and_requests(client_config: ClientConfig) -> None:
    config = load_config(Address("127.0.0.1", 9), client_config, clients=10, requests=7)
    target = Target(config.address, socket.AF_INET, ("127.0.0.1", 9), "127.0.0.1")
    shares = Share.divide(config, target, 3)
    assert [(s.first_client, s.count, s.tickets) for s in shares] == [(0, 4, 3), (4, 3, 2), (7, 3, 2)]
    [whole] = Share.divide(attrs.evolve(config, requests=None, duration=1.0), target, 1)
    assert (whole.first_client, whole.count, whole.tickets) == (0, 10, None)


def test_split_is_exact() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 4) == [1, 1, 0, 0]
    assert sum(split(1001, 7)) == 1001


def test_open_loop_schedule_spreads_sends_evenly() -> None:
    # 4 clients sharing 100 round trips/s: together, one send every 10 ms.
    schedules = [OpenLoopSchedule.for_client(5.0, index=i, clients=4, rate=100.0) for i in range(4)]
    times = sorted(s.due(k) for s in schedules for k in range(25))
    assert times[0] == 5.0
    assert all(b - a == pytest.approx(0.01) for a, b in itertools.pairwise(times))
    assert schedules[1].due(3) == pytest.approx(5.0 + 0.01 + 3 * 0.04)


def _wrapped(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise trio.BrokenResourceError from inner
    except trio.BrokenResourceError as outer:
        return outer


def test_classify_error() -> None:
    refused = OSError("all attempts to connect failed")
    refused.__cause__ = ExceptionGroup("x", [ConnectionRefusedError(errno.ECONNREFUSED, "refused")])
    alert = ssl.SSLError(1, "alert")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    eof = ssl.SSLError(1, "eof")
    eof.reason = "UNEXPECTED_EOF_WHILE_READING"
    assert classify_error(ClientError("x"), during_handshake=True) is ErrorKind.REFUSED
    assert classify_error(_wrapped(refused), during_handshake=True) is ErrorKind.REFUSED
    assert classify_error(_wrapped(alert)) is ErrorKind.TLS_REJECTED
    assert classify_error(_wrapped(ssl.SSLCertVerificationError(1, "bad"))) is ErrorKind.TLS_REJECTED
    assert classify_error(_wrapped(ConnectionResetError())) is ErrorKind.RESET
    assert classify_error(_wrapped(BrokenPipeError())) is ErrorKind.RESET
    assert classify_error(trio.TooSlowError()) is ErrorKind.TIMEOUT
    assert classify_error(_wrapped(eof)) is ErrorKind.SHORT_READ
    assert classify_error(_wrapped(eof), during_handshake=True) is ErrorKind.TLS_REJECTED
    assert classify_error(ValueError("a bug")) is None


def test_verdict() -> None:
    assert verdict(LoadReport(clients=1, seconds=1.0, round_trips=1)) is None
    assert "2 echoes differed" in str(verdict(LoadReport(clients=1, seconds=1.0, mismatches=2)))
    failed = verdict(LoadReport(clients=1, seconds=1.0, errors={"refused": 3}))
    assert failed == "no round trip succeeded (refused 3)"


def test_describe(client_config: ClientConfig) -> None:
    config = load_config(Address("127.0.0.1", 1), client_config, rate=50.0, workers=2, requests=9)
    params = parameters(config, version="0", started=datetime.datetime.now(datetime.UTC))
    assert describe(params) == (
        "loadgen 127.0.0.1:1: 64 clients, 1-100 bytes, open loop at 50 round trips/s,"
        " persistent connections, 9 requests, 2 workers"
    )


@pytest.mark.parametrize(
    "argv",
    [["--size", "0"], ["--duration", "1", "--requests", "2"], ["--rate", "0"], ["--warmup", "-1"]],
)
def test_cli_rejects_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "duration", "requests"),
    [([], 10.0, None), (["--duration", "2.5"], 2.5, None), (["--requests", "7"], None, 7)],
)
def test_cli_runs_for_the_default_duration_unless_told(
    pki: Path, argv: list[str], duration: float | None, requests: int | None
) -> None:
    # The README's `loadgen --size 256k --clients 4` gives neither flag.
    config = config_from_args(parse_cli(["--certs", str(pki), *argv]))
    assert (config.duration, config.requests) == (duration, requests)


def test_cli_without_certificates_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no certificates"):
        run_cli(["--certs", str(tmp_path), "--requests", "1"])


# -- against real servers -----------------------------------------------------------------


async def test_counters_add_up(server: Address, client_config: ClientConfig) -> None:
    report = await run_load(load_config(server, client_config, clients=4, requests=200))
    assert report.round_trips == 200
    assert report.write_ops == 200
    assert report.read_ops >= 200
    assert report.bytes_sent == report.bytes_received
    assert 200 <= report.bytes_sent <= 200 * 100
    assert report.mismatches == 0
    assert report.error_count == 0
    assert report.latency_histogram().count == 200
    assert report.handshake_histogram().count == 4  # one per client: connections persist
    assert report.clients == 4


async def test_large_messages_take_several_reads(server: Address, client_config: ClientConfig) -> None:
    report = await run_load(load_config(server, client_config, clients=2, requests=6, sizes="256k"))
    assert report.round_trips == 6
    assert report.bytes_sent == report.bytes_received == 6 * 256 * 1024
    # At most 16 KiB of plaintext per TLS record, and one record per read at most.
    assert report.read_ops >= 6 * 16


async def test_duration_is_the_measured_window(server: Address, client_config: ClientConfig) -> None:
    report = await run_load(load_config(server, client_config, clients=8, duration=0.5))
    # The duration bounds the whole run: the window is what is left after connecting.
    assert 0 < report.seconds <= 0.5
    assert report.round_trips > 0
    assert report.bytes_sent == report.bytes_received
    assert report.error_count == report.mismatches == 0


async def test_warmup_rounds_are_not_counted(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    echoed = 0

    async def counting_echo(conn: Connection) -> None:
        nonlocal echoed
        while data := await conn.stream.receive_some(65536):
            echoed += 1
            await conn.stream.send_all(data)

    [address] = await start_server(nursery, server_config, handler=counting_echo)
    report = await run_load(load_config(address, client_config, clients=2, requests=50, warmup=0.2))
    assert report.round_trips == 50
    assert echoed > 50  # the server also saw the warm-up rounds


async def test_new_connection_per_request_measures_handshakes(
    server: Address, client_config: ClientConfig
) -> None:
    config = load_config(server, client_config, clients=2, requests=20, new_connection_per_request=True)
    report = await run_load(config)
    assert report.round_trips == 20
    assert report.handshake_histogram().count == 20
    assert report.error_count == 0


async def test_open_loop_counts_queueing_that_closed_loop_hides(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    [address] = await start_server(nursery, server_config, handler=slow_echo)
    base = load_config(address, client_config, clients=1, duration=1.0)
    closed = await run_load(base)
    # Four times what the server can do: each send is due 5 ms after the last, each
    # takes 20 ms, so the k-th is late by about 15 ms * k: queueing, not service time.
    opened = await run_load(attrs.evolve(base, rate=4 / SLOW_DELAY))
    delay_us = SLOW_DELAY * 1e6
    closed_p = closed.to_json()["latency_us"]
    open_p = opened.to_json()["latency_us"]
    assert closed_p["p50"] >= delay_us  # service time is in both...
    assert open_p["p50"] >= 5 * delay_us  # ...queueing only in the open loop
    assert open_p["p50"] > closed_p["p50"]
    assert opened.error_count == closed.error_count == 0


async def test_open_loop_window_is_the_whole_duration(server: Address, client_config: ClientConfig) -> None:
    # Sends are due at 0, 0.5, 1 and 1.5 s, none at or after 2 s: the client is done
    # early, but the window (and so the rate) is the duration asked for.
    report = await run_load(load_config(server, client_config, clients=1, rate=2.0, duration=2.0))
    # The window ends with the run, not with the client's last echo, which would make
    # it 0.5 s shorter.  Connecting (one loopback handshake, part of the duration) must
    # take less than those 0.5 s; 0.125 s was once too little on a loaded machine.
    assert 2.0 - 0.5 < report.seconds <= 2.0
    assert report.round_trips_per_sec == pytest.approx(report.round_trips / report.seconds)


async def test_open_loop_sends_at_the_rate_asked(server: Address, client_config: ClientConfig) -> None:
    report = await run_load(load_config(server, client_config, clients=2, requests=30, rate=300.0))
    assert report.round_trips == 30
    assert report.error_count == 0


async def test_workers_merge_exactly(server: Address, client_config: ClientConfig) -> None:
    report = await run_load(load_config(server, client_config, clients=4, requests=101, workers=2))
    assert report.clients == 4
    assert report.round_trips == report.write_ops == 101
    assert report.latency_histogram().count == 101
    assert report.handshake_histogram().count == 4
    assert report.bytes_sent == report.bytes_received
    assert report.error_count == report.mismatches == 0


async def test_workers_with_an_unknown_host_is_one_error(
    client_config: ClientConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent resolves before it starts any worker (one that started would exit 5).
    monkeypatch.setattr(load_workers, "WORKER_COMMAND", "raise SystemExit(5)")
    config = load_config(Address("no-such-host.invalid", 1), client_config, clients=2, requests=2, workers=2)
    with pytest.raises(ClientError, match=r"^cannot connect to no-such-host\.invalid:1: unknown host"):
        await run_load(config)


async def test_a_worker_error_is_raised_in_the_parent_as_its_message(
    client_config: ClientConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusing_port: int
) -> None:
    # Only the parent skips its certificate check: the workers still load the files.
    monkeypatch.setattr(load_workers, "client_context", lambda _config: None)
    missing = attrs.evolve(client_config, tls=attrs.evolve(client_config.tls, cert=tmp_path / "gone.pem"))
    config = load_config(Address("127.0.0.1", refusing_port), missing, clients=2, requests=2, workers=2)
    with pytest.raises(ConfigError, match=r"^certificate file not found: .*gone\.pem$"):
        await run_load(config)


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "in-a-nursery-group"])
def test_a_worker_reports_our_errors_as_one_message(
    client_config: ClientConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    grouped: bool,
) -> None:
    missing = attrs.evolve(client_config, tls=attrs.evolve(client_config.tls, cert=tmp_path / "gone.pem"))
    config = load_config(Address("127.0.0.1", 1), missing, clients=1, requests=1)
    target = Target(config.address, socket.AF_INET, ("127.0.0.1", 1), "127.0.0.1")
    monkeypatch.setattr("sys.stdin", io.StringIO(encode(Share(config, target, 0, 1, 1)).decode()))
    if grouped:  # as a nursery in the worker would raise it
        run = load_workers._worker

        async def in_a_group(share: Share) -> None:
            try:
                await run(share)
            except ConfigError as exc:
                raise ExceptionGroup("from a nursery", [exc]) from None

        monkeypatch.setattr(load_workers, "_worker", in_a_group)
    with pytest.raises(SystemExit) as info:
        worker_main()
    assert info.value.code == 1
    out, err = capfd.readouterr()
    assert err == ""
    [line] = out.splitlines()
    error = decode(line)
    assert isinstance(error, ConfigError)
    assert str(error) == f"certificate file not found: {tmp_path / 'gone.pem'}"


async def test_a_worker_that_stopped_reading_is_a_dead_worker(
    server: Address, client_config: ClientConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It says it is ready with its stdin already closed: the parent's "go" meets a broken pipe.
    monkeypatch.setattr(
        load_workers,
        "WORKER_COMMAND",
        "import os, sys; from trio_tlsecho._load._workers import Barrier, encode;"
        " sys.stdin.readline(); os.close(0); sys.stdout.buffer.write(encode(Barrier.READY))",
    )
    config = load_config(server, client_config, clients=2, requests=2, workers=2)
    with pytest.raises(ClientError, match=r"^loadgen worker 0 exited with status 0 without a report"):
        await run_load(config)


@pytest.mark.parametrize(("workers", "per_request"), [(1, False), (2, False), (2, True)])
async def test_progress_is_reported_over_the_measured_window(
    server: Address, client_config: ClientConfig, workers: int, per_request: bool
) -> None:
    seen: list[Progress] = []
    # A new connection per request: no barrier, and still a warm-up first.
    config = load_config(
        server,
        client_config,
        clients=2,
        warmup=1.5,
        # Starting worker processes is part of the run (seconds on a busy machine).
        duration=3.5 if workers == 1 else 5.0,
        workers=workers,
        new_connection_per_request=per_request,
    )
    await run_load(config, progress=seen.append)
    # One report a second: the first inside the warm-up (before the window, nothing
    # counted), the next ones inside the window, whose time they give.  (The duration
    # bounds the whole run: starting worker processes takes some of it.)  With workers,
    # a report is the sum of every worker's report of that second.
    assert len(seen) >= 3
    assert seen[0].elapsed < 0
    assert seen[0].round_trips == 0
    assert config.duration is not None
    assert 0 < seen[1].elapsed < seen[2].elapsed <= config.duration
    assert 0 < seen[1].round_trips < seen[2].round_trips


async def test_a_rejected_certificate_ends_the_run_in_the_servers_words(
    server: Address, pki: Path, other_pki: Path
) -> None:
    # TLS 1.3: our handshake completes, and the server's alert comes with the first echo.
    stranger = ClientConfig(
        tls=TLSFiles(cert=other_pki / "client.pem", key=other_pki / "client.key", ca=pki / "ca.pem")
    )
    with pytest.raises(
        ClientError,
        match=rf"^TLS handshake with {server} failed: peer rejected our certificate: unknown CA",
    ):
        await run_load(load_config(server, stranger, clients=2, duration=30.0))


async def test_an_untrusted_server_ends_the_run_in_the_verifiers_words(
    server: Address, pki: Path, other_pki: Path
) -> None:
    suspicious = ClientConfig(
        tls=TLSFiles(cert=pki / "client.pem", key=pki / "client.key", ca=other_pki / "ca.pem")
    )
    with pytest.raises(
        ClientError,
        match=rf"^TLS handshake with {server} failed: certificate verify failed: not issued by a trusted CA",
    ):
        await run_load(load_config(server, suspicious, clients=1, duration=30.0))


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_refusing_target_is_one_error_at_once(
    client_config: ClientConfig, refusing_port: int, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    attempts = 0
    open_connection = ClientConnection.open

    async def counted(*args: object) -> ClientConnection:
        nonlocal attempts
        attempts += 1
        return await open_connection(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ClientConnection, "open", counted)
    address = Address("127.0.0.1", refusing_port)
    config = load_config(address, client_config, clients=4, duration=30.0, workers=workers)
    with pytest.raises(
        ClientError, match=rf"^cannot connect to {address}: connection refused \(is the server running\?\)$"
    ):
        await run_load(config)
    # No retrying while nobody is connected: one attempt per client at most (counted
    # here in one process; workers make theirs in their own).
    assert attempts <= (4 if workers == 1 else 0)


@pytest.mark.parametrize(
    ("kind", "failure"),
    [
        ("refused", ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
        ("tls_rejected", ssl.SSLCertVerificationError(1, "certificate verify failed")),
    ],
)
async def test_connection_errors_back_off_while_the_server_answers_others(
    server: Address, client_config: ClientConfig, monkeypatch: pytest.MonkeyPatch, kind: str, failure: OSError
) -> None:
    # A new connection per request; client 1 fails to connect after its first connection
    # (refused, or its handshake rejected), while client 0 goes on connecting, so the run
    # goes on, and client 1 retries with a back-off doubling from 10 ms (not thousands of
    # times).
    refused = 0
    open_connection = ClientConnection.open
    seen: set[str] = set()

    async def refuse_client_1(target: Target, *args: object) -> ClientConnection:
        nonlocal refused
        name = trio.lowlevel.current_task().name
        if name == "loadgen client 1" and name in seen:
            refused += 1
            raise failure
        seen.add(name)
        return await open_connection(target, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ClientConnection, "open", refuse_client_1)
    config = load_config(server, client_config, clients=2, duration=1.0, new_connection_per_request=True)
    report = await run_load(config)
    assert report.round_trips > 0
    # 10 + 20 + 40 + ... ms: at most 7 fit in a second.
    assert 2 <= refused <= 8
    assert report.errors[kind] == refused


async def test_duration_bounds_the_whole_run_connecting_included(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig
) -> None:
    # One connection at a time: the second client's handshake never gets an answer.
    [address] = await start_server(nursery, server_config, max_connections=1)
    config = load_config(address, client_config, clients=2, duration=1.0, timeout=60.0)
    with trio.fail_after(30):  # not the 60 s timeout: the run ends with its duration
        report = await run_load(config)
    assert report.round_trips > 0
    assert report.errors == dict.fromkeys(ERROR_KINDS, 0) | {"timeout": 1}


@pytest.mark.parametrize(
    ("handler", "kind", "requests", "timeout"),
    [
        # 1 s: the handshake, under the same timeout, must fit on a busy machine.
        (silent, "timeout", 2, 1.0),
        (hang_up, "short_read", 3, 10.0),
    ],
)
async def test_an_echo_that_never_comes_is_counted_by_kind(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    handler: Handler,
    kind: str,
    requests: int,
    timeout: float,
) -> None:
    [address] = await start_server(nursery, server_config, handler=handler)
    config = load_config(address, client_config, clients=1, requests=requests, timeout=timeout)
    report = await run_load(config)
    assert report.errors == dict.fromkeys(ERROR_KINDS, 0) | {kind: requests}
    # Each measured exchange sent its message, and nothing came back.
    assert (report.round_trips, report.write_ops, report.bytes_received) == (0, requests, 0)


@pytest.mark.parametrize("per_request", [False, True])
async def test_an_over_long_echo_is_a_mismatch(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, per_request: bool
) -> None:
    [address] = await start_server(nursery, server_config, handler=over_long_echo)
    config = load_config(
        address, client_config, clients=2, requests=6, new_connection_per_request=per_request
    )
    report = await run_load(config)
    assert (report.mismatches, report.round_trips, report.error_count) == (6, 0, 0)
    # Out of step, so never reused: a handshake per exchange (persistent clients' first
    # ones happen before the start).
    assert report.handshake_histogram().count == 6


async def test_more_after_the_echo_is_a_mismatch_if_it_arrived_before_the_close(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_echo = load_client.read_echo

    async def read_echo_then_linger(
        conn: ClientConnection, payload: memoryview, buffer: memoryview, exchange: ExchangeIO
    ) -> None:
        await read_echo(conn, payload, buffer, exchange)
        assert not exchange.mismatched  # the echo's own record held nothing more...
        await trio.lowlevel.wait_readable(conn._sock)  # ...but the next one has arrived

    monkeypatch.setattr(load_client, "read_echo", read_echo_then_linger)
    [address] = await start_server(nursery, server_config, handler=echo_then_more)
    config = load_config(address, client_config, clients=2, requests=4, new_connection_per_request=True)
    report = await run_load(config)
    assert (report.mismatches, report.round_trips, report.error_count) == (4, 0, 0)


async def test_an_exchange_whose_deadline_passes_as_it_closes_is_counted_once(
    server: Address,
    client_config: ClientConfig,
    mock_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The clock stands still but for this jump: past the deadline after the echo was
    # verified and recorded, in the close that ends each per-request connection.
    close = ClientConnection.close

    def close_late(conn: ClientConnection) -> None:
        close(conn)
        mock_clock.jump(2.0)

    monkeypatch.setattr(ClientConnection, "close", close_late)
    config = load_config(
        server, client_config, clients=1, requests=3, timeout=1.0, new_connection_per_request=True
    )
    report = await run_load(config)
    assert (report.round_trips, report.error_count) == (3, 0)


async def test_cli_detects_a_corrupting_server(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    pki: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    [address] = await start_server(nursery, server_config, handler=corrupting_echo)
    out = tmp_path / "run.json"
    argv = ["--connect", str(address), "--certs", str(pki), "--clients", "2", "--requests", "10"]
    status = await trio.to_thread.run_sync(run_cli, [*argv, "--json", str(out)])
    assert status == 1
    data = json.loads(out.read_text())
    assert data["mismatches"] == 10
    assert data["round_trips"] == 0
    assert "10 echoes differed from what was sent" in capsys.readouterr().err


async def test_cli_json_has_every_key(server: Address, pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    argv = ["--connect", str(server), "--certs", str(pki), "--clients", "3", "--requests", "30"]
    assert await trio.to_thread.run_sync(run_cli, [*argv, "--size", "100", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert_documented_keys(data, document=True)
    assert (data["handshakes"], data["handshakes_resumed"]) == (3, 0)
    assert (data["clients"], data["round_trips"], data["bytes_sent"]) == (3, 30, 3000)
    params = data["parameters"]
    assert params | {"start_time": None, "version": None} == {
        "target": str(server),
        "server_name": None,
        "mode": "closed",
        "clients": 3,
        "workers": 1,
        "sizes": {"low": 100, "high": 100},
        "rate": None,
        "duration": None,
        "requests": 30,
        "warmup": 0.0,
        "ramp": 0.0,
        "timeout": 10.0,
        "new_connection_per_request": False,
        "resume": False,
        "proxy_protocol": None,
        "version": None,
        "start_time": None,
        "runs": 1,
    }
    assert params["version"] == trio_tlsecho.__version__
    # RFC 3339 in UTC, and when the run started.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", params["start_time"])
    started = datetime.datetime.fromisoformat(params["start_time"])
    assert abs((datetime.datetime.now(datetime.UTC) - started).total_seconds()) < 600
    # The histograms are HdrHistogram's standard encoding: any HdrHistogram library reads them.
    latency = HdrHistogram.decode(data["histograms"]["latency_us"])
    assert latency.get_total_count() == 30
    assert latency.get_max_value() == pytest.approx(data["latency_us"]["max"], rel=1e-3)
    assert HdrHistogram.decode(data["histograms"]["handshake_us"]).get_total_count() == 3
    assert HdrHistogram.decode(data["histograms"]["latency_uncorrected_us"]).get_total_count() == 30


@pytest.mark.parametrize("version", [1, 2])
async def test_proxy_protocol_header_reaches_the_server(
    nursery: trio.Nursery, server_config: ServerConfig, client_config: ClientConfig, version: int
) -> None:
    peers: list[tuple[str, int]] = []

    async def record(conn: Connection) -> None:
        peers.append(conn.peer_address)
        await echo(conn)

    [address] = await start_server(nursery, server_config, handler=record, proxy_protocol=True)
    config = LoadConfig(address=address, client=client_config, clients=4, requests=40, proxy_protocol=version)
    report = await run_load(config)
    assert report.round_trips == 40
    assert len(peers) == 4
    assert all(host == "127.0.0.1" and port > 0 for host, port in peers)


async def test_proxy_header_to_a_server_not_expecting_it_fails(
    server: Address, client_config: ClientConfig
) -> None:
    config = LoadConfig(address=server, client=client_config, clients=2, requests=4, proxy_protocol=2)
    report = await run_load(config)
    assert report.round_trips == 0
    assert sum(report.errors.values()) > 0


@pytest.mark.parametrize("tickets", [True, False])
async def test_resume_uses_session_tickets_when_the_server_issues_them(
    nursery: trio.Nursery,
    server_config: ServerConfig,
    client_config: ClientConfig,
    caplog: pytest.LogCaptureFixture,
    tickets: bool,
) -> None:
    [address] = await start_server(nursery, server_config, session_tickets=tickets)
    config = LoadConfig(
        address=address,
        client=client_config,
        clients=2,
        requests=20,
        new_connection_per_request=True,
        resume=True,
    )
    report = await run_load(config)
    assert report.round_trips == 20
    assert report.error_count == 0
    # Each client's first handshake is a full one; every later one can resume.
    assert report.resumed == (18 if tickets else 0)
    resumed_lines = [r for r in caplog.records if " resumed subject=" in r.getMessage()]
    assert len(resumed_lines) == report.resumed
    # A resumed session still carries the verified client certificate.
    assert all("CN=client" in r.getMessage() for r in resumed_lines)
