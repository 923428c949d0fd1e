"""Shared fixtures: one development PKI per test session, servers on port 0, the server's log.

Helpers that are not fixtures live here too when several test files use them (the
certificates a test makes, a stream read to a length, open descriptors); child
processes are in ``processes.py``, log capture in ``logs.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import shutil
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme

from trio_tlsecho import Address, ClientConfig, ServerConfig, TLSFiles, make_dev_pki, serve

from .logs import ServerLog


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    """Undo what an in-process ``main()`` does to the package logger (a handler on the
    stderr of its test, no propagation), which would outlive its test: the records of
    every later test would pile up in that test's captured stderr, and caplog would see none."""
    logger = logging.getLogger("trio_tlsecho")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test: bound, never listening.

    Not a port found free and closed: another process could take that in between.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with server.pem, client.pem and alice.pem (each with its .key)."""
    directory = tmp_path_factory.mktemp("pki")
    make_dev_pki(directory, clients=["client", "alice"])
    return directory


@pytest.fixture
def certs(tmp_path: Path, pki: Path) -> Path:
    """A private copy of ``pki`` in ``tmp_path/certs``: for a test that revokes or replaces
    files, and where ``serve`` run in ``tmp_path`` finds its certificates by default."""
    return Path(shutil.copytree(pki, tmp_path / "certs"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA: its certificates must never be accepted by ours."""
    directory = tmp_path_factory.mktemp("other-pki")
    make_dev_pki(directory)
    return directory


@pytest.fixture(params=["trio", "socket"])
def server_config(pki: Path, request: pytest.FixtureRequest) -> ServerConfig:
    """A server on 127.0.0.1:0, once with each TLS engine: every test that uses it runs twice."""
    return ServerConfig(tls=TLSFiles.from_dir(pki, "server"), listen=["127.0.0.1:0"], engine=request.param)


@pytest.fixture
def client_config(pki: Path) -> ClientConfig:
    return ClientConfig(tls=TLSFiles.from_dir(pki, "client"))


async def start_server(nursery: trio.Nursery, config: ServerConfig, **changes: Any) -> list[Address]:
    """Start ``serve`` in *nursery* (as an embedding app would) and return its addresses."""
    addresses: list[Address] = await nursery.start(serve, attrs.evolve(config, **changes))
    return addresses


#: ``await start(**config_changes)``: see the ``start`` fixture.
Start = Callable[..., Awaitable[list[Address]]]


@pytest.fixture
def start(nursery: trio.Nursery, server_config: ServerConfig) -> Start:
    """Start a server (this test's engine, ``server_config`` with *changes*) in the test's nursery."""
    return functools.partial(start_server, nursery, server_config)


@pytest.fixture
async def server(nursery: trio.Nursery, server_config: ServerConfig) -> Address:
    """An echo server on 127.0.0.1 and an ephemeral port."""
    [address] = await start_server(nursery, server_config)
    return address


@pytest.fixture
def log() -> Iterator[ServerLog]:
    """What the server logs during the test, INFO and up (see ServerLog)."""
    with ServerLog() as server_log:
        yield server_log


async def receive_until(stream: trio.abc.ReceiveStream, size: int, what: str = "the stream") -> bytes:
    """Read until *size* bytes have come (and whatever came with the last read); fails if
    *what* ends first."""
    got = bytearray()
    while len(got) < size:
        chunk = await stream.receive_some(65536)
        assert chunk, f"{what} ended after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)


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


def issue_with_uri(pki: Path, out: Path, name: str, uri: str) -> TLSFiles:
    """A client certificate whose only SAN is a URI (SPIFFE style), which trustme cannot make."""
    from cryptography import x509

    return issue_leaf(pki, out, name, san=x509.UniformResourceIdentifier(uri))


def issue_leaf(
    pki: Path, out: Path, name: str, *, san: Any = None, usages: tuple[str, ...] = ("clientAuth",)
) -> TLSFiles:
    """A certificate from *pki*'s CA for CN=*name*, with one SAN (default DNS:*name*) and
    exactly the extended key usages named (``"clientAuth"``, ``"serverAuth"``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_cert = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    oids = {
        "clientAuth": x509.ExtendedKeyUsageOID.CLIENT_AUTH,
        "serverAuth": x509.ExtendedKeyUsageOID.SERVER_AUTH,
    }
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san or x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([oids[u] for u in usages]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TLSFiles(cert=out / f"{name}.pem", key=out / f"{name}.key", ca=pki / "ca.pem")


def open_fds() -> dict[int, str]:
    """This process's open descriptors, each with what it is (``socket:[inode]``, a path)."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


async def assert_fds_settle(before: dict[int, str]) -> None:
    """Assert that as many descriptors are open as in *before* once every task has run out of work.

    After refusing a peer the server half-closes and waits for the peer's FIN before it
    closes (so its alert is not overtaken by a reset): a client that has seen the
    server's EOF and closed cannot see that last close.  Quiescence can: when every task
    is blocked, the server has handled every FIN the kernel delivered.  Bounded retries
    only cover a FIN still in flight; a leak fails after them, naming what differs.
    """
    for _ in range(50):
        await trio.testing.wait_all_tasks_blocked()
        now = open_fds()
        if len(now) == len(before):
            return
    opened = {fd: what for fd, what in now.items() if before.get(fd) != what}
    closed = {fd: what for fd, what in before.items() if now.get(fd) != what}
    raise AssertionError(
        f"{len(before)} descriptors open before, {len(now)} now; new: {opened}; gone: {closed}"
    )
