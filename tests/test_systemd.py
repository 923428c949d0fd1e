"""systemd: socket activation (``--listen systemd``, ``fd://N``) and sd_notify readiness.

The sockets come from the real ``systemd-socket-activate`` (Debian package ``systemd``);
the notifications go to a datagram socket the test binds as ``$NOTIFY_SOCKET``, with
SO_PASSCRED, so that it sees which process sent each one (systemd's ``NotifyAccess=main``
hears only the main process).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trio_tlsecho import ClientConfig, open_client
from trio_tlsecho._cli import main
from trio_tlsecho._process._notify import Notifier

from .logs import HANG, error_line
from .processes import PY, ServeProcess, run_cli
from .tools import require_tool

_UCRED = struct.Struct("3i")


class NotifySocket:
    """What systemd listens on: each datagram as (sender pid, {KEY: VALUE})."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.seen: list[tuple[int, dict[str, str]]] = []

    async def bind(self) -> None:
        await self.sock.bind(str(self.path))

    async def next(self) -> tuple[int, dict[str, str]]:
        with trio.fail_after(HANG):
            data, ancillary, _, _ = await self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        [(_, _, creds)] = ancillary
        pid, _, _ = _UCRED.unpack(creds[: _UCRED.size])
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.seen.append((pid, fields))
        return pid, fields

    async def rest(self) -> list[tuple[int, dict[str, str]]]:
        """Every notification not read yet (once the senders are gone)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as end:
            end.sendto(b"END=1", str(self.path))  # queued after everything they sent
        rest = []
        while (got := await self.next())[1] != {"END": "1"}:
            rest.append(got)
        return rest

    async def wait_for(self, key: str) -> tuple[int, dict[str, str]]:
        """The next notification that has *key* (those before it are passed over)."""
        while True:
            pid, fields = await self.next()
            if key in fields:
                return pid, fields


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    await listener.bind()
    with listener.sock:
        yield listener


def free_port() -> int:
    # systemd-socket-activate wants a port number, not 0.  Another process could take
    # it in between; on a test machine's loopback that is rare enough.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def activated(port: int, *names: str) -> list[str]:
    """The program run by systemd-socket-activate, on 127.0.0.1:*port*, the sockets named *names*."""
    tool = require_tool("systemd-socket-activate", "systemd")
    fdname = [f"--fdname={':'.join(names)}"] if names else []
    return [tool, "-l", f"127.0.0.1:{port}", *fdname, "-E", "NOTIFY_SOCKET", *PY]


async def test_notify_ready_reload_status_and_stop(
    tmp_path: Path, certs: Path, notify: NotifySocket, client_config: ClientConfig
) -> None:
    env = {"NOTIFY_SOCKET": str(notify.path)}
    with ServeProcess("--listen", "127.0.0.1:0", cwd=tmp_path, env=env) as server:
        pid, ready = await notify.next()  # the first word, once listening
        assert pid == server.proc.pid
        assert ready == {"READY": "1", "STATUS": "serving, 0 connections open"}
        server.signal(signal.SIGHUP)
        _, reloading = await notify.next()
        assert reloading["RELOADING"] == "1"
        assert 0 < int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        _, reloaded = await notify.next()
        assert reloaded == {"READY": "1", "STATUS": "serving, certificates reloaded"}
        stream = await open_client(server.address, client_config)
        async with stream:
            _, status = await notify.wait_for("STATUS")
            assert status == {"STATUS": "serving, 1 connection open"}
            server.signal(signal.SIGTERM)
            _, stopping = await notify.wait_for("STOPPING")
            assert stopping == {"STOPPING": "1", "STATUS": "stopping"}
        code, err = server.wait()
    assert code == 0, err


async def test_socket_activation_by_name_with_the_real_tool(
    tmp_path: Path, certs: Path, notify: NotifySocket
) -> None:
    port = free_port()
    program = activated(port, "echo")
    env = {"NOTIFY_SOCKET": str(notify.path)}
    with ServeProcess(
        "--listen", "systemd:echo", cwd=tmp_path, env=env, program=program, listeners=0
    ) as server:
        assert await server.stderr.await_line(f"Listening on 127.0.0.1:{port}")
        # The tool starts the server at the first connection (it is already queued then).
        client = await trio.to_thread.run_sync(
            lambda: run_cli("client", "--connect", f"127.0.0.1:{port}", cwd=tmp_path)
        )
        assert client.returncode == 0, client.stderr
        assert await server.stdout.await_line() == f"listening on 127.0.0.1:{port}"
        pid, _ = await notify.wait_for("READY")
        assert pid == server.proc.pid  # the tool exec()s the server: systemd's main process
        code, err = server.stop()
    assert code == 0, err
    assert "Traceback" not in err


async def test_workers_share_systemd_sockets_and_only_the_supervisor_notifies(
    tmp_path: Path, certs: Path, notify: NotifySocket
) -> None:
    port = free_port()
    env = {"NOTIFY_SOCKET": str(notify.path)}
    program = activated(port)
    args = ("--listen", "systemd", "--workers", "2")
    with ServeProcess(*args, cwd=tmp_path, env=env, program=program, listeners=0) as server:
        assert await server.stderr.await_line(f"Listening on 127.0.0.1:{port}")
        for _ in range(3):
            client = await trio.to_thread.run_sync(
                lambda: run_cli("client", "--connect", f"127.0.0.1:{port}", cwd=tmp_path)
            )
            assert client.returncode == 0, client.stderr
        assert await server.stdout.await_line() == f"listening on 127.0.0.1:{port}"
        _, ready = await notify.next()
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("2 workers serving, ")
        server.signal(signal.SIGHUP)
        await notify.wait_for("RELOADING")
        _, reloaded = await notify.wait_for("READY")
        assert reloaded["STATUS"] == "2 workers serving, certificates reloaded"
        server.signal(signal.SIGTERM)
        pid, _ = await notify.wait_for("STOPPING")
        assert pid == server.proc.pid
        code, err = server.wait()
    assert code == 0, err
    assert "2 workers serving" in err
    # Two workers, and yet every notification came from the supervisor.
    assert {pid for pid, _ in [*notify.seen, *await notify.rest()]} == {server.proc.pid}


async def test_an_inherited_descriptor(tmp_path: Path, certs: Path) -> None:
    port = free_port()
    program = activated(port)[:3] + list(PY)  # no names, no NOTIFY_SOCKET
    with ServeProcess("--listen", "fd://3", cwd=tmp_path, program=program, listeners=0) as server:
        assert await server.stderr.await_line(f"Listening on 127.0.0.1:{port}")
        client = await trio.to_thread.run_sync(
            lambda: run_cli("client", "--connect", f"127.0.0.1:{port}", cwd=tmp_path)
        )
        assert client.returncode == 0, client.stderr
        assert await server.stdout.await_line() == f"listening on 127.0.0.1:{port}"
        code, err = server.stop()
    assert code == 0, err


def test_systemd_without_sockets_is_one_line(
    tmp_path: Path, certs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert main(["serve", "--listen", "systemd"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "trio-tlsecho: error: cannot listen on systemd: systemd passed no sockets (LISTEN_FDS is not set:"
        " start this from a .socket unit, or with systemd-socket-activate)"
    )
    # Sockets for another process (the variables leaked into a child of the real one).
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    assert main(["serve", "--listen", "systemd"]) == 2
    assert error_line(capsys.readouterr().err).endswith("the sockets are for process 1, not this one")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDNAMES", "https")
    assert main(["serve", "--listen", "systemd:echo"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "trio-tlsecho: error: cannot listen on systemd:echo: systemd passed no socket of that name"
        " (names: https)"
    )
    # Sockets without names: say where a name comes from.
    monkeypatch.delenv("LISTEN_FDNAMES")
    assert main(["serve", "--listen", "systemd:echo"]) == 2
    assert error_line(capsys.readouterr().err).endswith(
        "systemd passed no socket of that name (name one with FileDescriptorName=echo in the .socket unit)"
    )


def test_a_descriptor_that_is_no_listening_socket_is_one_line(
    tmp_path: Path, certs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with (tmp_path / "plain").open("w") as plain, socket.socket() as unbound:
        assert main(["serve", "--listen", f"fd://{plain.fileno()}"]) == 2
        assert error_line(capsys.readouterr().err).startswith(
            f"trio-tlsecho: error: cannot listen on fd://{plain.fileno()}: descriptor {plain.fileno()}:"
        )
        assert main(["serve", "--listen", f"fd://{unbound.fileno()}"]) == 2
        assert error_line(capsys.readouterr().err) == (
            f"trio-tlsecho: error: cannot listen on fd://{unbound.fileno()}: descriptor"
            f" {unbound.fileno()} is not a listening stream socket"
        )
        unbound.getsockname()  # still ours, still open


def test_notifications_go_to_abstract_names_and_nowhere_without_the_variable() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        name = f"trio-tlsecho-test-{os.getpid()}"
        receiver.bind("\0" + name)
        Notifier("@" + name).stopping()
        assert receiver.recv(100) == b"STOPPING=1\nSTATUS=stopping"
    assert not Notifier(None).enabled
    Notifier(None).stopping()  # nothing to send it to: nothing happens
