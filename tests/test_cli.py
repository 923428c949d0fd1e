"""The command line: subprocesses for the real thing, main() in-process for the error paths."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from trio_tlsecho._cli import main

from .logs import error_line
from .processes import ServeProcess, run_cli

LISTEN = ("--listen", "127.0.0.1:0")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_client_and_clean_stop(tmp_path: Path, certs: Path, sig: int) -> None:
    with ServeProcess(*LISTEN, cwd=tmp_path) as server:
        client = run_cli("client", "--connect", str(server.address), cwd=tmp_path)
        assert client.returncode == 0, client.stderr
        assert "verdict:               OK, echo verified byte for byte" in client.stdout
        assert "mutual authentication: yes" in client.stdout
        assert "echo:                  5155 bytes sent, 5155 received" in client.stdout
        assert client.stderr == ""
        code, err = server.stop(sig)
    # A graceful stop either way; Ctrl-C's says so to the shell (130), SIGTERM's to systemd (0).
    assert code == (130 if sig == signal.SIGINT else 0), err
    assert "Traceback" not in err
    assert "connected TLSv1.3" in err
    assert f"{signal.Signals(sig).name} received, shutting down" in err


def test_serve_with_the_socket_engine(tmp_path: Path, certs: Path) -> None:
    with ServeProcess(*LISTEN, "--engine", "socket", cwd=tmp_path) as server:
        client = run_cli("client", "--connect", str(server.address), cwd=tmp_path)
        code, err = server.stop()
    assert client.returncode == 0, client.stderr
    assert "verdict:               OK" in client.stdout
    assert code == 0, err


def test_serve_makes_dev_certs_on_first_run(tmp_path: Path) -> None:
    with ServeProcess(*LISTEN, cwd=tmp_path) as server:
        code, err = server.stop()
    assert code == 0
    assert (tmp_path / "certs" / "ca.pem").is_file()
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert "no certificates in certs: created a development CA" in warnings[0]


def test_serve_makes_no_pki_where_it_could_be_a_mistake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # A --certs directory without a CA: a typo, not a request for a new PKI.
    assert main(["serve", "--certs", "elsewhere", *LISTEN]) == 2
    assert error_line(capsys.readouterr().err) == (
        "trio-tlsecho: error: no certificates in elsewhere (no ca.pem):"
        " run 'trio-tlsecho certs --out elsewhere', or pass --cert/--key/--ca"
    )
    assert not (tmp_path / "elsewhere").exists()
    # ./certs with somebody's server files but no CA: never written over.
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "server.pem").write_text("mine")
    (tmp_path / "certs" / "server.key").write_text("mine too")
    assert main(["serve", *LISTEN]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.endswith("certs holds server.key, server.pem but no ca.pem: not making a development PKI"
                         " over them; pass --cert/--key/--ca, or move them away")  # fmt: skip
    assert (tmp_path / "certs" / "server.pem").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["server.key", "server.pem"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_console_script_finds_a_handler_module_in_the_current_directory(
    tmp_path: Path, certs: Path, workers: str
) -> None:
    script = Path(sys.executable).parent / "trio-tlsecho"
    assert script.exists(), "the package is installed with its console script"
    (tmp_path / "local_handler.py").write_text(
        "async def shout(conn):\n"
        "    while data := await conn.stream.receive_some(100):\n"
        "        await conn.stream.send_all(data.upper())\n"
    )
    args = [*LISTEN, "--handler", "local_handler:shout", "--workers", workers]
    with ServeProcess(*args, cwd=tmp_path, program=[str(script)]) as server:
        done = run_cli("client", "--connect", str(server.address), "--message", "hi", cwd=tmp_path)
        code, err = server.stop()
    assert code == 0, err
    assert "echo differs from what was sent at byte 0" in done.stderr  # "HI": our handler ran


def test_serve_two_listeners_prints_each(tmp_path: Path, certs: Path) -> None:
    with ServeProcess(*LISTEN, "--listen", "localhost:0", cwd=tmp_path, listeners=2) as server:
        code, _ = server.stop()
    assert code == 0
    assert len(server.addresses) == 2


def test_client_with_message_and_server_name(tmp_path: Path, certs: Path) -> None:
    with ServeProcess(*LISTEN, "--handler", "echo", cwd=tmp_path) as server:
        result = run_cli(
            "client", "--connect", str(server.address), "--message", "hi there", "--server-name", "localhost",
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "8 bytes sent, 8 received" in result.stdout


def test_client_rejected_is_one_line_and_nonzero(tmp_path: Path, certs: Path, other_pki: Path) -> None:
    with ServeProcess(*LISTEN, cwd=tmp_path) as server:
        result = run_cli(
            "client", "--connect", str(server.address),
            "--cert", str(other_pki / "client.pem"), "--key", str(other_pki / "client.key"),
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    line = error_line(result.stderr)
    assert line.startswith("trio-tlsecho: error: ")
    assert "peer rejected our certificate: unknown CA" in line


def test_client_hostname_mismatch(tmp_path: Path, certs: Path) -> None:
    with ServeProcess(*LISTEN, cwd=tmp_path) as server:
        result = run_cli(
            "client", "--connect", str(server.address), "--server-name", "example.org", cwd=tmp_path
        )
    assert result.returncode == 1
    assert "hostname mismatch" in result.stderr


def test_certs_command(tmp_path: Path) -> None:
    first = run_cli("certs", "--out", "pki", "--client", "client", "--client", "alice", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "wrote pki/ca.key" in first.stdout
    assert (tmp_path / "pki" / "alice.pem").is_file()
    again = run_cli("certs", "--out", "pki", "--client", "bob", cwd=tmp_path)
    assert "reusing the CA in pki/ca.pem" in again.stdout
    assert "wrote pki/ca.pem" not in again.stdout


# -- one line, status 2, no traceback ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--listen", "nonsense"], "argument --listen: bad address 'nonsense': expected HOST:PORT"),
        (["serve", "--listen", "[::1]"], "expected [IPV6]:PORT"),
        (["serve", "--handshake-timeout", "-1"], "must be a positive number of seconds"),
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["client", "--random", "0"], "must be at least 1"),
        (["client", "--message", "a", "--random", "3"], "not allowed with argument"),
        (["certs", "--days", "many"], "'many' is not a whole number"),
        (["serve", "--max-connections", "0"], "must be at least 1"),
        (
            ["serve", "--idle-timeout", "soon"],
            "argument --idle-timeout: 'soon' is not a duration (seconds, or with a unit:",
        ),
        (["serve", "--shutdown-grace", "-3"], "must be a positive number of seconds"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_flags(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    line = error_line(capsys.readouterr().err)
    assert message in line
    assert line.startswith("trio-tlsecho: error: ")  # one prefix, whichever command
    assert re.search(r"\(see trio-tlsecho( \w+)? --help\)$", line), line


def test_startup_errors(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    listen = ["--listen", "127.0.0.1:0"]
    broken_ca = tmp_path / "broken-ca.pem"
    broken_ca.write_text("not a certificate")
    cases = [
        (["--cert", "nope.pem", "--key", "certs/server.key"], "certificate file not found: nope.pem"),
        (["--cert", "certs/server.pem", "--key", "certs/client.key"], "does not match certificate"),
        (["--cert", "certs/server.pem"], "--cert and --key go together: --key is missing"),
        (
            ["--cert", "certs/server.pem", "--key", "certs/server.pem"],
            "no PEM private key in certs/server.pem",
        ),
        (["--ca", str(broken_ca)], "no PEM certificate in CA file"),
        (["--handler", "nope"], "unknown handler 'nope'; known handlers:"),
        (["--handler", "no_such_mod:x"], "cannot import handler module 'no_such_mod'"),
        (
            ["--certs", "elsewhere", "--ca", "certs/ca.pem"],
            "certificate file not found: elsewhere/server.pem",
        ),
        (["--allow-fingerprint", "abc"], "bad SHA-256 fingerprint 'abc': expected 64 hex digits"),
        (["--allow-san", "DNS:"], "bad --allow-san value"),
        (["--crl", "nope.pem"], "CRL file not found: nope.pem"),
        (["--crl", "certs/ca.pem"], "no PEM certificate revocation list in certs/ca.pem"),
        (["--keylog", "no/such/dir/keys.log"], "cannot write key log file no/such/dir/keys.log"),
    ]
    for extra, message in cases:
        assert main(["serve", *listen, *extra]) == 2, extra
        line = error_line(capsys.readouterr().err)
        assert line.startswith("trio-tlsecho: error: "), line
        assert message in line, (extra, line)


def test_port_in_use(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--listen", f"127.0.0.1:{port}"]) == 2
    assert (
        error_line(capsys.readouterr().err)
        == f"trio-tlsecho: error: cannot listen on 127.0.0.1:{port}: address already in use"
    )


def test_client_without_certs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["client"]) == 2
    assert "no certificates in certs: run 'trio-tlsecho certs'" in error_line(capsys.readouterr().err)


def test_client_refused(
    tmp_path: Path,
    certs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    refusing_port: int,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["client", "--connect", f"127.0.0.1:{refusing_port}"]) == 1
    assert "connection refused (is the server running?)" in error_line(capsys.readouterr().err)


def test_certs_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path), "--client", "a/b"]) == 2
    assert "bad client name 'a/b'" in error_line(capsys.readouterr().err)


def test_demo(tmp_path: Path, certs: Path) -> None:
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo passed" in result.stdout
    assert "client without a certificate refused: peer requires a client certificate" in result.stdout
    assert "another CA refused" in result.stdout
    assert "FAIL" not in result.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("trio-tlsecho 0.")


def test_keys_from_certs_command_are_private(tmp_path: Path) -> None:
    assert run_cli("certs", "--out", "pki", cwd=tmp_path).returncode == 0
    for key in (tmp_path / "pki").glob("*.key"):
        assert os.stat(key).st_mode & 0o077 == 0


def test_certs_revoke_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path), "--revoke", "client", "--force"]) == 2
    assert "--revoke only updates the CRL" in error_line(capsys.readouterr().err)
    assert main(["certs", "--out", str(tmp_path), "--revoke", "client"]) == 2
    assert f"no CA in {tmp_path}: run 'certs' first" in error_line(capsys.readouterr().err)


def test_zero_in_any_spelling_turns_a_timeout_off() -> None:
    from trio_tlsecho._cli import build_parser

    for zero in ("0", "0.0", "0.00", "0e0"):
        assert build_parser().parse_args(["serve", "--idle-timeout", zero]).idle_timeout == 0.0
