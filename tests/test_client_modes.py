"""``client`` beyond echo: ``--expect any`` shows a reply, ``--stdin`` relays a terminal.

The library calls in-process against both engines; the command as a child process
(stdin, stdout, Ctrl-C).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_tlsecho import ClientConfig, ClientError, Connection, TLSFiles, discard, echo
from trio_tlsecho._client import request_once, talk

from .conftest import Start
from .logs import error_line
from .processes import PY, Lines, ServeProcess, run_cli

GREETER = (
    "async def handler(conn):\n"
    "    data = await conn.stream.receive_some(100)\n"
    "    await conn.stream.send_all(b'hello ' + data)\n"
)


async def greeter(conn: Connection) -> None:
    data = await conn.stream.receive_some(100)
    await conn.stream.send_all(b"hello " + data)


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


async def test_request_once_stops_waiting_at_its_timeout(
    start: Start, client_config: ClientConfig, autojump_clock: trio.testing.MockClock
) -> None:
    [address] = await start(handler=discard)
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


def test_expect_any_prints_the_reply(tmp_path: Path, certs: Path) -> None:
    with _serve_greeter(tmp_path) as server:
        done = run_cli(
            "client", "--connect", str(server.address), "--message", "bob", "--expect", "any", cwd=tmp_path
        )
    assert done.returncode == 0, done.stderr
    assert "mutual authentication: yes" in done.stdout
    assert "reply:                 3 bytes sent, 9 received in " in done.stdout
    assert "then the server closed" in done.stdout
    assert "verdict:               OK, reply below as received (not compared: --expect any)" in done.stdout
    assert done.stdout.endswith("\n\nhello bob\n")
    assert done.stderr == ""


def test_expect_echo_against_a_greeter_is_still_a_mismatch(tmp_path: Path, certs: Path) -> None:
    with _serve_greeter(tmp_path) as server:
        done = run_cli("client", "--connect", str(server.address), "--message", "bob", cwd=tmp_path)
    assert done.returncode == 1
    assert "echo" in error_line(done.stderr)


def test_stdin_and_expect_do_not_go_together(tmp_path: Path, certs: Path) -> None:
    done = run_cli("client", "--stdin", "--expect", "any", cwd=tmp_path)
    assert done.returncode == 2
    assert error_line(done.stderr) == (
        "trio-tlsecho: error: --expect applies to --message and --random; --stdin prints what comes back"
    )


def _client(tmp_path: Path, server: ServeProcess) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*PY, "client", "--connect", str(server.address), "--stdin"],
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


def test_stdin_end_leaves_the_session_open_until_the_server_closes(tmp_path: Path, certs: Path) -> None:
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        client = _client(tmp_path, server)
        assert client.stdin is not None
        assert client.stdout is not None
        out = Lines(client.stdout)
        client.stdin.write(b"one\ntwo\n")
        client.stdin.close()  # the end of stdin: no half-close in TLS, the echo goes on
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
