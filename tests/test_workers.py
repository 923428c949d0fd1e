"""serve --workers: SO_REUSEPORT processes under a supervisor."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import re
import select
import signal
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_tlsecho import Address, ClientConfig, ServerConfig, ServerMetrics, TLSFiles, echo_once, open_client
from trio_tlsecho._net import bind_reuse_port, open_reuse_port_listeners
from trio_tlsecho._process import _workers

from .conftest import receive_until
from .logs import ServerLog, error_line
from .processes import ServeProcess, run_cli


async def test_reuse_port_listeners_share_a_port() -> None:
    [first] = await open_reuse_port_listeners(Address("127.0.0.1", 0))
    port = first.socket.getsockname()[1]
    [second] = await open_reuse_port_listeners(Address("127.0.0.1", port))
    [held] = await bind_reuse_port(Address("127.0.0.1", port), listen=False)
    async with first, second:
        held.close()
        assert second.socket.getsockname()[1] == port


def _supervisor(cwd: Path, *args: str, **kwargs: Any) -> ServeProcess:
    """``serve`` with two workers."""
    return ServeProcess("--workers", "2", "--listen", "127.0.0.1:0", *args, cwd=cwd, **kwargs)


def _start_fails(cwd: Path, *args: str, listen: str = "127.0.0.1:0") -> str:
    """Run ``serve`` with two workers that must stop at a user's mistake (status 2); its stderr."""
    result = run_cli("serve", "--workers", "2", "--listen", listen, *args, cwd=cwd)
    assert result.returncode == 2, result.stderr
    return result.stderr


def _pids(supervisor: ServeProcess) -> list[int]:
    """The workers' process ids, from the supervisor's log."""
    line = supervisor.stderr.wait_for("workers serving: pids")
    assert line
    return [int(p) for p in re.findall(r"\d+", line.split("pids")[1])]


async def _echo_many(address: Address, client: ClientConfig, n: int) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(echo_once, address, client, os.urandom(100 + i))


def test_workers_share_the_load_and_metrics_add_up(
    tmp_path: Path, certs: Path, client_config: ClientConfig
) -> None:
    with _supervisor(tmp_path, "--metrics", "127.0.0.1:0") as sup:
        assert len(_pids(sup)) == 2
        trio.run(_echo_many, sup.address, client_config, 40)
        with urllib.request.urlopen(sup.metrics_url, timeout=10) as response:
            text = response.read().decode()
        assert "tlsecho_connections_total 40.0" in text
        assert 'tlsecho_handshakes_total{result="ok"} 40.0' in text
        code, err = sup.stop()
    assert code == 0, err
    served = {int(w) for w in re.findall(r"\[worker (\d)\] \S+: connected", err)}
    assert served == {0, 1}  # the kernel spread 40 connections over both
    assert "all workers stopped" in err
    assert "Traceback" not in err


def test_crashed_worker_is_restarted_and_counts_survive(
    tmp_path: Path, certs: Path, client_config: ClientConfig
) -> None:
    with _supervisor(tmp_path, "--metrics", "127.0.0.1:0") as sup:
        first, _ = _pids(sup)
        trio.run(_echo_many, sup.address, client_config, 10)
        os.kill(first, signal.SIGKILL)
        assert sup.stderr.wait_for(f"worker 0 (pid {first}) exited with signal 9; restarting")
        assert sup.stderr.wait_for("worker 0 restarted: pid")
        trio.run(_echo_many, sup.address, client_config, 10)
        with urllib.request.urlopen(sup.metrics_url, timeout=10) as response:
            text = response.read().decode()
        assert "tlsecho_connections_total 20.0" in text  # nothing lost with the dead worker
        code, err = sup.stop()
    assert code == 0, err


def test_sigterm_drains_and_sighup_reaches_every_worker(
    tmp_path: Path, certs: Path, client_config: ClientConfig
) -> None:
    with _supervisor(tmp_path) as sup:
        sup.signal(signal.SIGHUP)
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
                sup.signal(signal.SIGTERM)  # mid-echo
                got += await receive_until(stream, len(payload) - len(got))
            assert got == payload
            await stream.aclose()

        trio.run(in_flight)
        code, err = sup.stop()
    assert code == 0, err
    assert "SIGTERM received, stopping workers gracefully" in err
    assert "Traceback" not in err


def test_a_second_stop_signal_stops_the_workers_now(
    tmp_path: Path, certs: Path, client_config: ClientConfig
) -> None:
    # An hour of grace and no idle timeout: the connection can only end by "stop now".
    with _supervisor(tmp_path, "--shutdown-grace", "3600", "--idle-timeout", "0") as sup:

        async def held_open() -> bytes:
            stream = await open_client(sup.address, client_config)
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
            sup.signal(signal.SIGTERM)
            # Each worker must have read the first before it gets the second: a signal
            # that arrives while the same one is pending is lost.
            for _ in range(2):
                assert await sup.stderr.await_line("SIGTERM received, shutting down")
            sup.signal(signal.SIGINT)  # any stop signal, as Ctrl-C after a systemctl stop
            try:
                with trio.fail_after(60):  # a guard against the hang this test is for
                    rest = await stream.receive_some()
            except trio.BrokenResourceError:
                rest = b""
            await stream.aclose()
            return rest

        assert trio.run(held_open) == b""
        code, err = sup.wait()
    assert code == 0, err  # the stop began with SIGTERM
    assert "SIGINT received again, stopping workers now" in err
    assert re.search(r"\[worker \d\] SIGTERM received again, stopping now", err), err
    assert "all workers stopped" in err
    assert "Traceback" not in err


