"""A development PKI made with trustme: one CA, a server certificate, client certificates.

This is for getting started and for tests, not for production; real deployments
pass their own files.  Two things differ from trustme's defaults on purpose:

* trustme certificates are valid until the year 3000.  Here every certificate has a
  bounded validity (leaves ``days``, default a year; the CA ten years), because a
  certificate that never expires is a habit nobody should learn from a demo.
* An existing CA in the directory is reused, so that ``certs --client NAME`` adds a
  client without invalidating every certificate already handed out.  ``force``
  makes a new CA.  A reused CA that ends before the new leaves would is an error,
  not a silent truncation: a leaf valid past its CA fails the day the CA does.

Every client ``NAME`` is written as ``NAME.pem``/``NAME.key``, one name per file, so
that ``certs --revoke NAME`` finds it; ``client`` and ``loadgen`` default to the
client named ``client``, which is why a new CA always gets one.

A run that reuses the CA is for adding or refreshing clients, so it leaves what a
running server depends on as it was, unless asked:

* ``server.pem`` is re-issued only when server names are given, or when it is
  missing, unreadable, not from this CA, without its key, or in the last third of
  its validity (the point where step-ca and certbot renew).  A re-issue without
  names keeps the old certificate's names: a ``--server-name myhost.example`` given
  once must not turn back into ``localhost`` behind the user's back, or the next
  reload serves a certificate that fails every hostname check.
* ``crl.pem`` is re-signed with a fresh ``nextUpdate``, keeping its entries.  A CRL
  past its ``nextUpdate`` makes OpenSSL refuse every client, and nothing else renews
  it, so any run of ``certs`` does.  Its validity never follows a short ``days``: a
  one-day test client must not make the whole server's CRL lapse tomorrow.

A new CA (``force``) untrusts every leaf of the old one.  ``client.pem`` and
``server.pem`` are rewritten; other ``NAME.pem`` files of the old CA are reported in
:attr:`IssuedFiles.stale`, not deleted: they are somebody's files, merely useless now.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import attrs
import trustme
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from .._exceptions import CertificateError, ConfigError

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_CLIENT = "client"
DEFAULT_DAYS = 365
CA_DAYS = 3650
# A CRL is valid for at least this long, whatever the leaves' days (see the top).
CRL_DAYS = DEFAULT_DAYS
_ORG = "trio_tlsecho development PKI"
# Files of the PKI itself, which no client may be written over.
_RESERVED = ("ca", "server", "crl")
# Clock skew between machines: a certificate made a second ago must already verify.
_BACKDATE = dt.timedelta(hours=1)


@attrs.frozen
class IssuedFiles:
    """What :func:`make_dev_pki` wrote."""

    directory: Path
    ca_created: bool
    written: tuple[Path, ...]
    #: With a new CA: the other ``NAME.pem`` files here that the old CA issued, which
    #: nothing trusts any more.  Left in place, for the caller to report.
    stale: tuple[Path, ...] = ()


def has_certificates(directory: str | Path) -> bool:
    """Whether *directory* already holds a CA certificate (the mark of a PKI here)."""
    return (Path(directory) / "ca.pem").is_file()


def make_dev_pki(
    directory: str | Path,
    *,
    server_names: Sequence[str] | None = None,
    clients: Sequence[str] = (DEFAULT_CLIENT,),
    days: int = DEFAULT_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> IssuedFiles:
    """Write ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and client pairs.

    Each client is written as ``NAME.pem``/``NAME.key``; a new CA also gets the
    default client ``client``.  Keys are mode 0600.  *server_names* defaults to
    :data:`DEFAULT_SERVER_NAMES` for a new CA; with a reused CA, ``None`` keeps the
    server certificate (or its names, when it is due for renewal), and the CRL is
    re-signed with a fresh ``nextUpdate``.
    """
    _check_days(days)
    if server_names is not None and not server_names:
        raise ConfigError("at least one server name is needed")
    _check_client_names(clients)
    now = now or dt.datetime.now(dt.UTC)
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {out}: {exc.strerror}") from None

    written: list[Path] = []
    ca_cert, ca_key = out / "ca.pem", out / "ca.key"
    reuse = ca_cert.exists() and not force
    old_ca: x509.Certificate | None = None
    names: Sequence[str] | None
    if reuse:
        ca = _load_ca(ca_cert, ca_key)
        _check_ca_outlives(ca_cert, ca, now, days)
        # First, so that a broken CRL stops the run before any leaf is rewritten.
        written.append(revoke(out, [], days=days, now=now))
        names = _server_names_to_issue(out, ca, server_names, now)
    else:
        # Whatever client.pem was here belongs to the old CA; `client` would fail with it.
        if all(name.casefold() != DEFAULT_CLIENT for name in clients):
            clients = (DEFAULT_CLIENT, *clients)
        old_ca = _read_cert(ca_cert)
        ca = _new_ca(now)
        _write(ca_cert, ca.cert_pem.bytes(), private=False)
        _write(ca_key, ca.private_key_pem.bytes(), private=True)
        written += [ca_cert, ca_key]
        # The old CRL is the old CA's: revoke() would drop its entries anyway, and a
        # broken one must not stop the new CA that replaces it.
        with contextlib.suppress(FileNotFoundError):
            (out / CRL_NAME).unlink()
        # An empty CRL from the start, so `serve --crl` works before anything is revoked.
        written.append(revoke(out, [], days=days, now=now))
        names = server_names or DEFAULT_SERVER_NAMES

    # trustme wants naive UTC datetimes.
    nb, na = _naive_utc(now - _BACKDATE), _naive_utc(now + dt.timedelta(days=days))

    if names is not None:
        try:
            server = _issue(ca, "server", names, not_before=nb, not_after=na)
        except ValueError as exc:  # idna rejects names that are not host names
            raise ConfigError(f"bad server name in {list(names)}: {exc}") from None
        written += _write_leaf(out, "server", server)

    for name in clients:
        written += _write_leaf(out, name, _issue(ca, "client", [name], not_before=nb, not_after=na))
    stale = _issued_by(out, old_ca, exclude={ca_cert, *written}) if old_ca is not None else ()
    return IssuedFiles(directory=out, ca_created=not reuse, written=tuple(written), stale=stale)


def _server_names_to_issue(
    out: Path, ca: trustme.CA, requested: Sequence[str] | None, now: dt.datetime
) -> Sequence[str] | None:
    """The names for a new ``server.pem`` under a reused CA, or ``None`` to keep the one there."""
    if requested is not None:
        return requested
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    current = _read_cert(out / "server.pem")
    if current is None or not _signed_by(current, ca_cert):
        return DEFAULT_SERVER_NAMES
    try:
        sans = list(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    # str() of these is what trustme's issue_cert() parses back (names, addresses, networks).
    kept = [str(n.value) for n in sans if isinstance(n, (x509.DNSName, x509.IPAddress, x509.RFC822Name))]
    if not kept:
        return DEFAULT_SERVER_NAMES
    start, end = current.not_valid_before_utc, current.not_valid_after_utc
    if end - now < (end - start) / 3 or not _key_matches(out / "server.key", current):
        return kept
    return None


def _read_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _signed_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_matches(path: Path, cert: x509.Certificate) -> bool:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):  # missing, garbage, encrypted
        return False
    return key.public_key() == cert.public_key()


def _issued_by(out: Path, ca: x509.Certificate, *, exclude: set[Path]) -> tuple[Path, ...]:
    found = []
    for path in sorted(out.glob("*.pem")):
        if path in exclude or path.name == CRL_NAME:
            continue
        cert = _read_cert(path)
        if cert is not None and _signed_by(cert, ca):
            found.append(path)
    return tuple(found)


def _check_days(days: int) -> None:
    # Bounded by the CA's lifetime: no leaf may outlive a new CA, and dates past the
    # year 9999 would not even be representable.
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= CA_DAYS:
        raise ConfigError(
            f"days must be a whole number from 1 to {CA_DAYS} (the CA's lifetime), not {days!r}"
        )


def _check_client_names(names: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        _check_file_name(name)
        # Case-folded: on a case-insensitive file system Alice.pem and alice.pem are one file.
        other = seen.get(name.casefold())
        if other is not None:
            raise ConfigError(
                f"client names repeat: {other!r} and {name!r} would write the same files (names ignore case)"
            )
        seen[name.casefold()] = name


def _check_file_name(name: str) -> None:
    # Client names become both a DNS SAN and a file name, so keep them to host-name letters.
    ok = name and all(c.isalnum() or c in "-." for c in name) and not name.startswith((".", "-"))
    if not ok or name.casefold() in _RESERVED:
        raise ConfigError(
            f"bad client name {name!r}: use letters, digits, '-' and '.', not 'ca', 'server' or 'crl'"
        )


def _check_ca_outlives(path: Path, ca: trustme.CA, now: dt.datetime, days: int) -> None:
    end = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).not_valid_after_utc
    if end <= now:
        raise CertificateError(f"the CA {path} expired on {end:%Y-%m-%d}; use --force to make a new one")
    if end < now + dt.timedelta(days=days):
        raise CertificateError(
            f"the CA {path} expires on {end:%Y-%m-%d}, before certificates valid for {days} days would;"
            " use --force to make a new one, or fewer --days"
        )


def _new_ca(now: dt.datetime) -> trustme.CA:
    # A random suffix, as trustme does: two dev CAs must never share a name, or a
    # client trusting both (say, during a CA rotation) could build the wrong chain.
    made = trustme.CA(organization_name=_ORG, organization_unit_name=f"development CA {secrets.token_hex(4)}")
    # trustme's CA is valid until the year 3000; re-sign the same certificate (same key,
    # subject, extensions) with a bounded validity.  Leaves are then issued under it.
    key = serialization.load_pem_private_key(made.private_key_pem.bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = x509.load_pem_x509_certificate(made.cert_pem.bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(key.public_key())
        .serial_number(old.serial_number)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
    )
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    cert = builder.sign(key, hashes.SHA256())
    return trustme.CA.from_pem(cert.public_bytes(serialization.Encoding.PEM), made.private_key_pem.bytes())


def _load_ca(cert_path: Path, key_path: Path) -> trustme.CA:
    try:
        cert, key = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError as exc:
        raise CertificateError(
            f"{cert_path} exists but its key {key_path} does not; use --force to make a new CA"
        ) from exc
    except OSError as exc:
        raise CertificateError(f"cannot read the CA in {cert_path.parent}: {exc.strerror}") from None
    try:
        return trustme.CA.from_pem(cert, key)
    except ValueError as exc:
        raise CertificateError(f"cannot load the CA {cert_path}: {exc}") from None


def _naive_utc(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC).replace(tzinfo=None)


#: The one extended key usage of each role's certificates.
_ROLE_USAGES = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}
# An ECDSA key signs (the handshake's CertificateVerify or ServerKeyExchange, with
# ECDHE doing the key agreement); keyEncipherment is an RSA key-transport usage.
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_REPLACED = (x509.ExtendedKeyUsage, x509.KeyUsage, x509.SubjectAlternativeName)


def _issue(
    ca: trustme.CA, role: str, names: Sequence[str], *, not_before: dt.datetime, not_after: dt.datetime
) -> _Leaf:
    """A leaf for *role* (``server`` or ``client``) named *names*, CN the first of them.

    trustme parses the names (DNS, IP addresses) and makes the key; its leaves are
    valid for every purpose (serverAuth, clientAuth and codeSigning, so a client's
    certificate would also pass as a server's) with a critical SAN beside a subject.
    The same certificate is signed again, least-privilege: this role's extended key
    usage only, digitalSignature only, and the SAN not critical (RFC 5280 4.2.1.6:
    critical only when the subject is empty; ours has a CN).
    """
    made = ca.issue_cert(
        *names,
        common_name=names[0],
        organization_name=_ORG,
        organization_unit_name=role,
        not_before=not_before,
        not_after=not_after,
    )
    old = x509.load_pem_x509_certificate(made.cert_chain_pems[0].bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(old.public_key())
        .serial_number(old.serial_number)
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
    )
    for ext in old.extensions:
        if not isinstance(ext.value, _REPLACED):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    sans = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    cert = (
        builder.add_extension(sans, critical=False)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([_ROLE_USAGES[role]]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _Leaf(cert.public_bytes(serialization.Encoding.PEM), made.private_key_pem.bytes())


@attrs.frozen
class _Leaf:
    cert_pem: bytes
    key_pem: bytes


def _write_leaf(out: Path, stem: str, leaf: _Leaf) -> list[Path]:
    cert, key = out / f"{stem}.pem", out / f"{stem}.key"
    _write(cert, leaf.cert_pem, private=False)
    _write(key, leaf.key_pem, private=True)
    return [cert, key]


def _write(path: Path, data: bytes, *, private: bool) -> None:
    # Create keys 0600 from the start (no window where they are world-readable), and
    # replace files atomically so a reader never sees half a certificate.  O_EXCL: a
    # temp file left by an interrupted run would keep its own mode (say 0644), and a
    # key written into it would inherit that.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


CRL_NAME = "crl.pem"


def revoke(
    directory: str | Path,
    names: Sequence[str],
    *,
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> Path:
    """Add the certificates ``NAME.pem`` in *directory* to its CRL (``crl.pem``), signed by its CA.

    Entries already in the CRL stay, and the CRL is re-signed valid for *days* from
    now, but at least :data:`CRL_DAYS`, so no *names* just renews it.  Returns the
    CRL's path; the server picks it up with ``--crl`` (and again on SIGHUP).
    """
    _check_days(days)
    now = now or dt.datetime.now(dt.UTC)
    out = Path(directory)
    ca_path, key_path = out / "ca.pem", out / "ca.key"
    if not ca_path.exists():
        raise CertificateError(f"no CA in {out}: run 'certs' first")
    ca = _load_ca(ca_path, key_path)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)

    crl_path = out / CRL_NAME
    revoked: dict[int, x509.RevokedCertificate] = {}
    number = 1
    if crl_path.exists():
        try:
            old = x509.load_pem_x509_crl(crl_path.read_bytes())
        except (OSError, ValueError):
            raise CertificateError(
                f"cannot update {crl_path}: it is not a readable PEM CRL (move it away to start a new one)"
            ) from None
        if old.is_signature_valid(ca_key.public_key()):  # a CRL of an older CA is dropped
            revoked = {entry.serial_number: entry for entry in old}
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    for name in names:
        leaf_path = out / f"{name}.pem"
        try:
            leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())
        except FileNotFoundError:
            raise CertificateError(f"cannot revoke {name!r}: no certificate {leaf_path}") from None
        except (OSError, ValueError):
            raise CertificateError(
                f"cannot revoke {name!r}: {leaf_path} is not a readable PEM certificate"
            ) from None
        if not _signed_by(leaf, ca_cert):
            raise CertificateError(f"cannot revoke {leaf_path}: it was not issued by {ca_path}")
        revoked.setdefault(
            leaf.serial_number,
            x509.RevokedCertificateBuilder().serial_number(leaf.serial_number).revocation_date(now).build(),
        )

    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=max(days, CRL_DAYS)))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in revoked.values():
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write(crl_path, crl.public_bytes(serialization.Encoding.PEM), private=False)
    return crl_path
