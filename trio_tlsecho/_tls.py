"""TLS policy in one place: config -> ``SSLContext``, and who the peer is.

Theory of operation
-------------------
The server context is built fresh from files on every call and never handed to
anyone who might mutate it.  Policy (mutual TLS, TLS 1.2 minimum, ECDHE + AEAD
only, no compression, no renegotiation) is fixed here rather than exposed as
knobs, because every knob is a way to get it wrong.

Errors from OpenSSL are terse (``[X509: KEY_VALUES_MISMATCH]``).  Loading is
split into steps (read the file, load the chain, load the CA) so that each
failure can be reported as one line naming the file and what is wrong with it.

Session tickets are off unless asked for (``session_tickets``): tickets sent
right after the handshake are what turned a clean close into a reset in trio
#819 / openssl #7948, and a resumed session is not verified again.  When on,
OpenSSL's ticket keys live in the context, so a reload (a new context) also
ends every outstanding ticket: a CRL reload then applies to everyone.
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path
from typing import Any

import attrs

from ._config import ClientConfig, ServerConfig, TLSFiles
from ._exceptions import CertificateError

# TLS 1.2 suites: ephemeral ECDHE key exchange and AEAD ciphers only (forward
# secret, no CBC, no static RSA).  TLS 1.3 suites are all AEAD already.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE


def server_context(config: ServerConfig) -> ssl.SSLContext:
    """A server context that requires and verifies a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_policy(ctx, config.min_tls_version)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if config.session_tickets:
        ctx.num_tickets = 1
    else:
        ctx.num_tickets = 0  # TLS 1.3
        ctx.options |= ssl.OP_NO_TICKET  # TLS 1.2
    _load_identity(ctx, config.tls)
    _load_ca(ctx, config.tls.ca)
    if config.crl is not None:
        _load_crl(ctx, config.crl)
    if config.keylog is not None:
        try:
            ctx.keylog_filename = str(config.keylog)
        except OSError as exc:
            raise CertificateError(f"cannot write key log file {config.keylog}: {exc.strerror}") from None
    return ctx


