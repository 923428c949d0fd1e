"""Frozen configuration objects, validated when they are built.

Every check that needs no I/O happens here, so a bad value fails at the line
that made it, with a message naming the value.  Checks that need the
filesystem or the network (does the key match the certificate? is the port
free?) happen where those resources are opened: :mod:`._tls` and
:mod:`._server`.
"""

from __future__ import annotations

import ipaddress
import math
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._exceptions import ConfigError
from ._policy import AllowList

if TYPE_CHECKING:
    from ._handlers import Handler

#: The port ``serve`` listens on when no ``--listen`` is given (as openssl s_server's 4433
#: and ghostunnel's 8443 do, a fixed, documented, unprivileged default).
DEFAULT_PORT = 8443
DEFAULT_HOST = "127.0.0.1"
#: Seconds a peer gets to complete the TLS handshake.  Long enough for a slow
#: link, short enough that a silent client does not pin a slot for minutes.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds an established connection may move no bytes in either direction.
#: stunnel's TIMEOUTidle is 12 h; five minutes keeps abandoned connections from
#: piling up while leaving interactive protocols plenty of room.
DEFAULT_IDLE_TIMEOUT = 300.0
#: Seconds open connections get to finish after a graceful stop (SIGTERM).
DEFAULT_SHUTDOWN_GRACE = 10.0

