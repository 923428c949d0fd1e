"""PROXY protocol v1 and v2 headers (HAProxy's spec), sans-io.

Theory of operation
-------------------
An L4 load balancer that passes TLS through untouched (HAProxy ``mode tcp``,
nginx ``stream``, cloud NLBs) can prefix each connection with a PROXY header
naming the real client.  The header comes *before* the TLS ClientHello, so it
is read from the raw TCP stream and must be consumed exactly: one byte too many
and the TLS handshake sees a corrupt record.

:func:`parse` is pure: given the bytes seen so far it returns ``None`` (need
more), or the header and how many bytes it used, or raises
:class:`ProxyProtocolError`.  The reader in :func:`read_header` never consumes
past the header: it peeks (``MSG_PEEK``), and while the header is incomplete
every byte in the socket buffer is known to be part of it, so it is safe to
consume; once complete it consumes exactly the header's length.

TLVs: a v2 header may carry type-length-value fields after the addresses
(:func:`encode_tlv`, :func:`ssl_tlv`); :attr:`ProxyHeader.extra` keeps those bytes
as received and :meth:`ProxyHeader.tlvs` decodes them on demand, so that the
server, which reads only the addresses, never refuses a balancer over a TLV.

Limits: v1 headers are at most 107 bytes (the spec's own bound); v2 headers
are refused above :data:`MAX_V2_LENGTH` bytes of addresses and TLVs, far more
than HAProxy sends even with SSL TLVs, far less than the 64 KiB the length
field allows an attacker to announce.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import attrs
import trio

from .._exceptions import TLSEchoError

V1_PREFIX = b"PROXY "
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V2_LENGTH = 2048
_V2_FIXED = 16

# TLV types and the PP2_TYPE_SSL fields (the spec's section 2.2).
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


class ProxyProtocolError(TLSEchoError):
    """The peer sent no valid PROXY header where one was required."""


@attrs.frozen
class ProxyHeader:
    """What the balancer says about the connection."""

    version: int
    #: ``(host, port)`` of the real client, or ``None`` for LOCAL / UNKNOWN
    #: (the balancer's own health checks): then the socket's address stands.
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    #: A v2 header's bytes after the addresses: its TLVs, undecoded (see :meth:`tlvs`).
    extra: bytes = b""

    def tlvs(self) -> list[tuple[int, bytes]]:
        """The v2 TLVs as ``(type, value)`` in order; :class:`ProxyProtocolError` if malformed."""
        return parse_tlvs(self.extra)


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Split *data* into ``(type, value)`` TLVs (one byte of type, two of length, big-endian).

    The value of PP2_TYPE_SSL is five bytes (client flags, verify result) and then
    TLVs of its own: ``parse_tlvs(value[5:])``.
    """
    found = []
    at = 0
    while at < len(data):
        if len(data) - at < 3:
            raise ProxyProtocolError(f"PROXY v2 TLV header cut short at byte {at}")
        kind, length = struct.unpack_from("!BH", data, at)
        end = at + 3 + length
        if end > len(data):
            raise ProxyProtocolError(f"PROXY v2 TLV 0x{kind:02x} of {length} bytes runs past the header")
        found.append((kind, data[at + 3 : end]))
        at = end
    return found


