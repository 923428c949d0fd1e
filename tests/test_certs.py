"""The development PKI: files, permissions, validity, names, CA reuse."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from trio_tlsecho import CertificateError, ConfigError, make_dev_pki
from trio_tlsecho._certs import has_certificates

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in ext]


def test_writes_ca_server_and_clients(tmp_path: Path) -> None:
    issued = make_dev_pki(tmp_path, clients=["client", "alice", "bob"], now=NOW)
    names = sorted(p.name for p in issued.written)
    assert names == sorted(
        [
            "ca.pem",
            "ca.key",
            "crl.pem",
            "server.pem",
            "server.key",
            "client.pem",
            "client.key",
            "alice.pem",
            "alice.key",
            "bob.pem",
            "bob.key",
        ]
    )
    assert issued.ca_created
    assert has_certificates(tmp_path)
    assert _sans(_cert(tmp_path / "server.pem")) == ["localhost", "127.0.0.1", "::1"]
    alice = _cert(tmp_path / "alice.pem")
    assert alice.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "alice"
    assert alice.issuer == _cert(tmp_path / "ca.pem").subject


def test_keys_are_private(tmp_path: Path) -> None:
    make_dev_pki(tmp_path)
    for key in tmp_path.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((tmp_path / "ca.pem").stat().st_mode) & 0o044  # certificates are public


def test_validity_is_bounded(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, days=30, now=NOW)
    server = _cert(tmp_path / "server.pem")
    assert server.not_valid_after_utc == NOW + dt.timedelta(days=30)
    assert server.not_valid_before_utc < NOW  # back-dated for clock skew
    ca = _cert(tmp_path / "ca.pem")
    assert ca.not_valid_after_utc <= NOW + dt.timedelta(days=3650)


def test_default_validity_is_one_year(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, now=NOW)
    assert _cert(tmp_path / "client.pem").not_valid_after_utc == NOW + dt.timedelta(days=365)


def test_rerun_reuses_the_ca(tmp_path: Path) -> None:
    make_dev_pki(tmp_path)
    ca_before = (tmp_path / "ca.pem").read_bytes()
    first_client = (tmp_path / "client.pem").read_bytes()
    issued = make_dev_pki(tmp_path, clients=["client", "carol"])
    assert not issued.ca_created
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "client.pem").read_bytes() != first_client
    # Old and new leaves both verify against the one CA.
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    assert ctx.cert_store_stats()["x509_ca"] == 1
    carol = _cert(tmp_path / "carol.pem")
    assert carol.issuer == _cert(tmp_path / "ca.pem").subject


def test_force_makes_a_new_ca(tmp_path: Path) -> None:
    make_dev_pki(tmp_path)
    before = (tmp_path / "ca.pem").read_bytes()
    assert make_dev_pki(tmp_path, force=True).ca_created
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_ca_without_key_is_an_error(tmp_path: Path) -> None:
    make_dev_pki(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CertificateError, match=r"exists but its key .* does not; use --force"):
        make_dev_pki(tmp_path)


def test_leaf_never_outlives_the_ca(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, days=100_000, now=NOW)
    assert (
        _cert(tmp_path / "server.pem").not_valid_after_utc == _cert(tmp_path / "ca.pem").not_valid_after_utc
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 0}, "days must be a positive"),
        ({"clients": ["../evil"]}, "bad client name"),
        ({"clients": ["server"]}, "bad client name"),
        ({"clients": ["a", "a"]}, "client names repeat"),
        ({"server_names": []}, "at least one server name"),
        ({"server_names": ["bad name!"]}, "bad server name"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_dev_pki(tmp_path, **kwargs)  # type: ignore[arg-type]
