"""How a connection's admission ended: one vocabulary for the metrics and the logs.

The values are the ``result`` label of ``tlsecho_handshakes_total``: stable, short,
and each one a different thing for an operator to do.
"""

from __future__ import annotations

import enum
import ssl

from .._exceptions import causes


class Outcome(enum.StrEnum):
    """Why a connection was admitted, or why not."""

    OK = "ok"
    #: The client sent no certificate.
    NO_CERT = "no_cert"
    #: Not signed by our CA (or self-signed).
    UNKNOWN_CA = "unknown_ca"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    #: The server's CRL is missing, expired or bad: the operator's problem, and one that
    #: refuses every client (a CRL check fails closed).
    CRL = "crl"
    #: A certificate from our CA, but not for client authentication (its extended key
    #: usage says serverAuth only, say): a server's certificate offered as a client's.
    WRONG_PURPOSE = "wrong_purpose"
    #: Verified, but not on the allow-list.
    IDENTITY_REFUSED = "identity_refused"
    #: The PROXY header and handshake took longer than ``handshake_timeout``.
    TIMEOUT = "timeout"
    #: A bad PROXY header, or one from an address not in ``proxy_from``.
    PROXY_HEADER = "proxy_header"
    #: Anything else TLS refused: not TLS, no common version or cipher, a bad alert...
    PROTOCOL = "protocol"
    #: Closed before sending a byte: a health check or a port scan, not a refusal.
    PROBE = "probe"


# X509_V_ERR_* codes by what they mean for the operator.
_BY_VERIFY_CODE = {
    9: Outcome.NOT_YET_VALID,
    10: Outcome.EXPIRED,
    23: Outcome.REVOKED,
    26: Outcome.WRONG_PURPOSE,  # X509_V_ERR_INVALID_PURPOSE: "unsuitable certificate purpose"
    **dict.fromkeys((3, 8, 11, 12, 15, 16), Outcome.CRL),
}


def handshake_outcome(exc: BaseException) -> Outcome:
    """What a failed handshake (or a failed wrap of its socket) was, by its cause."""
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _BY_VERIFY_CODE.get(cause.verify_code, Outcome.UNKNOWN_CA)
        if isinstance(cause, ssl.SSLError):
            if cause.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
                return Outcome.NO_CERT
            return Outcome.PROTOCOL
    return Outcome.PROTOCOL