def parse_proxy_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse a header at the start of *data*: ``(header, bytes used)``, or ``None`` for "need more"."""
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyProtocolError("no PROXY protocol header (the connection does not start with one)")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    if not V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        raise ProxyProtocolError("no PROXY protocol header (the connection does not start with one)")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    parts = line.split(" ")
    if parts[1:2] == ["UNKNOWN"]:
        return ProxyHeader(1, None, None), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 header {line[:60]!r}")
    _, family, src, dst, sport, dport = parts
    version = 4 if family == "TCP4" else 6
    return (
        ProxyHeader(1, _v1_address(src, sport, version), _v1_address(dst, dport, version)),
        end + 2,
    )


def _v1_address(host: str, port: str, version: int) -> tuple[str, int]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyProtocolError(f"bad address {host!r} in PROXY v1 header") from None
    if address.version != version:
        raise ProxyProtocolError(f"address {host!r} does not match TCP{version} in PROXY v1 header")
    # The spec forbids leading zeros and signs; int() would accept "+1" and "007".
    if not port.isdigit() or (len(port) > 1 and port[0] == "0") or int(port) > 65535:
        raise ProxyProtocolError(f"bad port {port!r} in PROXY v1 header")
    return str(address), int(port)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if not V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        raise ProxyProtocolError("no PROXY protocol header (the connection does not start with one)")
    if len(data) < _V2_FIXED:
        return None
    ver_cmd, family, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header with unknown command {command}")
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError(f"PROXY v2 header of {length} bytes is over the {MAX_V2_LENGTH}-byte limit")
    total = _V2_FIXED + length
    if len(data) < total:
        return None
    body = data[_V2_FIXED:total]
    if command == 0:  # LOCAL: the balancer talking for itself (health checks)
        return ProxyHeader(2, None, None), total
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyProtocolError("PROXY v2 header too short for IPv4 addresses")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        family_id, extra = socket.AF_INET, body[12:]
    elif family == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyProtocolError("PROXY v2 header too short for IPv6 addresses")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        family_id, extra = socket.AF_INET6, body[36:]
    elif family == 0x00:  # UNSPEC: addresses unknown, like v1 UNKNOWN
        return ProxyHeader(2, None, None, body), total
    else:
        raise ProxyProtocolError(f"PROXY v2 header for unsupported family/protocol 0x{family:02x}")
    return (
        ProxyHeader(
            2,
            (socket.inet_ntop(family_id, src), sport),
            (socket.inet_ntop(family_id, dst), dport),
            extra,
        ),
        total,
    )


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header, as a load balancer would send it (for clients and tests)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, tlvs: bytes = b""
) -> bytes:
    """A v2 PROXY-command header for TCP over IPv4 or IPv6, then *tlvs* (from :func:`encode_tlv`).

    Without addresses (``None``): family UNSPEC, which tells the receiver to keep the
    socket's own address but still carries the TLVs.  Both addresses must be of one family.
    """
    if source is None or destination is None:
        body, family = b"", 0x00
    else:
        v6 = ":" in source[0]
        family_id = socket.AF_INET6 if v6 else socket.AF_INET
        body = (
            socket.inet_pton(family_id, source[0])
            + socket.inet_pton(family_id, destination[0])
            + struct.pack("!HH", source[1], destination[1])
        )
        family = 0x21 if v6 else 0x11
    body += tlvs
    if len(body) > MAX_V2_LENGTH:
        raise ValueError(f"PROXY v2 header of {len(body)} bytes is over the {MAX_V2_LENGTH}-byte limit")
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


def encode_tlv(kind: int, value: bytes) -> bytes:
    """One TLV: a byte of type, two bytes of length (big-endian), the value."""
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{kind:02x} value of {len(value)} bytes is over 65535")
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(*, version: str, cipher: str, common_name: str | None, resumed: bool) -> bytes:
    """PP2_TYPE_SSL for a client whose certificate was verified, as HAProxy sends it.

    Client flags: PP2_CLIENT_SSL, PP2_CLIENT_CERT_SESS (the session has a certificate)
    and PP2_CLIENT_CERT_CONN unless the session was resumed (the certificate was sent
    on this connection); verify 0 (verified).  Sub-TLVs: version, CN (if any), cipher.
    """
    client = PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS | (0 if resumed else PP2_CLIENT_CERT_CONN)
    sub = encode_tlv(PP2_SUBTYPE_SSL_VERSION, version.encode())
    if common_name is not None:
        sub += encode_tlv(PP2_SUBTYPE_SSL_CN, common_name.encode())
    sub += encode_tlv(PP2_SUBTYPE_SSL_CIPHER, cipher.encode())
    return encode_tlv(PP2_TYPE_SSL, struct.pack("!BI", client, 0) + sub)


async def read_proxy_header(sock: trio.socket.SocketType) -> ProxyHeader:
    """Consume exactly one PROXY header from *sock*; the caller bounds the time."""
    consumed = bytearray()
    while True:
        peeked = await sock.recv(_V2_FIXED + MAX_V2_LENGTH, socket.MSG_PEEK)
        if not peeked:
            raise ProxyProtocolError(
                "connection closed before a complete PROXY header"
                + (f" ({len(consumed)} bytes)" if consumed else "")
            )
        result = parse_proxy_header(bytes(consumed) + peeked)
        if result is None:
            # Incomplete: everything buffered belongs to the header, so take it and
            # wait for more (peeking again at the same bytes would spin).
            consumed += await sock.recv(len(peeked))
            continue
        header, used = result
        await sock.recv(used - len(consumed))
        return header
