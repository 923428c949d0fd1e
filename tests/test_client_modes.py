"""``client`` beyond echo: ``--expect any`` shows a reply, ``--stdin`` relays a terminal.

The end of what is sent is TLS 1.3's half-close (our close_notify, reading on), so
both end by themselves against a server that answers and then closes; ``--ignore-eof``
(and TLS 1.2, for ``--stdin``) are the exceptions.

The library calls in-process against both engines; the command as a child process
(stdin, stdout, Ctrl-C).
"""

from __future__ import annotations

import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_tlsecho import ClientConfig, ClientError, Connection, TLSFiles, client_context, discard, echo
from trio_tlsecho._client import Source, request_once, talk

from .conftest import Start
from .logs import ServerLog, error_line
from .processes import PY, Lines, ServeProcess, run_cli

GREETER = (
    "async def handler(conn):\n"
    "    data = await conn.stream.receive_some(100)\n"
    "    await conn.stream.send_all(b'hello ' + data)\n"
)


async def greeter(conn: Connection) -> None:
    data = await conn.stream.receive_some(100)
    await conn.stream.send_all(b"hello " + data)


async def mute(conn: Connection) -> None:
    """Reads nothing, says nothing, never closes."""
    await trio.sleep_forever()


def typing(*chunks: bytes) -> Source:
    """Input that gives *chunks*, then ends."""
    left: Iterator[bytes] = iter(chunks)

    async def source() -> bytes:
        await trio.lowlevel.checkpoint()
        return next(left, b"")

    return source


#: Long enough never to be what ends a test (it would fail it); short enough to fail soon.
HANG = 30


async def test_request_once_returns_the_reply_and_the_servers_close(
    start: Start, client_config: ClientConfig
) -> None:
    [address] = await start(handler=greeter)
    reply = await request_once(address, client_config, b"bob", timeout=30)
    assert reply.reply == b"hello bob"
    assert reply.server_closed
    assert reply.sent == 3
    assert reply.mutual is True
    assert reply.server.common_name == "localhost"


async def test_request_once_half_closes_so_an_echo_ends_at_once(
    start: Start, client_config: ClientConfig
) -> None:
    [address] = await start(handler=echo)
    reply = await request_once(address, client_config, b"bob", timeout=HANG)
    # echo returned at our close_notify and the server closed: not the timeout.
    assert reply.reply == b"bob"
    assert reply.server_closed


async def test_request_once_half_closes_so_discard_ends_at_once(
    start: Start, client_config: ClientConfig
) -> None:
    [address] = await start(handler=discard)
    reply = await request_once(address, client_config, b"into the void", timeout=HANG)
    assert reply.reply == b""
    assert reply.server_closed


async def test_request_once_without_half_close_waits_for_the_timeout(
    start: Start, client_config: ClientConfig, autojump_clock: trio.testing.MockClock
) -> None:
    [address] = await start(handler=discard)
    reply = await request_once(address, client_config, b"into the void", timeout=5, half_close=False)
    assert reply.reply == b""
    assert not reply.server_closed


async def test_request_once_stops_waiting_at_its_timeout(
    start: Start, client_config: ClientConfig, autojump_clock: trio.testing.MockClock
) -> None:
    [address] = await start(handler=mute)
    reply = await request_once(address, client_config, b"into the void", timeout=5)
    assert reply.reply == b""
    assert not reply.server_closed


async def test_talk_relays_both_ways_until_the_server_closes(
    start: Start, client_config: ClientConfig
) -> None:
    [address] = await start(handler=greeter)
    out = bytearray()
    typed = trio.Event()  # the input stays open: the server's close ends the session

    async def keyboard() -> bytes:
        if not typed.is_set():
            typed.set()
            return b"alice"
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    await talk(address, client_config, keyboard, out.extend)
    assert out == b"hello alice"


async def test_talk_ends_at_the_end_of_its_input_once_the_echo_is_back(
    start: Start, client_config: ClientConfig, log: ServerLog
) -> None:
    [address] = await start(handler=echo)
    out = bytearray()
    with trio.fail_after(HANG):  # before the half-close: until the server's idle timeout
        await talk(address, client_config, typing(b"one\n", b"two\n"), out.extend)
    assert out == b"one\ntwo\n"
    assert "ended ok " in await log.wait_for("ended ")  # echo returned: our end reached it


async def test_talk_ignore_eof_reads_on_until_the_server_closes(
    start: Start, client_config: ClientConfig, log: ServerLog
) -> None:
    [address] = await start(handler=echo, idle_timeout=0.5)
    out = bytearray()
    with trio.fail_after(HANG):
        await talk(address, client_config, typing(b"one\n"), out.extend, ignore_eof=True)
    assert out == b"one\n"
    # No close_notify from us: the echo went on until the server's idle timeout closed it.
    assert log.messages("closed: idle for 0.5s")


async def test_talk_under_tls_1_2_ends_at_the_end_of_its_input(
    start: Start, client_config: ClientConfig
) -> None:
    [address] = await start(handler=mute)
    tls_1_2 = client_context(client_config)
    tls_1_2.maximum_version = ssl.TLSVersion.TLSv1_2
    versions: list[str | None] = []
    out = bytearray()
    with trio.fail_after(HANG):  # mute never closes: only the end of the input can end this
        await talk(
            address,
            client_config,
            typing(b"one\n"),
            out.extend,
            connected=lambda stream: versions.append(stream.version()),
            ssl_context=tls_1_2,
        )
    assert versions == ["TLSv1.2"]
    assert out == b""


