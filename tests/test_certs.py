"""The development PKI: files, permissions, validity, names, CA reuse."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from trio_tlsecho import CertificateError, ConfigError, make_dev_pki
from trio_tlsecho._certs import CA_DAYS, has_certificates, revoke
from trio_tlsecho._cli import main

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


def _cn(path: Path) -> str:
    return str(_cert(path).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def test_every_client_gets_its_own_files(tmp_path: Path) -> None:
    # The README's flow: certs, then certs --client alice --client bob, then certs --revoke alice.
    make_dev_pki(tmp_path, now=NOW)
    default_client = (tmp_path / "client.pem").read_bytes()
    issued = make_dev_pki(tmp_path, clients=["alice", "bob"], now=NOW)
    assert {p.name for p in issued.written} == {
        "server.pem",
        "server.key",
        "alice.pem",
        "alice.key",
        "bob.pem",
        "bob.key",
    }
    assert (_cn(tmp_path / "alice.pem"), _cn(tmp_path / "bob.pem")) == ("alice", "bob")
    assert (tmp_path / "client.pem").read_bytes() == default_client
    revoke(tmp_path, ["alice"], now=NOW)


def test_a_named_client_named_client_is_client_pem(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, clients=["alice", "client"], now=NOW)
    assert (_cn(tmp_path / "alice.pem"), _cn(tmp_path / "client.pem")) == ("alice", "client")


def test_a_new_ca_always_gets_the_default_client(tmp_path: Path) -> None:
    # Otherwise a client.pem from the previous CA would be left behind, refused by the server.
    make_dev_pki(tmp_path, now=NOW)
    make_dev_pki(tmp_path, clients=["alice"], force=True, now=NOW)
    ca = _cert(tmp_path / "ca.pem")
    assert _cert(tmp_path / "client.pem").issuer == ca.subject
    assert _cn(tmp_path / "alice.pem") == "alice"


def test_an_expired_ca_is_not_reused(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, now=NOW - dt.timedelta(days=CA_DAYS + 1))
    with pytest.raises(CertificateError, match=r"ca.pem expired on 2025-12-31; use --force"):
        make_dev_pki(tmp_path, now=NOW)
    assert make_dev_pki(tmp_path, force=True, now=NOW).ca_created


def test_a_ca_ending_before_the_new_leaves_is_not_reused(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, now=NOW - dt.timedelta(days=CA_DAYS - 100))
    with pytest.raises(
        CertificateError, match=r"expires on 2026-04-11, before certificates valid for 365 days"
    ):
        make_dev_pki(tmp_path, now=NOW)
    make_dev_pki(tmp_path, days=100, now=NOW)
    assert _cert(tmp_path / "server.pem").not_valid_after_utc == NOW + dt.timedelta(days=100)


def test_a_stale_temp_file_does_not_leak_its_mode_to_a_key(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, now=NOW)
    stale = tmp_path / ".client.key.tmp"  # as an interrupted run leaves it
    stale.write_bytes(b"")
    stale.chmod(0o644)
    make_dev_pki(tmp_path, now=NOW)
    assert stat.S_IMODE((tmp_path / "client.key").stat().st_mode) == 0o600
    assert not stale.exists()


def test_a_broken_crl_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, now=NOW)
    (tmp_path / "crl.pem").write_text("garbage")
    with pytest.raises(CertificateError, match=r"cannot update .*crl.pem: it is not a readable PEM CRL"):
        revoke(tmp_path, ["client"], now=NOW)
    make_dev_pki(tmp_path, force=True, now=NOW)  # a new CA starts a new CRL
    assert not list(x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes()))


def test_a_broken_leaf_cannot_be_revoked(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, now=NOW)
    (tmp_path / "client.pem").write_text("garbage")
    with pytest.raises(CertificateError, match=r"client.pem is not a readable PEM certificate"):
        revoke(tmp_path, ["client"], now=NOW)


def test_revoke_days_are_bounded(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, now=NOW)
    with pytest.raises(ConfigError, match="days must be a whole number from 1 to 3650"):
        revoke(tmp_path, [], days=3_000_000, now=NOW)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "3000000"], "days must be a whole number from 1 to 3650"),
        (["--client", "alice", "--client", "Alice"], "client names repeat: 'alice' and 'Alice'"),
        (["--revoke", "client"], "cannot update"),
    ],
)
def test_cli_mistakes_are_one_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dev_pki(tmp_path)
    (tmp_path / "crl.pem").write_text("garbage")
    capsys.readouterr()
    assert main(["certs", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    [line] = err.splitlines()
    assert line.startswith("trio-tlsecho: error: ")
    assert message in line


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 0}, "days must be a whole number from 1"),
        ({"days": CA_DAYS + 1}, "days must be a whole number from 1 to 3650"),
        ({"days": 3_000_000}, "days must be a whole number from 1 to 3650"),
        ({"clients": ["../evil"]}, "bad client name"),
        ({"clients": ["server"]}, "bad client name"),
        ({"clients": ["crl"]}, "bad client name 'crl'"),
        ({"clients": ["CA"]}, "bad client name 'CA'"),
        ({"clients": ["a", "a"]}, "client names repeat"),
        ({"clients": ["Alice", "alice"]}, "client names repeat: 'Alice' and 'alice'"),
        ({"server_names": []}, "at least one server name"),
        ({"server_names": ["bad name!"]}, "bad server name"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_dev_pki(tmp_path, **kwargs)  # type: ignore[arg-type]
