"""Shared fixtures: one development PKI per test session, servers on port 0."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from trio_tlsecho import Address, ClientConfig, ServerConfig, TLSFiles, make_dev_pki, serve


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with server.pem, client.pem and alice.pem (each with its .key)."""
    directory = tmp_path_factory.mktemp("pki")
    make_dev_pki(directory, clients=["client", "alice"])
    return directory


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA: its certificates must never be accepted by ours."""
    directory = tmp_path_factory.mktemp("other-pki")
    make_dev_pki(directory)
    return directory


@pytest.fixture
def server_config(pki: Path) -> ServerConfig:
    return ServerConfig(tls=TLSFiles.from_dir(pki, "server"), listen=["127.0.0.1:0"])


@pytest.fixture
def client_config(pki: Path) -> ClientConfig:
    return ClientConfig(tls=TLSFiles.from_dir(pki, "client"))


async def start_server(nursery: trio.Nursery, config: ServerConfig, **changes: Any) -> list[Address]:
    """Start ``serve`` in *nursery* (as an embedding app would) and return its addresses."""
    addresses: list[Address] = await nursery.start(serve, attrs.evolve(config, **changes))
    return addresses


@pytest.fixture
async def server(nursery: trio.Nursery, server_config: ServerConfig) -> Address:
    """An echo server on 127.0.0.1 and an ephemeral port."""
    [address] = await start_server(nursery, server_config)
    return address


def issue_client(
    pki: Path,
    out: Path,
    name: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> TLSFiles:
    """A client certificate from *pki*'s CA with the given validity (for expired/not-yet-valid)."""
    ca = trustme.CA.from_pem((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes())
    leaf = ca.issue_cert(name, common_name=name, not_before=not_before, not_after=not_after)
    leaf.cert_chain_pems[0].write_to_path(str(out / f"{name}.pem"))
    leaf.private_key_pem.write_to_path(str(out / f"{name}.key"))
    return TLSFiles(cert=out / f"{name}.pem", key=out / f"{name}.key", ca=pki / "ca.pem")


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
