"""Config objects: frozen, and validated when built."""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_tlsecho import Address, ClientConfig, ConfigError, LoadConfig, ServerConfig, TLSFiles
from trio_tlsecho._cli import main
from trio_tlsecho._config import (
    count,
    from_text,
    round_trip_rate,
    seconds,
    seconds_or_zero,
    to_address,
    validator,
)

TLS = TLSFiles.from_dir("certs", "server")
#: Certificate flags that name files nobody reads: the configs are refused before that.
UNREAD_FILES = ["--cert", "none.pem", "--key", "none.key", "--ca", "none-ca.pem"]


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443),
        ("localhost:0", "localhost", 0),
        ("[::1]:9000", "::1", 9000),
        (" 0.0.0.0:1 ", "0.0.0.0", 1),
    ],
)
def test_address_parse(text: str, host: str, port: int) -> None:
    assert Address.parse(text) == Address(host, port)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8443", "expected HOST:PORT"),
        ("host:", "port '' is not a number"),
        (":80", "host is empty"),
        ("::1:80", r"write IPv6 addresses as \[ADDR\]:PORT"),
        ("[::1]80", r"expected \[IPV6\]:PORT"),
        ("[nothost]:80", "is not an IPv6 address"),
        ("host:http", "port 'http' is not a number"),
        ("host:70000", "from 0 to 65535"),
    ],
)
def test_address_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Address.parse(text)


def test_address_str_brackets_ipv6() -> None:
    assert str(Address("::1", 1)) == "[::1]:1"
    assert str(Address("127.0.0.1", 1)) == "127.0.0.1:1"


def test_tls_files_from_dir() -> None:
    files = TLSFiles.from_dir("d", "client")
    assert files == TLSFiles(cert=Path("d/client.pem"), key=Path("d/client.key"), ca=Path("d/ca.pem"))


def test_server_config_defaults_and_conversion() -> None:
    config = ServerConfig(tls=TLS)
    assert config.listen == (Address("127.0.0.1", 8443),)
    assert config.handler == "echo"
    assert config.min_tls_version is ssl.TLSVersion.TLSv1_2
    config = ServerConfig(tls=TLS, listen=["[::1]:0", Address("127.0.0.1", 0)], min_tls_version="1.3")
    assert config.listen == (Address("::1", 0), Address("127.0.0.1", 0))
    assert config.min_tls_version is ssl.TLSVersion.TLSv1_3


def test_config_is_frozen() -> None:
    config = ServerConfig(tls=TLS)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.handler = "discard"  # type: ignore[misc]
    assert attrs.evolve(config, handler="discard").handler == "discard"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen": []}, "listen needs at least one address"),
        ({"handshake_timeout": 0}, "handshake_timeout must be a positive number"),
        ({"handshake_timeout": float("nan")}, "handshake_timeout must be a positive number"),
        ({"handler": ""}, "handler name is empty"),
        ({"handler": 42}, "handler must be a name"),
        ({"min_tls_version": "1.1"}, "must be 1.2 or 1.3"),
        ({"min_tls_version": ssl.TLSVersion.TLSv1_1}, "must be 1.2 or 1.3"),
        ({"tls": "certs"}, "must be <class"),
        ({"engine": "openssl"}, "engine must be one of trio, socket"),
    ],
)
def test_server_config_rejects(changes: dict[str, object], message: str) -> None:
    with pytest.raises((ConfigError, TypeError), match=message):
        ServerConfig(**{"tls": TLS, **changes})  # type: ignore[arg-type]


def test_client_config_validates_timeout() -> None:
    with pytest.raises(ConfigError, match="handshake_timeout"):
        ClientConfig(tls=TLS, handshake_timeout=-1)


# -- one check per kind of value: fields, flags and loadgen alike ------------------------------


@pytest.mark.parametrize(
    ("check", "value", "expected"),
    [
        (count, 1, 1),
        (count, 10**30, 10**30),
        (seconds, 0.5, 0.5),
        (seconds, 2, 2.0),
        (seconds_or_zero, 0, 0.0),
        (seconds_or_zero, -0.0, 0.0),
        (seconds_or_zero, 3, 3.0),
        (round_trip_rate, 1e-3, 1e-3),
    ],
)
def test_checks_return_the_value(check: Callable[..., object], value: object, expected: object) -> None:
    got = check(value, "x")
    assert got == expected
    assert type(got) is type(expected)
    assert str(got) != "-0.0"


@pytest.mark.parametrize(
    ("check", "value", "named", "unnamed"),
    [
        (count, 0, "x must be at least 1, not 0", "must be at least 1"),
        (count, 2.0, "x must be a whole number, not 2.0", "2.0 is not a whole number"),
        (count, True, "x must be a whole number, not True", "True is not a whole number"),
        (count, "3", "x must be a whole number, not '3'", "'3' is not a whole number"),
        (seconds, 0, "x must be a positive number of seconds, not 0", "must be a positive number of seconds"),
        (seconds, math.inf, "x must be a positive number of seconds, not inf", None),
        (seconds, math.nan, "x must be a positive number of seconds, not nan", None),
        (seconds, 10**400, None, "must be a positive number of seconds"),  # beyond any float
        (seconds, "soon", "x must be a number of seconds, not 'soon'", "'soon' is not a number of seconds"),
        (seconds, False, "x must be a number of seconds, not False", None),
        (seconds_or_zero, -1, "x must be a positive number of seconds or 0, not -1", None),
        (round_trip_rate, 0.0, "x must be a positive number of round trips per second, not 0.0", None),
        (round_trip_rate, None, "x must be a number of round trips per second, not None", None),
    ],
)
def test_checks_say_what_is_wrong_in_one_line(
    check: Callable[..., object], value: object, named: str | None, unnamed: str | None
) -> None:
    for name, message in (("x", named), (None, unnamed)):
        with pytest.raises(ConfigError) as info:
            check(value, name)
        if message is not None:
            assert str(info.value) == message