async def _signals(*signums: int) -> AsyncIterator[int]:
    for signum in signums:
        yield signum


async def test_the_supervisor_relays_each_signal_as_what_it_means_to_a_worker(
    pki: Path, monkeypatch: pytest.MonkeyPatch, log: ServerLog
) -> None:
    config = ServerConfig(tls=TLSFiles.from_dir(pki, "server"), listen=["127.0.0.1:0"], handler="echo")
    supervisor = _workers._Supervisor(config, [ServerMetrics(), ServerMetrics()], "unused", "INFO")
    sent: list[int] = []
    monkeypatch.setattr(supervisor, "signal_all", sent.append)
    await supervisor.relay(
        _signals(signal.SIGHUP, signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    )
    for message in [
        "SIGHUP received, reloading certificates in every worker",
        "SIGINT received, stopping workers gracefully",
        "SIGHUP received while stopping: not reloading",  # relayed to no worker
        "SIGTERM received again, stopping workers now",
        "SIGINT received again, stopping workers now",
    ]:
        await log.wait_for(message)
    # SIGTERM is a worker's one stop signal: its second is its "stop now" too.
    assert sent == [signal.SIGHUP, signal.SIGTERM, signal.SIGTERM, signal.SIGTERM]
    assert supervisor.state.stopping


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path, certs: Path) -> None:
    # SIGKILL gives the supervisor no chance to stop its workers: the kernel must.
    with _supervisor(tmp_path) as sup:
        pids = _pids(sup)
        exits = select.poll()
        handles = [os.pidfd_open(pid) for pid in pids]  # readable once the process has ended
        try:
            for handle in handles:
                exits.register(handle, select.POLLIN)
            sup.proc.kill()
            ended: set[int] = set()
            deadline = time.monotonic() + 30
            while len(ended) < len(handles) and time.monotonic() < deadline:
                ended.update(fd for fd, _ in exits.poll(1000))
        finally:
            for handle in handles:
                os.close(handle)
        assert len(ended) == len(pids), "a worker outlived its killed supervisor"
        err = sup.stderr.all()
    assert re.search(r"\[worker \d\] SIGTERM received, shutting down", err), err


def test_worker_startup_errors_are_one_line(tmp_path: Path, certs: Path) -> None:
    line = error_line(_start_fails(tmp_path, "--key", "certs/client.key", "--cert", "certs/server.pem"))
    assert "does not match certificate" in line


def test_workers_need_a_named_handler(pki: Path) -> None:
    from trio_tlsecho._exceptions import TLSEchoError
    from trio_tlsecho._process import supervise

    async def inline(conn: object) -> None:
        raise AssertionError("never called")

    config = ServerConfig(tls=TLSFiles.from_dir(pki, "server"), listen=["127.0.0.1:0"], handler=inline)
    with pytest.raises(TLSEchoError, match="by name or module:attr"):
        trio.run(lambda: supervise(config, 2, on_started=print))


