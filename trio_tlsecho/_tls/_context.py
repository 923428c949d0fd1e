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

import ssl
from pathlib import Path
from typing import Protocol

from .._exceptions import CertificateError
from ._files import TLSFiles

# TLS 1.2 suites: ephemeral ECDHE key exchange and AEAD ciphers only (forward
# secret, no CBC, no static RSA).  TLS 1.3 suites are all AEAD already.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE


class ServerTLSSettings(Protocol):
    """What a server context is built from (a ``ServerConfig`` has all of it)."""

    @property
    def tls(self) -> TLSFiles: ...
    @property
    def min_tls_version(self) -> ssl.TLSVersion: ...
    @property
    def session_tickets(self) -> bool: ...
    @property
    def crl(self) -> Path | None: ...
    @property
    def keylog(self) -> Path | None: ...


class ClientTLSSettings(Protocol):
    """What a client context is built from (a ``ClientConfig`` has all of it)."""

    @property
    def tls(self) -> TLSFiles: ...


def server_context(config: ServerTLSSettings) -> ssl.SSLContext:
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


def client_context(config: ClientTLSSettings) -> ssl.SSLContext:
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