_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with IPv6 hosts in brackets (``[::1]:8443``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_port(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{attribute.name} must be an integer from 0 to 65535, not {value!r}")


def _check_host(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigError(f"host must be a non-empty name or address, not {value!r}")
    try:
        ipaddress.ip_address(value.partition("%")[0])
    except ValueError:
        # What the resolver will be asked for: a name IDNA cannot encode (an empty
        # label, a label over 63 characters) would fail there with a UnicodeError.
        try:
            value.encode("idna")
        except UnicodeError as exc:
            raise ConfigError(f"bad host name {value!r}: {exc}") from None


@attrs.frozen
class Address:
    """A host and port: where to listen, or where to connect."""

    host: str = attrs.field(validator=_check_host)
    port: int = attrs.field(validator=_check_port)

    @classmethod
    def parse(cls, text: str, *, default_host: str | None = None) -> Address:
        """Parse ``HOST:PORT``, ``[V6]:PORT`` or (with *default_host*) ``PORT``."""
        text = text.strip()
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise ConfigError(f"bad address {text!r}: expected [IPV6]:PORT")
            _require_ip(host, text)
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        elif text.count(":") > 1:
            raise ConfigError(f"bad address {text!r}: write IPv6 addresses as [ADDR]:PORT")
        elif default_host is not None:
            host, port = default_host, text
        else:
            raise ConfigError(f"bad address {text!r}: expected HOST:PORT")
        # isdigit() alone admits "²" and other digits int() refuses.
        if not (port.isascii() and port.isdigit()):
            raise ConfigError(f"bad address {text!r}: port {port!r} is not a number")
        if not host:
            raise ConfigError(f"bad address {text!r}: host is empty")
        return cls(host, int(port))

    def __str__(self) -> str:
        return format_address(self.host, self.port)


def _require_ip(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ConfigError(f"bad address {text!r}: {host!r} is not an IPv6 address") from None


def _to_path(value: str | Path) -> Path:
    return Path(value)


@attrs.frozen
class TLSFiles:
    """PEM files: our certificate chain, its private key, and the CA we trust for peers."""

    cert: Path = attrs.field(converter=_to_path)
    key: Path = attrs.field(converter=_to_path)
    ca: Path = attrs.field(converter=_to_path)

    @classmethod
    def from_dir(cls, directory: str | Path, name: str) -> TLSFiles:
        """The layout ``certs`` writes: ``NAME.pem``, ``NAME.key`` and ``ca.pem``."""
        d = Path(directory)
        return cls(cert=d / f"{name}.pem", key=d / f"{name}.key", ca=d / "ca.pem")


def _to_addresses(value: Iterable[Address | str]) -> tuple[Address, ...]:
    if isinstance(value, (str, Address)):
        value = [value]
    return tuple(v if isinstance(v, Address) else Address.parse(v) for v in value)


def _check_nonempty(_inst: object, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    if not value:
        raise ConfigError(f"{attribute.name} needs at least one address")


def _check_timeout(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


def _check_optional_timeout(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _check_timeout(_inst, attribute, value)


def _check_grace(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"{attribute.name} must be zero or a positive number of seconds, not {value!r}")


def _check_max_connections(_inst: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{attribute.name} must be a whole number of at least 1, not {value!r}")


def _to_optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _to_networks(values: Iterable[str | Network]) -> tuple[Network, ...]:
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(
                f"bad network {value!r}: expected an address or CIDR, e.g. 10.0.0.0/8"
            ) from None
    return tuple(networks)


ENGINES = ("trio", "socket")


def _check_engine(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {value!r}")


def _to_tls_version(value: str | ssl.TLSVersion) -> ssl.TLSVersion:
    if isinstance(value, ssl.TLSVersion):
        if value not in _TLS_VERSIONS.values():
            raise ConfigError(f"minimum TLS version must be 1.2 or 1.3, not {value.name}")
        return value
    try:
        return _TLS_VERSIONS[str(value)]
    except KeyError:
        raise ConfigError(f"minimum TLS version must be 1.2 or 1.3, not {value!r}") from None


def _check_handler(_inst: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, str):
        if not value:
            raise ConfigError("handler name is empty")
    elif not callable(value):
        raise ConfigError(f"handler must be a name, 'module:attr' or an async callable, not {value!r}")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything :func:`serve` needs.  Build with keywords; change with :func:`attrs.evolve`."""

    tls: TLSFiles = attrs.field(validator=attrs.validators.instance_of(TLSFiles))
    listen: tuple[Address, ...] = attrs.field(
        default=(Address(DEFAULT_HOST, DEFAULT_PORT),),
        converter=_to_addresses,
        validator=_check_nonempty,
    )
    #: A registered name (``"echo"``), ``"module:attr"``, or the handler itself.
    handler: str | Handler = attrs.field(default="echo", validator=_check_handler)
    handshake_timeout: float = attrs.field(default=DEFAULT_HANDSHAKE_TIMEOUT, validator=_check_timeout)
    min_tls_version: ssl.TLSVersion = attrs.field(default=ssl.TLSVersion.TLSv1_2, converter=_to_tls_version)
    #: Client identities allowed in beyond "signed by our CA"; empty allows every one.
    allow: AllowList = attrs.field(factory=AllowList, validator=attrs.validators.instance_of(AllowList))
    #: A PEM certificate revocation list from our CA; revoked client certificates are refused.
    crl: Path | None = attrs.field(default=None, converter=_to_optional_path)
    #: Close established connections that move no bytes for this long; ``None``: never.
    idle_timeout: float | None = attrs.field(default=DEFAULT_IDLE_TIMEOUT, validator=_check_optional_timeout)
    #: Stop accepting while this many connections are open (backpressure); ``None``: no limit.
    max_connections: int | None = attrs.field(default=None, validator=_check_max_connections)
    #: After a graceful stop begins, how long open connections may go on before being cancelled.
    shutdown_grace: float = attrs.field(default=DEFAULT_SHUTDOWN_GRACE, validator=_check_grace)
    #: Write TLS secrets here (NSS key log format, for Wireshark).  Debugging only.
    keylog: Path | None = attrs.field(default=None, converter=_to_optional_path)
    #: The TLS engine: ``"trio"`` (``trio.SSLStream``) or ``"socket"`` (OpenSSL driving a
    #: non-blocking socket itself, see ``_sslsocket``; less Python per operation).
    engine: str = attrs.field(default="trio", validator=_check_engine)
    #: Issue TLS session tickets so that returning clients resume with an abbreviated
    #: handshake.  Off by default: a resumed session skips certificate verification,
    #: so a revocation takes effect for it only when the ticket keys change (reload).
    session_tickets: bool = False
    #: Bind listeners with SO_REUSEPORT, so that several processes share a port and
    #: the kernel spreads connections among them (``serve --workers``).
    reuse_port: bool = False
    #: Expect a PROXY protocol header (v1 or v2) before the TLS handshake.
    proxy_protocol: bool = False
    #: Accept PROXY headers only from these networks (the balancers); empty: from anyone.
    proxy_from: tuple[Network, ...] = attrs.field(default=(), converter=_to_networks)


@attrs.frozen(kw_only=True)
class ClientConfig:
    """How a client proves who it is and whom it trusts."""

    tls: TLSFiles = attrs.field(validator=attrs.validators.instance_of(TLSFiles))
    #: Name checked against the server certificate; ``None`` means the host connected to.
    server_hostname: str | None = None
    handshake_timeout: float = attrs.field(default=DEFAULT_HANDSHAKE_TIMEOUT, validator=_check_timeout)
