"""The development PKI is least-privilege: a server certificate serves, a client certificate
authenticates a client, and neither passes for the other, with our own client and server."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from trio_tlsecho import Address, ClientConfig, ClientError, ServerConfig, TLSFiles, echo_once, make_dev_pki

from .conftest import start_server
from .logs import ServerLog

EKU = ExtendedKeyUsageOID


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKI whose client ``localhost`` has the server's name: only its purpose differs."""
    directory = tmp_path_factory.mktemp("roles")
    make_dev_pki(directory, clients=["client", "localhost"])
    return directory


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize(("stem", "usage"), [("server", EKU.SERVER_AUTH), ("client", EKU.CLIENT_AUTH)])
def test_each_role_has_its_own_extensions(roles: Path, stem: str, usage: x509.ObjectIdentifier) -> None:
    cert = _cert(roles / f"{stem}.pem")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [usage]
    assert not eku.critical
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical  # the subject has a CN (RFC 5280 4.2.1.6)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert not key_usage.value.key_encipherment
    assert not key_usage.value.key_cert_sign
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca is False


async def _serve(nursery: trio.Nursery, tls: TLSFiles, engine: str) -> Address:
    config = ServerConfig(tls=tls, listen=["127.0.0.1:0"], engine=engine)
    [address] = await start_server(nursery, config)
    return Address("localhost", address.port)


@pytest.mark.parametrize("engine", ["trio", "socket"])
async def test_a_client_certificate_does_not_pass_as_a_server_certificate(
    nursery: trio.Nursery, roles: Path, engine: str
) -> None:
    client = ClientConfig(tls=TLSFiles.from_dir(roles, "client"))
    # The control: the server's own certificate, same name, is accepted.
    good = await _serve(nursery, TLSFiles.from_dir(roles, "server"), engine)
    assert (await echo_once(good, client, b"x")).received == 1
    impostor = await _serve(nursery, TLSFiles.from_dir(roles, "localhost"), engine)
    with pytest.raises(ClientError, match="purpose"):
        await echo_once(impostor, client, b"x")


@pytest.mark.parametrize("engine", ["trio", "socket"])
async def test_a_server_certificate_does_not_pass_as_a_client_certificate(
    nursery: trio.Nursery, roles: Path, engine: str, log: ServerLog
) -> None:
    address = await _serve(nursery, TLSFiles.from_dir(roles, "server"), engine)
    assert (
        await echo_once(address, ClientConfig(tls=TLSFiles.from_dir(roles, "localhost")), b"x")
    ).received == 1
    with pytest.raises(ClientError):
        await echo_once(address, ClientConfig(tls=TLSFiles.from_dir(roles, "server")), b"x")
    line = await log.wait_for("handshake failed")
    assert "unsuitable certificate purpose" in line
