"""The development PKI: files, permissions, validity, names, CA reuse."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trio_tlsecho import CertificateError, ConfigError, make_dev_pki
from trio_tlsecho._cli import main
from trio_tlsecho._tls import CA_DAYS, DEFAULT_SERVER_NAMES, has_certificates, revoke

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
        "crl.pem",
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
        (["--client", "alice"], "cannot update"),  # a rerun renews the CRL
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


# -- a rerun keeps the server certificate and renews the CRL ---------------------------


def _crl(directory: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_adding_a_client_leaves_the_server_certificate_alone(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, server_names=["myhost.example"], now=NOW)
    before = [(tmp_path / f).read_bytes() for f in ("server.pem", "server.key")]
    issued = make_dev_pki(tmp_path, clients=["alice"], now=NOW + dt.timedelta(days=200))
    assert [(tmp_path / f).read_bytes() for f in ("server.pem", "server.key")] == before
    assert not {"server.pem", "server.key"} & {p.name for p in issued.written}


def test_a_renewed_server_certificate_keeps_its_names(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, server_names=["myhost.example", "10.0.0.1"], now=NOW)
    # Past two thirds of its year: due for renewal, and without --server-name.
    later = NOW + dt.timedelta(days=250)
    issued = make_dev_pki(tmp_path, clients=["alice"], now=later)
    assert tmp_path / "server.pem" in issued.written
    server = _cert(tmp_path / "server.pem")
    assert _sans(server) == ["myhost.example", "10.0.0.1"]
    assert _cn(tmp_path / "server.pem") == "myhost.example"
    assert server.not_valid_after_utc == later + dt.timedelta(days=365)


def test_server_names_given_on_a_rerun_replace_the_old_ones(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, server_names=["myhost.example"], now=NOW)
    make_dev_pki(tmp_path, server_names=DEFAULT_SERVER_NAMES, now=NOW)
    assert _sans(_cert(tmp_path / "server.pem")) == ["localhost", "127.0.0.1", "::1"]


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        ("no key", ["myhost.example"]),  # the names are still worth keeping
        ("other key", ["myhost.example"]),
        ("no certificate", list(DEFAULT_SERVER_NAMES)),
        ("garbage", list(DEFAULT_SERVER_NAMES)),
        ("another CA", list(DEFAULT_SERVER_NAMES)),
        ("no names", list(DEFAULT_SERVER_NAMES)),
    ],
)
def test_a_server_certificate_that_cannot_serve_is_reissued(
    tmp_path: Path, damage: str, names: list[str]
) -> None:
    make_dev_pki(tmp_path, server_names=["myhost.example"], now=NOW)
    server_pem, server_key = tmp_path / "server.pem", tmp_path / "server.key"
    if damage == "no key":
        server_key.unlink()
    elif damage == "other key":
        server_key.write_bytes((tmp_path / "client.key").read_bytes())
    elif damage == "no certificate":
        server_pem.unlink()
    elif damage == "garbage":
        server_pem.write_text("garbage")
    elif damage == "no names":
        server_pem.write_bytes(_without_names(tmp_path, _cert(server_pem)))
    else:
        other = tmp_path / "other"
        make_dev_pki(other, server_names=["myhost.example"], now=NOW)
        server_pem.write_bytes((other / "server.pem").read_bytes())
        server_key.write_bytes((other / "server.key").read_bytes())
    issued = make_dev_pki(tmp_path, clients=["alice"], now=NOW)
    assert {server_pem, server_key} <= set(issued.written)
    assert _sans(_cert(server_pem)) == names
    assert _cert(server_pem).issuer == _cert(tmp_path / "ca.pem").subject
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_pem, server_key)  # the pair matches


def _without_names(directory: Path, cert: x509.Certificate) -> bytes:
    """*cert* re-signed by the CA in *directory* without its subjectAltName."""
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    signed = builder.sign(ca_key, hashes.SHA256())
    return signed.public_bytes(serialization.Encoding.PEM)


def test_every_rerun_renews_the_crl_and_keeps_its_entries(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, clients=["alice"], now=NOW)
    revoke(tmp_path, ["alice"], now=NOW)
    before = _crl(tmp_path)
    later = NOW + dt.timedelta(days=300)
    issued = make_dev_pki(tmp_path, clients=["bob"], now=later)
    assert tmp_path / "crl.pem" in issued.written
    crl = _crl(tmp_path)
    assert crl.next_update_utc == later + dt.timedelta(days=365)
    assert [e.serial_number for e in crl] == [_cert(tmp_path / "alice.pem").serial_number]
    assert _crl_number(crl) > _crl_number(before)
    ca_key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert crl.is_signature_valid(ca_key.public_key())


def test_revoke_without_names_renews_the_crl(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, clients=["alice"], now=NOW)
    revoke(tmp_path, ["alice"], now=NOW)
    later = NOW + dt.timedelta(days=400)  # the CRL has lapsed
    revoke(tmp_path, [], now=later)
    crl = _crl(tmp_path)
    assert crl.next_update_utc == later + dt.timedelta(days=365)
    assert len(list(crl)) == 1


@pytest.mark.parametrize("force", [False, True])
def test_short_lived_leaves_do_not_shorten_the_crl(tmp_path: Path, force: bool) -> None:
    make_dev_pki(tmp_path, now=NOW)
    make_dev_pki(tmp_path, clients=["temp"], days=1, force=force, now=NOW)
    assert _crl(tmp_path).next_update_utc == NOW + dt.timedelta(days=365)
    revoke(tmp_path, [], days=1, now=NOW)  # as `certs --revoke --days 1` does
    assert _crl(tmp_path).next_update_utc == NOW + dt.timedelta(days=365)
    make_dev_pki(tmp_path, days=500, now=NOW)
    assert _crl(tmp_path).next_update_utc == NOW + dt.timedelta(days=500)


def test_a_broken_crl_stops_a_rerun_before_any_leaf_is_written(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, now=NOW)
    (tmp_path / "crl.pem").write_text("garbage")
    with pytest.raises(CertificateError, match=r"cannot update .*crl.pem"):
        make_dev_pki(tmp_path, clients=["alice"], now=NOW)
    assert not (tmp_path / "alice.pem").exists()


def test_a_new_ca_reports_the_old_cas_leaves(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, clients=["client", "alice", "bob"], now=NOW)
    other = tmp_path / "other"
    make_dev_pki(other, now=NOW)
    (tmp_path / "mine.pem").write_bytes((other / "server.pem").read_bytes())  # not the old CA's
    assert make_dev_pki(tmp_path, clients=["bob"], now=NOW).stale == ()
    issued = make_dev_pki(tmp_path, clients=["bob"], force=True, now=NOW)
    assert issued.stale == (tmp_path / "alice.pem",)
    assert (tmp_path / "alice.pem").exists()  # reported, not deleted


def test_a_new_ca_over_an_unreadable_one_reports_nothing(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, clients=["client", "alice"], now=NOW)
    (tmp_path / "ca.pem").write_text("garbage")
    assert make_dev_pki(tmp_path, force=True, now=NOW).stale == ()


def test_cli_adding_a_client_keeps_the_server_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path), "--server-name", "myhost.example"]) == 0
    before = (tmp_path / "server.pem").read_bytes()
    assert main(["certs", "--out", str(tmp_path), "--client", "alice"]) == 0
    assert (tmp_path / "server.pem").read_bytes() == before
    assert "server.pem" not in capsys.readouterr().out.split("reusing")[1]


def test_cli_revoke_without_names_renews_the_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path), "--client", "alice"]) == 0
    assert main(["certs", "--out", str(tmp_path), "--revoke", "alice"]) == 0
    before = (tmp_path / "crl.pem").read_bytes()
    capsys.readouterr()
    assert main(["certs", "--out", str(tmp_path), "--revoke"]) == 0
    assert capsys.readouterr().out == f"renewed {tmp_path / 'crl.pem'}\n"
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert (tmp_path / "crl.pem").read_bytes() != before
    assert len(list(crl)) == 1


def test_cli_force_lists_the_old_cas_leaves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path), "--client", "client", "--client", "alice"]) == 0
    capsys.readouterr()
    assert main(["certs", "--out", str(tmp_path), "--force"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"left {tmp_path / 'alice.pem'}: issued by the old CA, no longer trusted"
