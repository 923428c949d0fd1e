"""The README's commands and example do what it says they do."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .processes import PY, ServeProcess

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def test_first_lines_are_the_two_commands() -> None:
    head = README.split("\n## ", 1)[0]
    first_text = head.index("The first line")
    blocks = re.findall(r"```sh\n(.*?)\n```", head[:first_text], flags=re.DOTALL)
    assert len(blocks) == 2
    run, test = blocks
    assert run.endswith("python -m trio_tlsecho serve")
    assert test.endswith("python -m pytest")
    # CI runs exactly the README's test command.
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_embedding_example_runs(tmp_path: Path) -> None:
    marker = "<!-- embedding-example"
    code = re.search(r"```python\n(.*?)```", README[README.index(marker) :], flags=re.DOTALL)
    assert code is not None
    assert len(code.group(1).splitlines()) <= 30
    result = subprocess.run(
        [sys.executable, "-c", code.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "b'client: HELLO'\n"


def _readme_command(subcommand: str) -> list[str]:
    [line] = [
        line
        for block in _blocks("sh")
        for line in block.splitlines()
        if line.startswith(".venv/bin/python -m trio_tlsecho " + subcommand)
    ]
    return [sys.executable, *shlex.split(line)[1:]]


def test_try_it_commands(tmp_path: Path) -> None:
    """`serve` exactly as the first README line starts it, then the README's `client` line."""
    assert " ".join([*PY[1:], "serve"]) in _blocks("sh")[0]
    # The README's command takes the default port: say so plainly if something has it.
    with socket.socket() as probe:
        # As the server binds (trio sets it): a TIME_WAIT left by an earlier run is no owner.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 8443))
        except OSError as exc:
            pytest.fail(f"port 8443, which the README's serve uses, is taken ({exc.strerror}): free it")
    with ServeProcess(cwd=tmp_path) as server:  # never left holding 8443 for the next run
        assert server.stdout.seen == ["listening on 127.0.0.1:8443"]
        client = subprocess.run(
            _readme_command("client"), cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert client.returncode == 0, client.stderr
        assert "connected to 127.0.0.1:8443" in client.stdout
        assert "verdict:               OK" in client.stdout
        code, err = server.stop()
    assert code == 0, err


def test_the_handler_test_example_passes(tmp_path: Path) -> None:
    """The "Testing your handler" example, run as the README says, with the plugin enabled by ``-p``."""
    marker = "<!-- handler-test-example"
    code = re.search(r"```python\n(.*?)```", README[README.index(marker) :], flags=re.DOTALL)
    assert code is not None
    (tmp_path / "test_greeter.py").write_text(code.group(1))
    [line] = [
        line
        for block in _blocks("sh")
        for line in block.splitlines()
        if line.startswith(".venv/bin/python -m pytest -p trio_tlsecho.testing ")
    ]
    command = [sys.executable, *shlex.split(line)[1:]]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