def client_context(config: ClientConfig) -> ssl.SSLContext:
    """A client context that verifies the server against our CA and presents our cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    _apply_policy(ctx, ssl.TLSVersion.TLSv1_2)
    _load_identity(ctx, config.tls)
    _load_ca(ctx, config.tls.ca)
    return ctx


def _apply_policy(ctx: ssl.SSLContext, minimum: ssl.TLSVersion) -> None:
    ctx.minimum_version = minimum
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= _OPTIONS


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise CertificateError(f"{what} file is a directory: {path}") from None
    except OSError as exc:
        raise CertificateError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _load_identity(ctx: ssl.SSLContext, tls: TLSFiles) -> None:
    cert = _read(tls.cert, "certificate")
    key = _read(tls.key, "private key")
    if b"CERTIFICATE-----" not in cert:
        raise CertificateError(f"no PEM certificate in {tls.cert}")
    if b"PRIVATE KEY-----" not in key:
        hint = " (it holds a certificate, not a key)" if b"CERTIFICATE-----" in key else ""
        raise CertificateError(f"no PEM private key in {tls.key}{hint}")

    def no_passphrase() -> str:
        # Without a callback OpenSSL prompts on the terminal, blocking the event loop (or
        # a reload) until someone types; a server started by systemd has no one to type.
        raise CertificateError(f"private key {tls.key} is encrypted: give an unencrypted key (mode 0600)")

    try:
        ctx.load_cert_chain(tls.cert, tls.key, password=no_passphrase)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or exc.reason == "KEY_VALUES_MISMATCH":
            raise CertificateError(f"private key {tls.key} does not match certificate {tls.cert}") from None
        raise CertificateError(
            f"cannot load certificate {tls.cert} with key {tls.key}: {_reason(exc)}"
        ) from None
    except OSError as exc:  # the files changed between our read and OpenSSL's (a reload)
        raise CertificateError(
            f"cannot load certificate {tls.cert} with key {tls.key}: {exc.strerror or exc}"
        ) from None


def _load_ca(ctx: ssl.SSLContext, path: Path) -> None:
    data = _read(path, "CA")
    if b"CERTIFICATE-----" not in data:
        raise CertificateError(f"no PEM certificate in CA file {path}")
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise CertificateError(f"cannot load CA file {path}: {_reason(exc)}") from None


def _load_crl(ctx: ssl.SSLContext, path: Path) -> None:
    data = _read(path, "CRL")
    if b"-----BEGIN X509 CRL-----" not in data:
        raise CertificateError(f"no PEM certificate revocation list in {path}")
    if b"CERTIFICATE-----" in data:
        # The loader below would trust them as CAs: a CRL file must not widen who gets in.
        raise CertificateError(f"CRL file {path} also holds certificates; give the CRL alone")
    try:
        # cafile, not cadata: only the file loader reads CRLs as well as certificates.
        ctx.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError) as exc:
        raise CertificateError(f"cannot load CRL {path}: {_reason(exc)}") from None
    except OSError as exc:  # gone or changed since we read it
        raise CertificateError(f"cannot load CRL {path}: {exc.strerror or exc}") from None
    # Leaf only: our PKI is one CA deep, and CHECK_CHAIN would demand a CRL for the
    # root itself.  Note that OpenSSL then *requires* a current CRL for every client's
    # issuer: an expired CRL refuses everyone, which is the safe way to fail.
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


# -- who is the peer --------------------------------------------------------------


@attrs.frozen
class PeerIdentity:
    """The verified certificate a peer presented (or ``None`` fields if it presented none)."""

    subject: str
    issuer: str
    common_name: str | None
    #: Subject alternative names as ``"DNS:x"``, ``"IP Address:x"``, ``"URI:x"``.
    sans: tuple[str, ...]
    #: SHA-256 of the DER certificate, lowercase hex, as ``openssl x509 -fingerprint`` shows
    #: it without the colons.
    fingerprint_sha256: str
    not_after: str


def _format_name(rdns: Any) -> str:
    # getpeercert() gives ((("commonName", "x"),), (("organizationName", "y"),), ...)
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "localityName": "L",
        "stateOrProvinceName": "ST",
        "emailAddress": "emailAddress",
    }
    return ",".join(f"{short.get(k, k)}={v}" for rdn in rdns for k, v in rdn)


def peer_identity(ssl_object: Any) -> PeerIdentity | None:
    """Read the verified peer certificate off an ``SSLObject``/``SSLStream``."""
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return _identity(der, ssl_object.getpeercert())


class IdentityCache:
    """Peer identities by certificate: the connections that present one share one.

    A client's pool of connections presents one certificate.  One ``PeerIdentity``
    (~0.5 KB of strings) then serves them all, and ``getpeercert()``'s parse runs once
    per certificate instead of once per handshake.  An identity is the certificate's
    content only, so an entry never goes stale: whether a certificate is trusted (or
    revoked) is OpenSSL's check, at every handshake.  Bounded: when full, the
    certificate presented longest ago goes (a busy pool's stays).
    """

    def __init__(self, size: int = 512) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._size = size
        self._by_der: dict[bytes, PeerIdentity] = {}

    def __len__(self) -> int:
        return len(self._by_der)

    def peer_identity(self, ssl_object: Any) -> PeerIdentity | None:
        """As :func:`peer_identity`, shared with earlier connections of the same certificate."""
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
        if not der:
            return None
        identity = self._by_der.pop(der, None)  # re-added below: now the most recent
        if identity is None:
            identity = _identity(der, ssl_object.getpeercert())
            if len(self._by_der) >= self._size:
                del self._by_der[next(iter(self._by_der))]
        self._by_der[der] = identity
        return identity


def _identity(der: bytes, info: dict[str, Any]) -> PeerIdentity:
    subject = info.get("subject", ())
    cn = next((v for rdn in subject for k, v in rdn if k == "commonName"), None)
    return PeerIdentity(
        subject=_format_name(subject),
        issuer=_format_name(info.get("issuer", ())),
        common_name=cn,
        sans=tuple(f"{kind}:{value}" for kind, value in info.get("subjectAltName", ())),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        not_after=str(info.get("notAfter", "")),
    )


def describe_tls_error(exc: BaseException) -> str:
    """One human line for whatever ended a TLS exchange.

    trio wraps the ``ssl.SSLError`` in ``BrokenResourceError``; the useful part is the
    cause: the verify message for certificate problems, OpenSSL's reason otherwise.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            why = _VERIFY_CODES.get(cur.verify_code)
            detail = f"{why} ({cur.verify_message})" if why else cur.verify_message
            return f"certificate verify failed: {detail}"
        if isinstance(cur, ssl.SSLEOFError):  # its text would put "_ssl.c:NNNN" in a log
            return "peer closed the connection without a TLS close_notify"
        if isinstance(cur, ssl.SSLError):
            reason = cur.reason or ""
            return _ALERTS.get(reason, reason.lower().replace("_", " ") or str(cur))
        if isinstance(cur, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(cur, BrokenPipeError):
            return "connection closed by peer (broken pipe)"
        cur = cur.__cause__ or cur.__context__
    return str(exc) or type(exc).__name__


def classify_tls_error(exc: BaseException) -> str:
    """A short, fixed label for why a handshake failed (a metrics label, not prose)."""
    cur: BaseException | None = exc
    seen: set[int] = set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return _VERIFY_LABELS.get(cur.verify_code, "unknown_ca")
        if isinstance(cur, ssl.SSLError):
            if cur.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
                return "no_cert"
            return "protocol"
        cur = cur.__cause__ or cur.__context__
    return "protocol"


_VERIFY_LABELS = {
    9: "not_yet_valid",
    10: "expired",
    23: "revoked",
    # The server's CRL is missing, expired or bad: an operator's problem, not a client's,
    # and one that refuses every client (VERIFY_CRL_CHECK_LEAF fails closed).
    **dict.fromkeys((3, 8, 11, 12, 15, 16), "crl"),
}

# X509_V_ERR_* codes a server meets most, in words that say what to do about them.
_VERIFY_CODES = {
    2: "not issued by a trusted CA",
    9: "not yet valid",
    10: "expired",
    18: "self-signed, not issued by a trusted CA",
    3: "no current CRL for its issuer",
    8: "the CRL's signature does not verify",
    11: "the CRL is not yet valid",
    12: "the CRL has expired",
    19: "not issued by a trusted CA",
    20: "not issued by a trusted CA",
    23: "revoked",
    62: "hostname mismatch",
    64: "IP address mismatch",
}

# Alerts received from the *other* side, reworded so that the log says who objected.
_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "peer requires a client certificate (alert: certificate required)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "peer rejected our certificate (alert: bad certificate)",
    "TLSV1_ALERT_UNKNOWN_CA": "peer rejected our certificate: unknown CA (alert: unknown ca)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "peer rejected our certificate: expired (alert: certificate expired)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "peer rejected our certificate: revoked (alert: certificate revoked)",
    "TLSV1_ALERT_DECRYPT_ERROR": "peer rejected the handshake (alert: decrypt error)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "peer did not present a client certificate",
    "WRONG_VERSION_NUMBER": "not TLS (wrong version number): plain text or garbage?",
    "UNSUPPORTED_PROTOCOL": "peer offers only an unsupported (too old) TLS version",
    "NO_SHARED_CIPHER": "no cipher suite in common with the peer",
    "HTTP_REQUEST": "plain HTTP request on a TLS port",
    "UNEXPECTED_EOF_WHILE_READING": "peer closed the connection without a TLS close_notify",
}