def test_metrics_port_in_use_fails_before_any_worker_starts(tmp_path: Path, certs: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = error_line(_start_fails(tmp_path, "--metrics", f"127.0.0.1:{port}"))
    assert f"cannot serve metrics on 127.0.0.1:{port}" in line


# -- workers that start while something happens ----------------------------------------

_HOLD_HOOK = """\
import os, socket, sys

# A spawned process, while the test has the hold armed: say who we are, then wait for
# the test to let us go, all before Python has run any of the worker's own code.
if "--multiprocessing-fork" in sys.orig_argv:
    try:
        with open(os.path.join(os.environ["TLSECHO_TEST_HOLD"], "port")) as armed:
            port = int(armed.read())
        sock = socket.create_connection(("127.0.0.1", port))
    except OSError:
        pass  # not armed
    else:
        with sock:
            sock.sendall(b"%d\\n" % os.getpid())
            sock.recv(1)
"""


class Held:
    """A worker process stopped in its interpreter's start-up by a :class:`Hold`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        with sock.makefile("rb") as lines:
            self.pid = int(lines.readline())

    def release(self) -> None:
        with contextlib.suppress(OSError), self.sock:  # a worker that died cannot be let go
            self.sock.sendall(b"g")

    def wait_gone(self) -> bool:
        """Whether the process ended (its end of the connection closed) within the timeout."""
        with self.sock:
            try:
                return self.sock.recv(1) == b""
            except TimeoutError:
                return False


class Hold:
    """Stops every worker started while armed before it runs our code, until released.

    A ``sitecustomize`` on the children's PYTHONPATH connects to us at interpreter
    start-up: the moment a spawned worker is most exposed (no handlers of ours yet).
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        (directory / "sitecustomize.py").write_text(_HOLD_HOOK)
        self.directory = directory
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
        self.env = {"PYTHONPATH": path, "TLSECHO_TEST_HOLD": str(directory)}

    def arm(self) -> None:
        (self.directory / "port").write_text(str(self.listener.getsockname()[1]))

    def disarm(self) -> None:
        (self.directory / "port").unlink(missing_ok=True)
        self.listener.close()  # a worker that read the port already is refused, so not held

    def held(self) -> Held:
        sock, _ = self.listener.accept()  # bounded by the listener's timeout
        sock.settimeout(30)
        return Held(sock)


def test_a_port_held_by_another_server_is_in_use(tmp_path: Path, certs: Path) -> None:
    # Without the check, SO_REUSEPORT let the second join the first's group silently.
    with _supervisor(tmp_path) as first:
        second = _start_fails(tmp_path, listen=str(first.address))
    assert second.strip().splitlines()[-1] == (
        f"trio-tlsecho: error: cannot listen on {first.address}: address already in use"
    )


def test_a_key_broken_before_a_restart_is_one_line_per_attempt(tmp_path: Path, certs: Path) -> None:
    with _supervisor(tmp_path) as sup:
        first, _ = _pids(sup)
        (certs / "server.key").write_text("not a key\n")
        os.kill(first, signal.SIGKILL)
        error = sup.stderr.wait_for("worker 0: error:")
        assert "server.key" in error, error
        # "restarting it" (" in 1s" only when it died within a second: not on a busy machine)
        assert sup.stderr.wait_for("exited with status 2; restarting it")
        code, err = sup.stop()
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["reload", "stop"])
def test_a_signal_while_a_worker_restarts(tmp_path: Path, certs: Path, sig: signal.Signals) -> None:
    # A reload must not kill the restarting worker; a stop ends it, and that is not
    # reported as its failure.
    hold = Hold(tmp_path / "hold")
    with _supervisor(tmp_path, env=hold.env) as sup:
        first, _ = _pids(sup)
        hold.arm()
        os.kill(first, signal.SIGKILL)
        restarting = hold.held()
        hold.disarm()
        sup.signal(sig)
        # The supervisor relays to worker 0 before worker 1: once 1 has it, so has 0.
        assert sup.stderr.wait_for(f"[worker 1] {sig.name} received")
        restarting.release()
        if sig == signal.SIGHUP:
            assert sup.stderr.wait_for(f"worker 0 restarted: pid {restarting.pid}")
        code, err = sup.stop()
    assert code == 0, err
    assert "did not come back" not in err
    assert "all workers stopped" in err


def test_ctrl_c_while_workers_start_stops_them_cleanly(tmp_path: Path, certs: Path) -> None:
    hold = Hold(tmp_path / "hold")
    hold.arm()
    # Waiting for nothing: the supervisor says "listening on" once its workers have started.
    with _supervisor(tmp_path, env=hold.env, new_session=True, listeners=0) as sup:
        starting = [hold.held(), hold.held()]
        hold.disarm()
        os.killpg(sup.proc.pid, signal.SIGINT)  # what Ctrl-C sends
        for worker in starting:
            worker.release()
        code, err = sup.wait()
        out = sup.stdout.all()
    assert code == 130, err  # Ctrl-C: a graceful stop, and the shell's status for it
    assert out.startswith("listening on "), out
    assert "SIGINT received, stopping workers gracefully" in err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err


async def test_a_worker_hung_while_restarting_is_killed_and_replaced(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: ServerLog
) -> None:
    hold = Hold(tmp_path / "hold")
    for name, value in hold.env.items():
        monkeypatch.setenv(name, value)  # in the environment that spawned workers inherit
    started = trio.Event()

    def on_started(addresses: list[Address]) -> None:
        # Only the restart must give up this soon: two first starts on a busy machine take longer.
        monkeypatch.setattr(_workers, "_STARTUP_TIMEOUT", 0.5)
        started.set()

    config = ServerConfig(tls=TLSFiles.from_dir(pki, "server"), listen=["127.0.0.1:0"], handler="echo")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(_workers.supervise, config, 2, on_started=on_started))
            with trio.fail_after(60):
                await started.wait()
            [first] = [p.pid for p in multiprocessing.active_children() if p.name == "trio-tlsecho-worker-0"]
            assert first is not None
            hold.arm()
            os.kill(first, signal.SIGKILL)
            hung = await trio.to_thread.run_sync(hold.held)
            assert await trio.to_thread.run_sync(hung.wait_gone), "the hung worker was left running"
            monkeypatch.setattr(_workers, "_STARTUP_TIMEOUT", 60.0)
            hold.disarm()
            assert "did not start within 0.5s; killed it" in await log.wait_for("worker 0 did not come back")
            await log.wait_for("worker 0 restarted: pid")
            nursery.cancel_scope.cancel()
    finally:
        hold.disarm()