async def test_talk_reports_a_refused_certificate_in_one_line(
    start: Start, pki: Path, other_pki: Path
) -> None:
    [address] = await start(handler=echo)
    stranger = ClientConfig(
        tls=TLSFiles(cert=other_pki / "client.pem", key=other_pki / "client.key", ca=pki / "ca.pem")
    )

    async def nothing() -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    # TLS 1.3: the refusal arrives on the first read, after the handshake.
    with pytest.raises(ClientError, match=r"^127\.0\.0\.1:\d+: TLS connection failed: [^\n]*$"):
        await talk(address, stranger, nothing, lambda data: None)


# -- the command ----------------------------------------------------------------------


def _serve_greeter(tmp_path: Path) -> ServeProcess:
    (tmp_path / "greet.py").write_text(GREETER)
    return ServeProcess("--listen", "127.0.0.1:0", "--handler", "greet:handler", cwd=tmp_path)


def test_expect_any_writes_the_reply_to_stdout_and_the_report_to_stderr(tmp_path: Path, certs: Path) -> None:
    with _serve_greeter(tmp_path) as server:
        done = run_cli(
            "client", "--connect", str(server.address), "--message", "bob", "--expect", "any", cwd=tmp_path
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello bob"  # the reply's bytes, exactly: no report, no newline added
    assert "mutual authentication: yes" in done.stderr
    assert "reply:                 3 bytes sent, 9 received in " in done.stderr
    assert "then the server closed" in done.stderr
    assert (
        "verdict:               OK, reply on stdout as received (not compared: --expect any)" in done.stderr
    )


def test_expect_any_against_echo_ends_at_the_servers_close(tmp_path: Path, certs: Path) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        done = run_cli(
            "client", "--connect", str(server.address), "--message", "hi", "--expect", "any", cwd=tmp_path
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi"
    assert "then the server closed the connection" in done.stderr  # not the 30 s --timeout


def test_expect_any_with_ignore_eof_waits_for_the_timeout(tmp_path: Path, certs: Path) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        done = run_cli(
            "client",
            "--connect",
            str(server.address),
            "--message",
            "hi",
            "--expect",
            "any",
            "--ignore-eof",
            "--timeout",
            "0.5",
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi"
    assert "the server had not closed by --timeout" in done.stderr


def test_expect_echo_against_a_greeter_is_still_a_mismatch(tmp_path: Path, certs: Path) -> None:
    with _serve_greeter(tmp_path) as server:
        done = run_cli("client", "--connect", str(server.address), "--message", "bob", cwd=tmp_path)
    assert done.returncode == 1
    assert error_line(done.stderr).endswith(
        ": echo differs from what was sent at byte 0"
        " (not an echo server? client --expect any shows any reply)"
    )


def test_ignore_eof_does_not_go_with_an_echo_check(tmp_path: Path, certs: Path) -> None:
    done = run_cli("client", "--message", "hi", "--ignore-eof", cwd=tmp_path)
    assert done.returncode == 2
    assert error_line(done.stderr) == (
        "trio-tlsecho: error: --ignore-eof applies to --stdin and --expect any;"
        " an echo check reads only the echo"
    )


def test_stdin_and_expect_do_not_go_together(tmp_path: Path, certs: Path) -> None:
    done = run_cli("client", "--stdin", "--expect", "any", cwd=tmp_path)
    assert done.returncode == 2
    assert error_line(done.stderr) == (
        "trio-tlsecho: error: --expect applies to --message and --random; --stdin prints what comes back"
    )


def _client(tmp_path: Path, server: ServeProcess, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*PY, "client", "--connect", str(server.address), "--stdin", *flags],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_stdin_ends_when_the_server_closes(tmp_path: Path, certs: Path) -> None:
    with _serve_greeter(tmp_path) as server:
        client = _client(tmp_path, server)
        assert client.stdin is not None
        client.stdin.write(b"alice")
        client.stdin.flush()  # and left open: the server's close ends the session
        out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert out == b"hello alice"
    assert err.decode().startswith(f"connected to {server.address} (TLSv1.3, ")


def test_stdin_ends_at_its_end_once_the_echo_is_back(tmp_path: Path, certs: Path) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        client = _client(tmp_path, server)
        # Before the half-close this waited for the server's idle timeout (5 min).
        out, err = client.communicate(b"hello\n", timeout=HANG)
        assert server.stderr.wait_for(": ended ok ")  # the echo returned at our close_notify
    assert client.returncode == 0, err
    assert out == b"hello\n"


def test_stdin_end_with_ignore_eof_leaves_the_session_open_until_the_server_closes(
    tmp_path: Path, certs: Path
) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        client = _client(tmp_path, server, "--ignore-eof")
        assert client.stdin is not None
        assert client.stdout is not None
        out = Lines(client.stdout)
        client.stdin.write(b"one\ntwo\n")
        client.stdin.close()  # the end of stdin: no close_notify with --ignore-eof, the echo goes on
        assert out.next() == "one"
        assert out.next() == "two"
        assert client.poll() is None
        server.signal(signal.SIGTERM)  # the idle echo ends with close_notify: both sides done
        assert client.wait(timeout=30) == 0
        client.stdout.close()
        assert client.stderr is not None
        assert client.stderr.read().startswith(b"connected to ")
        client.stderr.close()
        code, log = server.wait()
    assert code == 0, log


def test_ctrl_c_ends_stdin_mode_with_130_and_no_traceback(tmp_path: Path, certs: Path) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        client = _client(tmp_path, server)
        assert client.stdin is not None
        assert client.stdout is not None
        out = Lines(client.stdout)
        client.stdin.write(b"ping\n")
        client.stdin.flush()
        assert out.next() == "ping"  # connected and relaying
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=30)
    assert client.returncode == 130, err
    assert "Traceback" not in err.decode()
