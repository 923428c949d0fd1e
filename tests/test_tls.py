"""SSLContext policy, certificate loading errors, and error descriptions."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from trio_tlsecho import (
    CertificateError,
    ClientConfig,
    ServerConfig,
    TLSFiles,
    client_context,
    server_context,
)
from trio_tlsecho._tls import _context as _tls
from trio_tlsecho._tls import describe_tls_error


def _server(files: TLSFiles) -> ServerConfig:
    return ServerConfig(tls=files)


def test_server_context_policy(pki: Path) -> None:
    ctx = server_context(_server(TLSFiles.from_dir(pki, "server")))
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.num_tickets == 0
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "some TLS 1.2 suites must remain"
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["aead"], cipher["name"]


def test_min_tls_13(pki: Path) -> None:
    config = ServerConfig(tls=TLSFiles.from_dir(pki, "server"), min_tls_version="1.3")
    assert server_context(config).minimum_version is ssl.TLSVersion.TLSv1_3


def test_client_context_verifies_server(pki: Path) -> None:
    ctx = client_context(ClientConfig(tls=TLSFiles.from_dir(pki, "client")))
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname


def test_missing_file(certs: Path) -> None:
    files = TLSFiles.from_dir(certs, "server")
    files.key.unlink()
    with pytest.raises(CertificateError, match=r"^private key file not found: .*server\.key$"):
        server_context(_server(files))


def test_key_does_not_match_certificate(certs: Path) -> None:
    files = TLSFiles.from_dir(certs, "server")
    shutil.copy(certs / "client.key", files.key)
    with pytest.raises(CertificateError, match=r"private key .*server\.key does not match certificate"):
        server_context(_server(files))


def encrypt_key(path: Path) -> None:
    """Rewrite the PEM private key at *path* encrypted with a passphrase."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )


def test_encrypted_key_is_one_error_not_a_prompt(certs: Path) -> None:
    # stdin is not read: OpenSSL would otherwise prompt "Enter PEM pass phrase:" and wait.
    files = TLSFiles.from_dir(certs, "server")
    encrypt_key(files.key)
    with pytest.raises(
        CertificateError, match=r"^private key .*server\.key is encrypted: give an unencrypted key"
    ):
        server_context(_server(files))


def test_files_changing_while_loaded_are_a_certificate_error(
    certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reload racing a deployment that replaces the files: our read saw them, OpenSSL's did not.
    files = TLSFiles.from_dir(certs, "server")
    read = _tls._read

    def read_then_vanish(path: Path, what: str) -> bytes:
        data = read(path, what)
        if path == files.key:
            path.unlink()
        return data

    monkeypatch.setattr(_tls, "_read", read_then_vanish)
    with pytest.raises(CertificateError, match=r"^cannot load certificate .* with key .*server\.key: "):
        server_context(_server(files))


def test_certificate_without_private_key(certs: Path) -> None:
    files = TLSFiles.from_dir(certs, "server")
    # A common slip: pointing --key at the certificate file.
    with pytest.raises(
        CertificateError, match=r"no PEM private key in .*server\.pem \(it holds a certificate"
    ):
        server_context(_server(TLSFiles(cert=files.cert, key=files.cert, ca=files.ca)))


def test_certificate_file_without_certificate(certs: Path) -> None:
    files = TLSFiles.from_dir(certs, "server")
    with pytest.raises(CertificateError, match="no PEM certificate in"):
        server_context(_server(TLSFiles(cert=files.key, key=files.key, ca=files.ca)))


def test_unreadable_ca(certs: Path) -> None:
    files = TLSFiles.from_dir(certs, "server")
    files.ca.write_text("this is not a certificate\n")
    with pytest.raises(CertificateError, match="no PEM certificate in CA file"):
        server_context(_server(files))
    files.ca.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match="cannot load CA file"):
        server_context(_server(files))


def test_ca_is_a_directory(certs: Path) -> None:
    files = TLSFiles.from_dir(certs, "server")
    with pytest.raises(CertificateError, match="CA file is a directory"):
        server_context(_server(TLSFiles(cert=files.cert, key=files.key, ca=certs)))


def test_describe_tls_error_reads_the_cause() -> None:
    def broken(cause: BaseException) -> trio.BrokenResourceError:
        try:
            raise trio.BrokenResourceError from cause
        except trio.BrokenResourceError as exc:
            return exc

    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_code = 10
    verify.verify_message = "certificate has expired"
    assert (
        describe_tls_error(broken(verify)) == "certificate verify failed: expired (certificate has expired)"
    )
    assert describe_tls_error(broken(ConnectionResetError())) == "connection reset by peer"
    assert describe_tls_error(trio.BrokenResourceError()) == "BrokenResourceError"
