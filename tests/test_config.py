"""Config objects: frozen, and validated when built."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import pytest

from trio_tlsecho import Address, ClientConfig, ConfigError, ServerConfig, TLSFiles

TLS = TLSFiles.from_dir("certs", "server")


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
