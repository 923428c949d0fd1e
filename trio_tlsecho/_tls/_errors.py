"""TLS failures in words (for logs) and as fixed labels (for metrics)."""

from __future__ import annotations

import ssl

from .._exceptions import causes


def describe_tls_error(exc: BaseException) -> str:
    """One human line for whatever ended a TLS exchange.

    trio wraps the ``ssl.SSLError`` in ``BrokenResourceError``; the useful part is the
    cause: the verify message for certificate problems, OpenSSL's reason otherwise.
    """
    for cur in causes(exc):
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
    return str(exc) or type(exc).__name__


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
    26: "not for this use: its extended key usage does not allow it",
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
