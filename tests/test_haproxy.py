"""Two instances behind a real HAProxy in TCP mode with send-proxy-v2."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_tlsecho import Address, ClientConfig, LoadConfig, open_client, run_load

from .tools import require_tool

CLIENTS = 12


class Instance:
    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_tlsecho", "serve", "--listen", "127.0.0.1:0", "--proxy-protocol",
             "--proxy-from", "127.0.0.1/32"],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.address = line.split()[-1]

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return err


@pytest.fixture
def balanced(tmp_path: Path, pki: Path) -> Iterator[tuple[Address, list[Instance]]]:
    haproxy = require_tool("haproxy", "haproxy")
    shutil.copytree(pki, tmp_path / "certs")
    instances: list[Instance] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_kill, instances)
        instances += [Instance(tmp_path), Instance(tmp_path)]
        # We bind the frontend socket and hand it to HAProxy (bind fd@N): no port race,
        # and clients can connect at once (the backlog holds them until HAProxy accepts).
        with socket.socket() as frontend:
            frontend.bind(("127.0.0.1", 0))
            frontend.listen(64)
            port = frontend.getsockname()[1]
            config = tmp_path / "haproxy.cfg"
            config.write_text(_readme_config(frontend.fileno(), [inst.address for inst in instances]))
            fds = [frontend.fileno()]
            check = subprocess.run(
                [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30, pass_fds=fds
            )
            assert check.returncode == 0, check.stdout + check.stderr
            proc = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=fds,
            )
        # HAProxy holds the frontend socket now; ours is closed.
        cleanup.callback(lambda: (proc.terminate(), proc.communicate(timeout=30)))
        yield Address("127.0.0.1", port), instances


def _readme_config(fd: int, backends: list[str]) -> str:
    """The README's HAProxy configuration, with our frontend socket and instances in it."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme[readme.index("<!-- haproxy-config") :]
    start = block.index("```\n") + 4
    text = block[start : block.index("\n```", start)]
    servers = iter(backends)
    lines = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["bind"]:
            line = f"    bind fd@{fd}"
        elif words[:1] == ["server"]:
            line = " ".join(["   ", *words[:2], next(servers), *words[3:]])
        lines.append(line)
    assert next(servers, None) is None, "the README's backend lists as many servers as we start"
    return "\n".join(lines) + "\n"


def _kill(instances: list[Instance]) -> None:
    for inst in instances:
        if inst.proc.poll() is None:
            inst.proc.kill()
            inst.proc.communicate()


def test_behind_haproxy_logs_show_the_real_client(
    balanced: tuple[Address, list[Instance]], client_config: ClientConfig, pki: Path
) -> None:
    address, instances = balanced
    client_ports: list[int] = []

    async def one(i: int) -> None:
        stream = await open_client(address, client_config)
        client_ports.append(stream.transport_stream.socket.getsockname()[1])
        payload = f"message {i} ".encode() * 100
        await stream.send_all(payload)
        got = b""
        while len(got) < len(payload):
            got += await stream.receive_some(65536)
        assert got == payload
        await stream.aclose()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(one, i)

    trio.run(main)
    logs = [inst.stop() for inst in instances]
    pattern = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d+) \(via 127\.0\.0\.1:(\d+)\): connected")
    seen = [[m.groups() for m in pattern.finditer(log)] for log in logs]
    assert all(seen), "both instances served connections"
    real_ports = sorted(int(port) for per in seen for _, port, _ in per)
    assert real_ports == sorted(client_ports)
    # "via" is HAProxy's own connection, not the client's again.  (Not "no via port is
    # a client port": HAProxy's connections to us and the clients' to HAProxy draw
    # local ports independently, and one may reuse a number the other uses.)
    via_ports = {int(via) for per in seen for _, _, via in per}
    assert via_ports != set(client_ports)
    assert {host for per in seen for host, _, _ in per} == {"127.0.0.1"}


def test_load_generator_through_haproxy(
    balanced: tuple[Address, list[Instance]], client_config: ClientConfig
) -> None:
    address, instances = balanced
    config = LoadConfig(address=address, client=client_config, clients=8, requests=400, sizes="1-2000")
    report = trio.run(run_load, config)
    assert report.round_trips == 400
    assert report.mismatches == 0
    assert report.error_count == 0
    logs = [inst.stop() for inst in instances]
    pattern = re.compile(r"127\.0\.0\.1:(\d+) \(via 127\.0\.0\.1:(\d+)\): connected")
    per_instance = [pattern.findall(log) for log in logs]
    assert all(per_instance), "both instances served the load generator"
    assert sum(map(len, per_instance)) == 8
    for real, via in (pair for found in per_instance for pair in found):
        assert real != via  # the load generator's own port, not HAProxy's
