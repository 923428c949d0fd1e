"""serve's settings from a TOML file (--config) and TRIO_TLSECHO_* variables, under the flags."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trio_tlsecho import Address
from trio_tlsecho._cli import main, parse_args

from .logs import error_line
from .processes import ServeProcess, run_cli

EXAMPLE = Path(__file__).parent.parent / "examples" / "serve.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = write(
        tmp_path, 'listen = ["127.0.0.1:1001"]\nlog-level = "error"\ncert = "file.pem"\nworkers = 3\n'
    )
    env = {"TRIO_TLSECHO_LISTEN": "127.0.0.1:1002, 127.0.0.1:1003", "TRIO_TLSECHO_LOG_LEVEL": "WARNING"}
    file_only = parse_args(["serve", "--config", str(config)], {})
    assert file_only.listen == [Address("127.0.0.1", 1001)]
    assert (file_only.log_level, file_only.cert, file_only.workers) == ("error", Path("file.pem"), 3)
    with_env = parse_args(["serve", "--config", str(config)], env)
    assert with_env.listen == [Address("127.0.0.1", 1002), Address("127.0.0.1", 1003)]
    assert (with_env.log_level, with_env.cert, with_env.workers) == ("warning", Path("file.pem"), 3)
    flags = [
        "serve",
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:1004",
        "--log-level",
        "debug",
        "--workers",
        "2",
    ]
    with_flags = parse_args(flags, env)
    # A repeatable flag replaces the list from below, it does not add to it.
    assert with_flags.listen == [Address("127.0.0.1", 1004)]
    assert (with_flags.log_level, with_flags.cert, with_flags.workers) == ("debug", Path("file.pem"), 2)
    # --log-level before the command is a flag too.
    assert parse_args(["--log-level", "debug", "serve", "--config", str(config)], env).log_level == "debug"


def test_times_take_units_in_the_file_and_on_the_command_line(tmp_path: Path) -> None:
    config = write(tmp_path, 'idle-timeout = "2m"\nshutdown-grace = 30\nhandshake-timeout = "1500ms"\n')
    from_file = parse_args(["serve", "--config", str(config)], {})
    assert (from_file.idle_timeout, from_file.shutdown_grace, from_file.handshake_timeout) == (
        120.0,
        30.0,
        1.5,
    )
    from_flags = parse_args(["serve", "--idle-timeout", "0", "--shutdown-grace", "500ms"], {})
    assert (from_flags.idle_timeout, from_flags.shutdown_grace) == (0.0, 0.5)


def test_the_file_can_come_from_the_environment_and_switches_go_both_ways(tmp_path: Path) -> None:
    config = write(tmp_path, "proxy-protocol = true\nsession-tickets = true\nallow-cn = 'alice'\n")
    args = parse_args(["serve", "--no-proxy-protocol"], {"TRIO_TLSECHO_CONFIG": str(config)})
    assert (args.proxy_protocol, args.session_tickets, args.allow_cn) == (False, True, ["alice"])
    assert parse_args(["serve"], {}).proxy_protocol is False


def test_handler_options_from_a_table_merge_with_the_flags(tmp_path: Path) -> None:
    config = write(tmp_path, '[handler-option]\ntarget = "127.0.0.1:8080"\nconnect-timeout = "5"\n')
    args = parse_args(["serve", "--config", str(config), "--handler-option", "target=127.0.0.1:9090"], {})
    assert dict(args.handler_options) == {"target": "127.0.0.1:9090", "connect_timeout": "5"}
    # Numbers and booleans reach the handler as the command line would give them.
    typed = write(tmp_path, "[handler-option]\nconnect-timeout = 2.5\nretries = 3\nstrict = true\n")
    typed_args = parse_args(["serve", "--config", str(typed)], {})
    assert dict(typed_args.handler_options) == {"connect_timeout": "2.5", "retries": "3", "strict": "true"}
    listed = write(tmp_path, 'handler-option = ["size=10"]\n')
    assert parse_args(["serve", "--config", str(listed)], {}).handler_options == [("size", "10")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("handshake_timeout = 5", "unknown key 'handshake_timeout' (did you mean 'handshake-timeout'?)"),
        ("help = true", "unknown key 'help'"),
        ('workers = "4"', "key 'workers': expected a number, not a string"),
        ("workers = 0", "key 'workers': must be at least 1"),
        ("handshake-timeout = -1", "key 'handshake-timeout': must be a positive number of seconds"),
        ('idle-timeout = "soon"', "key 'idle-timeout': 'soon' is not a duration (seconds, or with a unit:"),
        ("shutdown-grace = true", "key 'shutdown-grace': expected a number of seconds or a time"),
        ("listen = 8443", "key 'listen': expected a string, not a number"),
        ('listen = ["localhost"]', "key 'listen': bad address 'localhost': expected HOST:PORT"),
        ('proxy-protocol = "yes"', "key 'proxy-protocol': expected true or false, not a string"),
        ('min-tls = "1.1"', "key 'min-tls': '1.1' is not one of 1.2, 1.3"),
        ('log-level = "loud"', "key 'log-level': 'loud' is not one of debug, info, warning, error"),
        ("[handler-option]\nports = [1, 2]", "key 'handler-option': 'ports': expected a string, number or"),
        ("listen = [", "not valid TOML: "),
    ],
)  # fmt: skip
def test_a_mistake_in_the_file_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = write(tmp_path, text + "\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert error_line(capsys.readouterr().err).startswith(f"trio-tlsecho: error: {config}: {message}")


def test_a_mistake_in_the_environment_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_TLSECHO_WORKERS", "0")
    assert main(["serve"]) == 2
    assert (
        error_line(capsys.readouterr().err) == "trio-tlsecho: error: TRIO_TLSECHO_WORKERS: must be at least 1"
    )
    monkeypatch.delenv("TRIO_TLSECHO_WORKERS")
    monkeypatch.setenv("TRIO_TLSECHO_CONFIG", str(tmp_path / "missing.toml"))
    assert main(["serve"]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"trio-tlsecho: error: cannot read config file {tmp_path / 'missing.toml'}: No such file or directory"
    )


def test_the_example_file_reads_as_documented() -> None:
    args = parse_args(["serve", "--config", str(EXAMPLE)], {})
    assert args.listen == [Address("0.0.0.0", 8443)]
    assert (args.workers, args.handler, args.engine, args.min_tls) == (4, "echo", "socket", "1.2")
    assert args.cert == Path("/etc/trio-tlsecho/server.pem")
    assert (args.handshake_timeout, args.idle_timeout, args.max_connections, args.shutdown_grace) == (
        10,
        300,
        10000,
        20,
    )
    assert args.metrics == Address("127.0.0.1", 9464)


def test_serving_with_the_example_file(tmp_path: Path, certs: Path) -> None:
    # Its paths are a deployment's: this machine's in flags over it, as an operator would test it.
    # --certs alone replaces the file's cert/key/ca (the file's are /etc paths).
    flags = ["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--workers", "1", "--certs", str(certs)]
    crl = ["--crl", str(certs / "crl.pem")]
    with ServeProcess("--config", str(EXAMPLE), *flags, *crl, cwd=tmp_path) as server:
        client = run_cli("client", "--connect", str(server.address), cwd=tmp_path)
        code, err = server.stop()
    assert client.returncode == 0, client.stderr
    assert code == 0, err
    assert server.metrics_url


def test_a_certificate_directory_replaces_the_files_of_a_lower_layer(tmp_path: Path) -> None:
    config = write(tmp_path, 'cert = "/etc/x/server.pem"\nkey = "/etc/x/server.key"\nca = "/etc/x/ca.pem"\n')
    # --certs on the command line: that directory's files, not the file's.
    args = parse_args(["serve", "--config", str(config), "--certs", "/srv/pki"], {})
    assert (args.certs, args.cert, args.key, args.ca) == (Path("/srv/pki"), None, None, None)
    # ... and so does TRIO_TLSECHO_CERTS over the file.
    args = parse_args(["serve", "--config", str(config)], {"TRIO_TLSECHO_CERTS": "/srv/env"})
    assert (args.certs, args.cert, args.key, args.ca) == (Path("/srv/env"), None, None, None)
    # A file named on the command line still goes with the directory (--ca from DIR).
    args = parse_args(["serve", "--config", str(config), "--certs=/srv/pki", "--ca", "/srv/ca.pem"], {})
    assert (args.cert, args.key, args.ca) == (
        Path("/etc/x/server.pem"),
        Path("/etc/x/server.key"),
        Path("/srv/ca.pem"),
    )
    # Without --certs the file's files stand.
    args = parse_args(["serve", "--config", str(config)], {})
    assert args.cert == Path("/etc/x/server.pem")


def test_log_level_after_the_command_in_any_case(tmp_path: Path, certs: Path) -> None:
    assert parse_args(["serve", "--log-level", "WARNING"], {}).log_level == "warning"
    assert parse_args(["--log-level", "Error", "certs"], {}).log_level == "error"
    assert parse_args(["demo"], {}).log_level == "info"
    with ServeProcess("--listen", "127.0.0.1:0", "--log-level", "WARNING", cwd=tmp_path) as server:
        client = run_cli("client", "--connect", str(server.address), cwd=tmp_path)
        code, err = server.stop()
    assert client.returncode == 0, client.stderr
    assert code == 0
    assert err == ""  # connections and the stop are INFO


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_reads_the_same_with_or_without_workers(
    tmp_path: Path, certs: Path, workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--workers", workers, cwd=tmp_path)
    assert done.returncode == 2
    assert (
        error_line(done.stderr)
        == f"trio-tlsecho: error: cannot listen on 127.0.0.1:{port}: address already in use"
    )


def test_log_format_from_anywhere(tmp_path: Path) -> None:
    assert parse_args(["serve", "--log-format", "JSON"], {}).log_format == "json"
    assert parse_args(["--log-format", "json", "certs"], {}).log_format == "json"
    assert parse_args(["certs"], {"TRIO_TLSECHO_LOG_FORMAT": "json"}).log_format == "json"
    config = write(tmp_path, 'log-format = "json"\n')
    assert parse_args(["serve", "--config", str(config)], {}).log_format == "json"
    assert parse_args(["serve", "--config", str(config), "--log-format", "text"], {}).log_format == "text"
