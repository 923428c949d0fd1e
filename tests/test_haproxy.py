"""Two instances behind a real HAProxy in TCP mode with send-proxy-v2."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_tlsecho import Address, ClientConfig, LoadConfig, open_client, run_load

from .conftest import receive_until
from .processes import ServeProcess
from .tools import require_tool

CLIENTS = 12
#: How each instance is started, as the README says (with our balancer's address).
INSTANCE = ("--listen", "127.0.0.1:0", "--proxy-protocol", "--proxy-from", "127.0.0.1/32")


@pytest.fixture
def balanced(tmp_path: Path, certs: Path) -> Iterator[tuple[Address, list[ServeProcess]]]:
    haproxy = require_tool("haproxy", "haproxy")
    with contextlib.ExitStack() as cleanup:
        instances = [cleanup.enter_context(ServeProcess(*INSTANCE, cwd=tmp_path)) for _ in range(2)]
        # We bind the frontend socket and hand it to HAProxy (bind fd@N): no port race,
        # and clients can connect at once (the backlog holds them until HAProxy accepts).
        with socket.socket() as frontend:
            frontend.bind(("127.0.0.1", 0))
            frontend.listen(64)
            port = frontend.getsockname()[1]
            config = tmp_path / "haproxy.cfg"
            config.write_text(_readme_config(frontend.fileno(), [str(inst.address) for inst in instances]))
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


def _logs(instances: list[ServeProcess]) -> list[str]:
    """Each instance's log, once it has stopped cleanly."""
    logs = []
    for instance in instances:
        code, err = instance.stop()
        assert code == 0, err
        logs.append(err)
    return logs


def test_behind_haproxy_logs_show_the_real_client(
    balanced: tuple[Address, list[ServeProcess]], client_config: ClientConfig, pki: Path
) -> None:
    address, instances = balanced
    client_ports: list[int] = []

    async def one(i: int) -> None:
        stream = await open_client(address, client_config)
        client_ports.append(stream.transport_stream.socket.getsockname()[1])
        payload = f"message {i} ".encode() * 100
        await stream.send_all(payload)
        assert await receive_until(stream, len(payload)) == payload
        await stream.aclose()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(one, i)

    trio.run(main)
    logs = _logs(instances)
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
    balanced: tuple[Address, list[ServeProcess]], client_config: ClientConfig
) -> None:
    address, instances = balanced
    config = LoadConfig(address=address, client=client_config, clients=8, requests=400, sizes="1-2000")
    report = trio.run(run_load, config)
    assert report.round_trips == 400
    assert report.mismatches == 0
    assert report.error_count == 0
    logs = _logs(instances)
    pattern = re.compile(r"127\.0\.0\.1:(\d+) \(via 127\.0\.0\.1:(\d+)\): connected")
    per_instance = [pattern.findall(log) for log in logs]
    assert all(per_instance), "both instances served the load generator"
    assert sum(map(len, per_instance)) == 8
    for real, via in (pair for found in per_instance for pair in found):
        assert real != via  # the load generator's own port, not HAProxy's
