"""benchmarks/tlsload.c, the bench's C load generator: it builds, counts, and catches lies.

The bench trusts its numbers, so they are checked here against our own server: every
echoed byte is compared, a server that corrupts one is caught, and a bad command line
is one line and exit status 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from subprocess import PIPE

import pytest
import trio

from trio_tlsecho import (
    Address,
    ClientConfig,
    Connection,
    ServerConfig,
    ServerMetrics,
    TLSFiles,
    open_client,
    serve,
    server_context,
)

from .conftest import Start
from .processes import Lines
from .test_no_plaintext_on_the_wire import start_recording_proxy
from .tools import missing, require_tool

SOURCE = Path(__file__).resolve().parent.parent / "benchmarks" / "tlsload.c"
NO_ERRORS = dict.fromkeys(["connect", "handshake", "closed", "mismatch", "timeout", "io"], 0)


@pytest.fixture(scope="module")
def tlsload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = require_tool("cc", "gcc libssl-dev")
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing("OpenSSL's C headers are not installed", "libssl-dev")
    binary = tmp_path_factory.mktemp("tlsload") / "tlsload"
    built = subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(SOURCE), "-lssl", "-lcrypto"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


def command(tlsload: Path, pki: Path, address: Address, *extra: str) -> list[str]:
    return [
        str(tlsload), "--connect", str(address),
        "--ca", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"),
        "--duration", "0.3", "--warmup", "0.1", "--timeout", "5", *extra,
    ]  # fmt: skip


async def run(args: list[str]) -> tuple[int, dict[str, object] | None, str]:
    with trio.fail_after(30):
        done = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    return done.returncode, json.loads(out) if out.strip() else None, done.stderr.decode()


@pytest.mark.parametrize("size", ["1-100", "262144"])
async def test_counts_verified_round_trips(tlsload: Path, pki: Path, server: Address, size: str) -> None:
    status, report, _ = await run(command(tlsload, pki, server, "--clients", "4", "--size", size))
    assert status == 0
    assert report is not None
    assert report["clients"] == 4
    assert isinstance(report["round_trips"], int)
    assert report["round_trips"] > 0
    assert report["errors"] == NO_ERRORS
    if size == "262144":
        assert report["bytes"] == report["round_trips"] * 262144
    assert list(report)[-1] == "rate"
    assert report["rate"] is None  # the closed loop


async def test_open_loop_keeps_its_rate(tlsload: Path, pki: Path, server: Address) -> None:
    args = command(tlsload, pki, server, "--clients", "4", "--duration", "1", "--rate", "500")
    status, report, _ = await run(args)
    assert status == 0
    assert report is not None
    assert report["rate"] == 500
    assert report["errors"] == NO_ERRORS
    rate = report["round_trips_per_sec"]
    assert isinstance(rate, float)
    # At most 500 and a little (a closed loop would give thousands); less when a busy
    # machine holds sends back at the window's end.
    assert 250 <= rate <= 575


def stalling_echo(start: float, stall: float) -> Callable[[Connection], Awaitable[None]]:
    """An echo server that answers nobody from *start* seconds after its first byte, for *stall*."""
    first: list[float] = []

    async def echo(conn: Connection) -> None:
        while data := await conn.stream.receive_some(65536):
            now = trio.current_time()
            first.append(now)
            if first[0] + start <= now < first[0] + start + stall:
                await trio.sleep_until(first[0] + start + stall)
            await conn.stream.send_all(data)

    return echo


async def test_open_loop_latency_counts_from_the_intended_time(
    start: Start, tlsload: Path, pki: Path
) -> None:
    # Stalled 0.3 s into a 0.1 s warm-up + 0.6 s window, for 0.25 s: about 50 of the 120
    # messages were meant to go out during the stall; each waits for its end.
    [address] = await start(handler=stalling_echo(0.3, 0.25))
    args = command(tlsload, pki, address, "--clients", "2", "--duration", "0.6", "--rate", "200")
    status, report, _ = await run(args)
    assert status == 0
    assert report is not None
    latency = report["latency_us"]
    assert isinstance(latency, dict)
    assert latency["p90"] >= 100_000  # a closed loop would have seen it in 2 round trips only
    assert 200_000 <= latency["max"] < 1_000_000


async def corrupting_echo(conn: Connection) -> None:
    while data := await conn.stream.receive_some(65536):
        await conn.stream.send_all(bytes([data[0] ^ 0xFF]) + data[1:])


async def test_a_corrupted_echo_is_a_mismatch(start: Start, tlsload: Path, pki: Path) -> None:
    [address] = await start(handler=corrupting_echo)
    status, report, _ = await run(command(tlsload, pki, address, "--clients", "2"))
    assert status == 1
    assert report is not None
    errors = report["errors"]
    assert isinstance(errors, dict)
    assert errors["mismatch"] == 2  # each client stops at its first wrong byte
    assert report["round_trips"] == 0


async def test_a_server_of_another_ca_fails_the_handshake(
    tlsload: Path, other_pki: Path, pki: Path, server: Address
) -> None:
    args = command(tlsload, pki, server, "--clients", "2")
    args[args.index("--ca") + 1] = str(other_pki / "ca.pem")
    status, report, _ = await run(args)
    assert status == 1
    assert report is not None
    errors = report["errors"]
    assert isinstance(errors, dict)
    assert errors["handshake"] == 2


@contextlib.asynccontextmanager
async def child(args: list[str]) -> AsyncIterator[trio.Process]:
    """*args* running with stdin and stdout on pipes, waited for (killed if the test fails)."""
    proc = await trio.lowlevel.open_process(args, stdin=PIPE, stdout=PIPE)
    try:
        yield proc
    except BaseException:
        proc.kill()
        raise
    finally:
        with trio.CancelScope(shield=True):
            await proc.wait()


async def test_hold_keeps_every_connection_open_until_stdin_closes(
    tlsload: Path, pki: Path, nursery: trio.Nursery, server_config: ServerConfig
) -> None:
    # 40 clients: more than one wave of 16 set up at a time.
    metrics = ServerMetrics()
    [address] = await nursery.start(functools.partial(serve, server_config, metrics=metrics))
    args = command(tlsload, pki, address, "--clients", "40", "--size", "1", "--hold", "60")
    with trio.fail_after(30):  # --hold 60: only the end of stdin stops it in time
        async with child(args) as proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            assert json.loads(await lines.await_line()) == {"held": 40}
            # Each has had its byte echoed: the server holds them all, verified and idle.
            assert metrics.connections_open == 40
            await proc.stdin.aclose()
            report = json.loads(await lines.await_line())
            assert await lines.await_line() == ""
    assert proc.returncode == 0
    assert report["round_trips"] == 40
    assert report["errors"] == NO_ERRORS


async def echo_once_then_close(conn: Connection) -> None:
    await conn.stream.send_all(await conn.stream.receive_some(65536))


async def test_hold_counts_a_server_closing_a_held_connection(start: Start, tlsload: Path, pki: Path) -> None:
    [address] = await start(handler=echo_once_then_close)
    args = command(tlsload, pki, address, "--clients", "3", "--size", "1", "--hold", "60")
    # stdin stays open: it ends, well before 60 s, when the last held client is closed.
    with trio.fail_after(30):
        async with child(args) as proc:
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            last = ""
            while line := await lines.await_line():
                last = line
    assert proc.returncode == 1
    report = json.loads(last)
    assert report["errors"] == {**NO_ERRORS, "closed": 3}
    assert report["round_trips"] == 3


async def run_lines(args: list[str]) -> tuple[int, list[dict[str, object]]]:
    """Exit status and every stdout line, parsed (stdin is empty: a hold ends once announced)."""
    with trio.fail_after(30):
        done = await trio.run_process(args, capture_stdout=True, check=False)
    return done.returncode, [json.loads(line) for line in done.stdout.decode().splitlines()]


async def test_hold_counts_everyone_not_held_in_time_as_a_timeout(
    tlsload: Path, pki: Path, nursery: trio.Nursery
) -> None:
    # A listener that accepts and never answers: no handshake ends.  Of 20 clients, 16
    # are handshaking when the 0.5 s are up and 4 were never opened.
    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    [listener] = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    address = Address("127.0.0.1", listener.socket.getsockname()[1])
    status, lines = await run_lines(command(tlsload, pki, address, "--clients", "20", "--hold", "0.5"))
    assert status == 1
    [report] = lines  # no "held" line
    assert report["errors"] == {**NO_ERRORS, "timeout": 20}


async def test_hold_tries_every_client_when_whole_waves_fail(tlsload: Path, pki: Path) -> None:
    # Nobody listens: each wave of 16 is refused at once; the next one is still tried.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = Address("127.0.0.1", sock.getsockname()[1])
    status, lines = await run_lines(command(tlsload, pki, address, "--clients", "40", "--hold", "30"))
    assert status == 1
    held, report = lines
    assert held == {"held": 0}
    assert report["errors"] == {**NO_ERRORS, "connect": 40}


def der(pem_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text())


async def plain_echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some(65536):
                await stream.send_all(data)


async def test_sends_its_own_certificate_not_the_ca(tlsload: Path, pki: Path, nursery: trio.Nursery) -> None:
    """As Go's client does; an OpenSSL client left to itself (ours, the control) adds the CA.

    Over TLS 1.2, where the client's certificate crosses the wire in clear, through
    the recording proxy of test_no_plaintext_on_the_wire.
    """
    ctx = server_context(ServerConfig(tls=TLSFiles.from_dir(pki, "server")))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    serving = functools.partial(trio.serve_ssl_over_tcp, plain_echo, 0, ctx, host="127.0.0.1")
    [listener] = await nursery.start(serving)
    upstream = Address("127.0.0.1", listener.transport_listener.socket.getsockname()[1])
    leaf, ca = der(pki / "client.pem"), der(pki / "ca.pem")

    proxy, recording = await start_recording_proxy(nursery, upstream)
    status, report, _ = await run(command(tlsload, pki, proxy, "--clients", "1"))
    assert status == 0
    assert report is not None
    assert report["errors"] == NO_ERRORS
    assert leaf in recording.to_server
    assert ca not in recording.to_server

    proxy, recording = await start_recording_proxy(nursery, upstream)
    async with await open_client(proxy, ClientConfig(tls=TLSFiles.from_dir(pki, "client"))) as stream:
        await stream.send_all(b"x")
        assert await stream.receive_some(1) == b"x"
    assert leaf in recording.to_server
    assert ca in recording.to_server


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--clients", "0"], "--clients"),
        (["--size", "10-1"], "--size"),
        (["--bogus"], "--bogus"),
        (["--ca", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
        (["--rate", "0"], "--rate"),
        (["--rate", "nan"], "--rate"),
        (["--rate", "-5"], "--rate"),
        (["--hold", "soon"], "--hold"),
        (["--hold", "1", "--rate", "5"], "--hold"),
    ],
)
async def test_bad_command_line_is_one_line(
    tlsload: Path, pki: Path, server: Address, change: list[str], message: str
) -> None:
    status, report, err = await run(command(tlsload, pki, server, *change))
    assert status == 2
    assert report is None
    assert err.startswith("tlsload: error: ")
    assert message in err
    assert err.count("\n") == 1


async def test_help_says_how_to_use_it(tlsload: Path) -> None:
    done = await trio.run_process([str(tlsload), "--help"], capture_stdout=True, capture_stderr=True)
    out = done.stdout.decode()
    assert out.startswith("usage: tlsload --connect HOST:PORT --ca FILE --cert FILE --key FILE\n")
    # Every flag it takes is explained.
    for flag in ("--servername", "--clients", "--size", "--duration", "--warmup", "--seed", "--timeout"):
        assert f"\n  {flag}" in out
    assert "--rate R" in out
    assert "--hold SECONDS" in out
    assert done.stderr == b""
