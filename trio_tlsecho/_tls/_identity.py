"""Who the peer is: the verified certificate, read once per certificate."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs


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