def test_from_text_reads_then_checks() -> None:
    assert from_text(count, int)("12") == 12
    assert from_text(seconds, float)("1e-3") == 0.001
    with pytest.raises(ConfigError, match=r"^'1e3' is not a whole number$"):
        from_text(count, int)("1e3")  # not 1000.0: the text is what the user wrote
    with pytest.raises(ConfigError, match=r"^must be a positive number of seconds$"):
        from_text(seconds, float)("-1")


def test_validator_names_the_field_and_may_allow_none() -> None:
    @attrs.frozen
    class Example:
        a: int = attrs.field(validator=validator(count))
        b: int | None = attrs.field(default=None, validator=validator(count, optional=True))

    assert Example(1).b is None
    with pytest.raises(ConfigError, match=r"^a must be a whole number, not None$"):
        Example(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^b must be at least 1, not 0$"):
        Example(1, 0)


def test_to_address() -> None:
    address = Address("::1", 1)
    assert to_address(address) is address
    assert to_address("[::1]:1") == address


@pytest.mark.parametrize(
    ("flags", "field", "value", "expected"),
    [
        (["serve", "--max-connections", "0"], "max_connections", 0, "must be at least 1"),
        (
            ["serve", "--handshake-timeout", "-1"],
            "handshake_timeout",
            -1,
            "must be a positive number of seconds",
        ),
        (
            ["serve", "--shutdown-grace", "-1"],
            "shutdown_grace",
            -1,
            "must be a positive number of seconds or 0",
        ),
        (["loadgen", "--workers", "0"], "workers", 0, "must be at least 1"),
        (["loadgen", "--rate", "0"], "rate", 0, "must be a positive number of round trips per second"),
        (["loadgen", "--ramp", "-1"], "ramp", -1, "must be a positive number of seconds or 0"),
        (["loadgen", "--clients", "x"], "clients", "x", "must be a whole number"),
    ],
)
def test_a_flag_and_its_field_say_the_same(
    flags: list[str], field: str, value: object, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    flag_line = capsys.readouterr().err.strip()
    build: Callable[..., object] = ServerConfig if flags[0] == "serve" else LoadConfig
    kwargs: dict[str, Any] = {"tls": TLS} if flags[0] == "serve" else _load_kwargs()
    with pytest.raises(ConfigError) as info:
        build(**kwargs, **{field: value})
    assert str(info.value) == f"{field} {expected}, not {value!r}"
    # The flag's line words it without the field name, argparse having named the flag.
    words = expected if isinstance(value, int) else f"{value!r} is not {expected.removeprefix('must be ')}"
    # (argparse names a flag with a short form by both: "-c/--clients".)
    assert re.search(
        rf"argument (-\w/)?{flags[1]}: {re.escape(words)} \(see trio-tlsecho \w+ --help\)$", flag_line
    ), flag_line


# -- rules between fields: the config refuses, the CLI only says so ------------------------------


def _load_kwargs() -> dict[str, Any]:
    client = ClientConfig(tls=TLSFiles.from_dir("certs", "client"))
    return {"address": "127.0.0.1:1", "client": client}


PROXY_FROM_ALONE = "proxy_from needs proxy_protocol: without it no PROXY header is read"


def test_proxy_from_needs_proxy_protocol() -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig(tls=TLS, proxy_from=["10.0.0.0/8"])
    assert str(info.value) == PROXY_FROM_ALONE
    config = ServerConfig(tls=TLS, proxy_protocol=True, proxy_from=["10.0.0.0/8"])
    assert attrs.evolve(config, proxy_from=()).proxy_from == ()
    with pytest.raises(ConfigError, match=f"^{PROXY_FROM_ALONE}$"):
        attrs.evolve(config, proxy_protocol=False)  # an embedding app's override is checked too


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"duration": None}, "give a duration or a number of requests"),
        ({"duration": 1.0, "requests": 5}, "give a duration or a number of requests, not both"),
        ({"workers": 3, "clients": 2}, "3 workers need at least as many clients, not 2"),
    ],
)
def test_load_config_rules_between_fields(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        LoadConfig(**_load_kwargs(), **changes)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--listen", "127.0.0.1:0", "--proxy-from", "10.0.0.0/8"], PROXY_FROM_ALONE),
        (["loadgen", "--workers", "3", "--clients", "2"], "3 workers need at least as many clients, not 2"),
    ],
)
def test_the_cli_says_what_the_config_refuses(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, *UNREAD_FILES]) == 2
    err = capsys.readouterr().err
    assert err == f"trio-tlsecho: error: {message}\n"
