"""``--listen unix:PATH``: a UNIX-socket listener, its peer's credentials in the log, its file."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import attrs
import pytest
import trio

from trio_tlsecho import ClientConfig, ListenError, ServerConfig, client_context, serve
from trio_tlsecho._net import UnixAddress

from .conftest import Start, receive_until
from .logs import ServerLog, error_line
from .processes import PY, ServeProcess, run_cli


async def echo_over_unix(path: Path, client_config: ClientConfig, message: bytes = b"hello") -> bytes:
    """One mutual-TLS round trip over the UNIX socket at *path*."""
    transport = await trio.open_unix_socket(str(path))
    stream = trio.SSLStream(transport, client_context(client_config), server_hostname="localhost")
    async with stream:
        await stream.send_all(message)
        return await receive_until(stream, len(message))


async def test_a_unix_listener_serves_and_logs_who_connected(
    start: Start, client_config: ClientConfig, tmp_path: Path, log: ServerLog
) -> None:
    path = tmp_path / "echo.sock"
    addresses = await start(listen=[f"unix:{path}"])
    assert addresses == [UnixAddress(str(path))]
    assert str(addresses[0]) == f"unix:{path}"
    assert await echo_over_unix(path, client_config) == b"hello"
    # No address to log for a UNIX peer: the kernel's word for who it is instead.
    peer = f"unix:pid={os.getpid()},uid={os.getuid()},gid={os.getgid()}"
    assert "connected TLSv1.3" in await log.wait_for("connected", about=peer)


async def test_the_socket_file_goes_when_the_server_stops(
    server_config: ServerConfig, tmp_path: Path
) -> None:
    path = tmp_path / "echo.sock"
    config = attrs.evolve(server_config, listen=[f"unix:{path}"])
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, config)
        assert path.is_socket()
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_a_stale_socket_file_is_replaced(
    start: Start, client_config: ClientConfig, tmp_path: Path
) -> None:
    # What a killed server leaves: a socket file that nobody accepts on.
    path = tmp_path / "echo.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    await start(listen=[f"unix:{path}"])
    assert await echo_over_unix(path, client_config) == b"hello"


@pytest.mark.parametrize("what", ["a live socket", "a file"])
async def test_somebody_elses_path_is_in_use(server_config: ServerConfig, tmp_path: Path, what: str) -> None:
    path = tmp_path / "echo.sock"
    with socket.socket(socket.AF_UNIX) as live:
        if what == "a file":
            path.write_text("not a socket")
        else:
            live.bind(str(path))
            live.listen()
        config = attrs.evolve(server_config, listen=[f"unix:{path}"])
        async with trio.open_nursery() as nursery:
            with pytest.raises(ListenError) as caught:
                await nursery.start(serve, config)
    assert str(caught.value) == f"cannot listen on unix:{path}: address already in use"
    assert path.exists()  # left as it was


def test_workers_leave_somebody_elses_socket_alone(tmp_path: Path, certs: Path) -> None:
    path = tmp_path / "echo.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        done = run_cli("serve", "--listen", f"unix:{path}", "--workers", "2", cwd=tmp_path)
        assert done.returncode == 2
        assert error_line(done.stderr) == (
            f"trio-tlsecho: error: cannot listen on unix:{path}: address already in use"
        )
        assert path.is_socket()


async def test_workers_share_one_unix_socket(
    tmp_path: Path, certs: Path, client_config: ClientConfig
) -> None:
    path = tmp_path / "echo.sock"
    with ServeProcess("--listen", f"unix:{path}", "--workers", "2", cwd=tmp_path) as server:
        assert server.addresses == [UnixAddress(str(path))]
        for _ in range(4):
            assert await echo_over_unix(path, client_config) == b"hello"
        code, err = server.stop()
    assert code == 0, err
    assert re.search(r"\[worker \d\] unix:pid=\d+,uid=\d+,gid=\d+: connected TLSv1\.3", err), err
    assert "Traceback" not in err
    assert not path.exists()  # the supervisor, which bound it, removed it


def test_the_client_checks_a_unix_listener(tmp_path: Path, certs: Path) -> None:
    # An operator checks a UNIX-socket deployment with the project's own client.
    path = tmp_path / "echo.sock"
    with ServeProcess("--listen", f"unix:{path}", cwd=tmp_path) as server:
        echo = run_cli("client", "--connect", f"unix:{path}", cwd=tmp_path)
        reply = run_cli(
            "client", "--connect", f"unix:{path}", "--message", "hi", "--expect", "any", cwd=tmp_path
        )
        talk = subprocess.run(
            [*PY, "client", "--connect", f"unix:{path}", "--stdin"],
            input="hello\n",
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        code, err = server.stop()
    assert echo.returncode == 0, echo.stderr
    assert f"connected to unix:{path}" in echo.stdout
    assert "verdict:               OK, echo verified byte for byte" in echo.stdout
    assert (reply.returncode, reply.stdout) == (0, "hi"), reply.stderr
    assert (talk.returncode, talk.stdout) == (0, "hello\n"), talk.stderr
    assert code == 0, err


def test_connecting_to_a_missing_unix_socket_is_one_line(tmp_path: Path, certs: Path) -> None:
    done = run_cli("client", "--connect", f"unix:{tmp_path}/none.sock", cwd=tmp_path)
    assert done.returncode == 1
    assert error_line(done.stderr) == (
        f"trio-tlsecho: error: cannot connect to unix:{tmp_path}/none.sock:"
        " no such socket (is the server running?)"
    )
    loadgen = run_cli("loadgen", "--connect", f"unix:{tmp_path}/none.sock", "-d", "2s", cwd=tmp_path)
    assert loadgen.returncode == 1
    assert error_line(loadgen.stderr) == (
        f"trio-tlsecho: error: cannot connect to unix:{tmp_path}/none.sock:"
        " no such socket (is the server running?)"
    )


def test_loadgen_drives_a_unix_listener(tmp_path: Path, certs: Path) -> None:
    path = tmp_path / "echo.sock"
    with ServeProcess("--listen", f"unix:{path}", cwd=tmp_path) as server:
        done = run_cli("loadgen", "--connect", f"unix:{path}", "-c", "4", "--requests", "200", "-q",
                       "--json", str(tmp_path / "run.json"), cwd=tmp_path)  # fmt: skip
        code, err = server.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "run.json").read_text())
    assert (result["round_trips"], result["mismatches"], sum(result["errors"].values())) == (200, 0, 0)
    assert result["parameters"]["target"] == f"unix:{path}"
    assert code == 0, err


def test_loadgen_refuses_a_proxy_header_over_a_unix_socket(tmp_path: Path, certs: Path) -> None:
    done = run_cli("loadgen", "--connect", f"unix:{tmp_path}/x.sock", "--proxy-protocol", "v2", cwd=tmp_path)
    assert done.returncode == 2
    assert error_line(done.stderr) == (
        f"trio-tlsecho: error: a PROXY header names TCP addresses: not with unix:{tmp_path}/x.sock"
    )
