"""Who may connect, beyond "signed by our CA": allow-lists of names and pins.

Sans-io: a frozen allow-list and a pure ``permits(identity)``.  The checks run
after the handshake, on the certificate OpenSSL already verified (chain,
validity, revocation), so they only ever narrow what the CA admits.

Matching is exact: no wildcards, no case folding for URIs (SPIFFE IDs are
case-sensitive), lowercase for DNS names and fingerprints (both are defined
case-insensitively).
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Iterable

import attrs

from .._exceptions import ConfigError
from ._identity import PeerIdentity


def _normalize_san(value: str) -> str:
    kind, sep, rest = value.partition(":")
    if sep and kind.upper() in ("DNS", "URI", "IP"):
        kind, value = kind.upper(), rest
    else:
        kind = "URI" if "://" in value else "DNS"
    if not value or any(c.isspace() for c in value):
        raise ConfigError(f"bad --allow-san value {value!r}: expected DNS:NAME, URI:URI or IP:ADDRESS")
    if kind == "IP":
        ip = _ip(value)
        if ip is None:
            raise ConfigError(f"bad --allow-san value 'IP:{value}': not an IP address")
        return ip
    return f"{kind}:{value.lower() if kind == 'DNS' else value}"


def _ip(text: str) -> str | None:
    """``IP:`` and the address in one spelling (getpeercert writes IPv6 uncompressed)."""
    try:
        return f"IP:{ipaddress.ip_address(text)}"
    except ValueError:
        return None


def _normalize_fingerprint(value: str) -> str:
    hexed = value.replace(":", "").strip().lower()
    if len(hexed) != 64 or not all(c in string.hexdigits for c in hexed):
        raise ConfigError(f"bad SHA-256 fingerprint {value!r}: expected 64 hex digits (colons allowed)")
    return hexed


def _check_cns(_inst: object, _attr: attrs.Attribute[frozenset[str]], value: frozenset[str]) -> None:
    if any(not cn or cn != cn.strip() for cn in value):
        raise ConfigError("an allowed common name is empty or has surrounding spaces")


def _entries(values: Iterable[str] | str) -> Iterable[str]:
    # A string is an iterable of strings too: common_names="alice" must mean {"alice"},
    # not {"a", "l", "i", "c", "e"}, which would let a client named "e" in.
    return (values,) if isinstance(values, str) else values


def _cns(values: Iterable[str] | str) -> frozenset[str]:
    return frozenset(_entries(values))


def _sans(values: Iterable[str] | str) -> frozenset[str]:
    return frozenset(_normalize_san(v) for v in _entries(values))


def _fingerprints(values: Iterable[str] | str) -> frozenset[str]:
    return frozenset(_normalize_fingerprint(v) for v in _entries(values))


@attrs.frozen(kw_only=True)
class AllowList:
    """Client identities the server accepts; empty means any certificate our CA signed."""

    common_names: frozenset[str] = attrs.field(default=frozenset(), converter=_cns, validator=_check_cns)
    #: ``"DNS:name"``, ``"URI:spiffe://trust-domain/path"`` or ``"IP:10.0.0.1"``.
    sans: frozenset[str] = attrs.field(default=frozenset(), converter=_sans)
    #: SHA-256 of the DER certificate, hex (colons and case are ignored).
    fingerprints: frozenset[str] = attrs.field(default=frozenset(), converter=_fingerprints)

    @property
    def restricts(self) -> bool:
        return bool(self.common_names or self.sans or self.fingerprints)

    def permits(self, identity: PeerIdentity) -> bool:
        """Whether *identity* matches at least one entry (or there are no entries)."""
        if not self.restricts:
            return True
        if identity.common_name is not None and identity.common_name in self.common_names:
            return True
        if identity.fingerprint_sha256 in self.fingerprints:
            return True
        return any(_peer_san(san) in self.sans for san in identity.sans)


def _peer_san(san: str) -> str:
    # PeerIdentity renders SANs the way getpeercert() names them ("DNS:x", "URI:x",
    # "IP Address:x").
    kind, _, value = san.partition(":")
    if kind == "DNS":
        return f"DNS:{value.lower()}"
    if kind == "IP Address":
        return _ip(value) or san
    return san
