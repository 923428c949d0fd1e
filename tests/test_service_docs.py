"""README's "Running as a service": the units, the file and the commands it shows work."""

from __future__ import annotations

import configparser
import re
import shlex
import socket
import sys
import tomllib
from pathlib import Path

import pytest

from trio_tlsecho._cli import parse_args
from trio_tlsecho._net import SystemdSockets

from .processes import ServeProcess, run_cli
from .test_help import help_text
from .test_settings import EXAMPLE
from .tools import require_tool

README = (Path(__file__).parent.parent / "README.md").read_text()
SECTION = README.split("\n## Running as a service\n", 1)[1].split("\n## ", 1)[0]
SCRIPTS = Path(sys.executable).parent


def block(marker: str, lang: str) -> str:
    found = re.search(rf"```{lang}\n(.*?)```", SECTION[SECTION.index(f"<!-- {marker}:") :], flags=re.DOTALL)
    assert found is not None
    return found.group(1)


def unit(marker: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(block(marker, "ini"))
    return parser


def free_ports(n: int) -> list[int]:
    probes = [socket.socket() for _ in range(n)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [int(probe.getsockname()[1]) for probe in probes]
    for probe in probes:
        probe.close()
    return ports


def test_the_service_runs_serve_on_the_sockets_unit_with_the_example_file() -> None:
    exec_start = shlex.split(unit("service-unit")["Service"]["ExecStart"])
    service = unit("service-unit")["Service"]
    assert service["Type"] == "notify"
    command = exec_start[exec_start.index("serve") :]
    command[command.index("/etc/trio-tlsecho/serve.toml")] = str(EXAMPLE)
    args = parse_args(command, {})
    [listen] = args.listen
    assert listen == SystemdSockets(unit("service-socket")["Socket"]["FileDescriptorName"])
    assert args.workers == 4  # from the file; its listen is overridden by the flag


def test_the_readme_excerpt_is_the_example_file() -> None:
    excerpt = tomllib.loads(block("service-config", "toml"))
    example = tomllib.loads(EXAMPLE.read_text())
    assert excerpt == {key: example[key] for key in excerpt}


def test_the_variables_table_is_what_serve_reads(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "serve")
    in_help = set(re.findall(r"TRIO_TLSECHO_[A-Z_]+", text.split("\nenvironment ", 1)[1]))
    table = SECTION.split("### Environment variables", 1)[1].split("```", 1)[0]
    assert set(re.findall(r"TRIO_TLSECHO_[A-Z_]+", table)) == in_help


def test_the_socket_activation_command(tmp_path: Path, certs: Path) -> None:
    [line] = [c for c in re.findall(r"```sh\n(.*?)```", SECTION, flags=re.DOTALL) if "socket-activate" in c]
    [port] = free_ports(1)
    words = shlex.split(line.replace("8443", str(port)).replace(".venv/bin/", f"{SCRIPTS}/"))
    require_tool(words[0], "systemd")
    at = words.index("serve")
    with ServeProcess(*words[at + 1 :], cwd=tmp_path, program=words[:at], listeners=0) as server:
        assert server.stderr.wait_for(f"Listening on 127.0.0.1:{port}")
        client = run_cli("client", "--connect", f"127.0.0.1:{port}", cwd=tmp_path)
        assert client.returncode == 0, client.stderr
        code, err = server.stop()
    assert code == 0, err


def test_the_environment_command(tmp_path: Path, certs: Path) -> None:
    [line] = [c for c in re.findall(r"```sh\n(.*?)```", SECTION, flags=re.DOTALL) if "TRIO_TLSECHO_" in c]
    first, second = free_ports(2)
    words = shlex.split(line.replace("8443", str(first)).replace("8444", str(second)))
    env = dict(word.split("=", 1) for word in words if word.startswith("TRIO_TLSECHO_"))
    assert words[len(env) :] == [".venv/bin/trio-tlsecho", "serve"]
    with ServeProcess(cwd=tmp_path, env=env, listeners=2, program=[str(SCRIPTS / "trio-tlsecho")]) as server:
        assert [a.port for a in server.addresses] == [first, second]  # type: ignore[union-attr]
        client = run_cli("client", "--connect", f"127.0.0.1:{second}", cwd=tmp_path)
        code, err = server.stop()
    assert client.returncode == 0, client.stderr
    assert code == 0
    assert err == ""  # TRIO_TLSECHO_LOG_LEVEL=warning: no INFO lines
