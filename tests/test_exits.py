"""How every command ends when the user ends it: Ctrl-C, or a reader that closed our stdout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from trio_tlsecho._program import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, run_program

from .processes import PY, Lines


def _interrupt() -> int:
    raise KeyboardInterrupt


def _interrupt_in_a_group() -> int:
    # What a nursery makes of Ctrl-C while a task fails because of it.
    raise BaseExceptionGroup("", [KeyboardInterrupt(), ExceptionGroup("", [trio.BrokenResourceError()])])


@pytest.mark.parametrize("body", [_interrupt, _interrupt_in_a_group])
def test_ctrl_c_is_status_130_without_a_word(body: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_program(body) == EXIT_INTERRUPTED  # type: ignore[arg-type]
    assert capsys.readouterr() == ("", "")


def test_a_broken_pipe_that_is_not_stdout_is_a_bug() -> None:
    # stdout here is pytest's capture, still read: the EPIPE came from somewhere else.
    def body() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        run_program(body)


def test_ctrl_c_on_a_client_mid_handshake_is_130_without_a_traceback(pki: Path) -> None:
    # A peer that accepts and never answers: the client waits in its handshake.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        command = [*PY, "client", "--connect", f"127.0.0.1:{port}", "--timeout", "60", "--certs", str(pki)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stderr is not None
            err = Lines(proc.stderr)
            silent.settimeout(60)
            peer, _ = silent.accept()
            with peer:
                peer.recv(1)  # its ClientHello: it is inside trio.run now
                proc.send_signal(signal.SIGINT)
                assert proc.wait(60) == EXIT_INTERRUPTED
            assert err.all() == ""


def test_a_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head` that has already read all it wanted
    with os.fdopen(write, "wb") as stdout:
        done = subprocess.run(
            [*PY, "certs", "--out", str(tmp_path / "certs")],
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert done.stderr == b""
    assert done.returncode == EXIT_BROKEN_PIPE
