"""serve --workers: SO_REUSEPORT processes under a supervisor."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio

from trio_tlsecho import Address, ClientConfig, ServerConfig, TLSFiles, echo_once, open_client
from trio_tlsecho._server import bind_reuse_port, open_reuse_port_listeners

from .tools import Lines

PY = [sys.executable, "-m", "trio_tlsecho"]


async def test_reuse_port_listeners_share_a_port() -> None:
    [first] = await open_reuse_port_listeners(Address("127.0.0.1", 0))
    port = first.socket.getsockname()[1]
    [second] = await open_reuse_port_listeners(Address("127.0.0.1", port))
    [held] = await bind_reuse_port(Address("127.0.0.1", port), listen=False)
    async with first, second:
        held.close()
        assert second.socket.getsockname()[1] == port


class Supervisor:
    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*PY, "serve", "--listen", "127.0.0.1:0", "--workers", "2", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.stdout, self.stderr = self.proc.stdout, Lines(self.proc.stderr)
        self.metrics_url = ""
        line = self.stdout.readline()
        if line.startswith("metrics on "):
            self.metrics_url = line.split()[-1]
            line = self.stdout.readline()
        assert line.startswith("listening on "), line
        self.address = Address.parse(line.split()[-1])
        pids = self.stderr.wait_for("workers serving: pids")
        self.pids = [int(p) for p in re.findall(r"\d+", pids.split("pids")[1])]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        err = self.stderr.rest()
        self.stdout.close()
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return err


@pytest.fixture
def certs(tmp_path: Path, pki: Path) -> Path:
    shutil.copytree(pki, tmp_path / "certs")
    return tmp_path


async def _echo_many(address: Address, client: ClientConfig, n: int) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(echo_once, address, client, os.urandom(100 + i))


def test_workers_share_the_load_and_metrics_add_up(certs: Path, client_config: ClientConfig) -> None:
    sup = Supervisor(certs, "--metrics", "127.0.0.1:0")
    try:
        assert len(sup.pids) == 2
        trio.run(_echo_many, sup.address, client_config, 40)
        with urllib.request.urlopen(sup.metrics_url, timeout=10) as response:
            text = response.read().decode()
        assert "tlsecho_connections_total 40.0" in text
        assert 'tlsecho_handshakes_total{result="ok"} 40.0' in text
    finally:
        err = sup.stop()
    assert sup.proc.returncode == 0, err
    served = {int(w) for w in re.findall(r"\[worker (\d)\] \S+: connected", err)}
    assert served == {0, 1}  # the kernel spread 40 connections over both
    assert "all workers stopped" in err
    assert "Traceback" not in err


def test_crashed_worker_is_restarted_and_counts_survive(certs: Path, client_config: ClientConfig) -> None:
    sup = Supervisor(certs, "--metrics", "127.0.0.1:0")
    try:
        trio.run(_echo_many, sup.address, client_config, 10)
        os.kill(sup.pids[0], signal.SIGKILL)
        assert sup.stderr.wait_for(f"worker 0 (pid {sup.pids[0]}) exited with signal 9; restarting")
        assert sup.stderr.wait_for("worker 0 restarted: pid")
        trio.run(_echo_many, sup.address, client_config, 10)
        with urllib.request.urlopen(sup.metrics_url, timeout=10) as response:
            text = response.read().decode()
        assert "tlsecho_connections_total 20.0" in text  # nothing lost with the dead worker
    finally:
        err = sup.stop()
    assert sup.proc.returncode == 0, err


def test_sigterm_drains_and_sighup_reaches_every_worker(certs: Path, client_config: ClientConfig) -> None:
    sup = Supervisor(certs)
    try:
        sup.proc.send_signal(signal.SIGHUP)
        first = sup.stderr.wait_for("reloaded certificate")
        second = sup.stderr.wait_for("reloaded certificate")
        assert {first[first.index("[worker") :][:10], second[second.index("[worker") :][:10]} == {
            "[worker 0]",
            "[worker 1]",
        }

        async def in_flight() -> None:
            stream = await open_client(sup.address, client_config)
            payload = os.urandom(4 << 20)
            got = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, payload)
                got += await stream.receive_some(65536)
                sup.proc.send_signal(signal.SIGTERM)  # mid-echo
                while len(got) < len(payload):
                    chunk = await stream.receive_some(65536)
                    assert chunk
                    got += chunk
            assert got == payload
            await stream.aclose()

        trio.run(in_flight)
    finally:
        err = sup.stop()
    assert sup.proc.returncode == 0, err
    assert "SIGTERM received, stopping workers gracefully" in err
    assert "Traceback" not in err


def test_worker_startup_errors_are_one_line(certs: Path, pki: Path) -> None:
    result = subprocess.run(
        [*PY, "serve", "--workers", "2", "--listen", "127.0.0.1:0", "--key", str(pki / "client.key"),
         "--cert", str(pki / "server.pem")],
        cwd=certs, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "does not match certificate" in line


def test_workers_need_a_named_handler(pki: Path) -> None:
    from trio_tlsecho._exceptions import TLSEchoError
    from trio_tlsecho._workers import supervise

    async def inline(conn: object) -> None:
        raise AssertionError("never called")

    config = ServerConfig(tls=TLSFiles.from_dir(pki, "server"), listen=["127.0.0.1:0"], handler=inline)
    with pytest.raises(TLSEchoError, match="by name or module:attr"):
        trio.run(lambda: supervise(config, 2, on_started=print))


def test_metrics_port_in_use_fails_before_any_worker_starts(certs: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*PY, "serve", "--workers", "2", "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}"],
            cwd=certs,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in line
