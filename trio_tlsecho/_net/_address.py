"""Addresses: where to listen or connect, and networks to trust."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

from .._exceptions import ConfigError

#: The port ``serve`` listens on when no ``--listen`` is given (as openssl s_server's 4433
#: and ghostunnel's 8443 do, a fixed, documented, unprivileged default).
DEFAULT_PORT = 8443
DEFAULT_HOST = "127.0.0.1"
#: How a UNIX-socket peer's "host" starts: it has no address, only the credentials
#: the kernel vouches for (``unix:pid=12,uid=1000,gid=1000``), with port 0.
UNIX_PEER = "unix:"


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with IPv6 hosts in brackets (``[::1]:8443``); a UNIX peer as it is."""
    if host.startswith(UNIX_PEER):
        return host
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def to_networks(values: Iterable[str | Network]) -> tuple[Network, ...]:
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(
                f"bad network {value!r}: expected an address or CIDR, e.g. 10.0.0.0/8"
            ) from None
    return tuple(networks)


def address_in(host: str, networks: tuple[Network, ...]) -> bool:
    """Whether *host* (an address; an IPv4-mapped IPv6 one counts as IPv4) is in *networks*."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@attrs.frozen
class UnixAddress:
    """A UNIX-domain stream socket's path: ``unix:/run/echo.sock``."""

    path: str = attrs.field()

    @path.validator
    def _check(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(f"bad UNIX socket path {value!r}")

    def __str__(self) -> str:
        return f"unix:{self.path}"


@attrs.frozen
class SystemdSockets:
    """The listening sockets systemd passed (``LISTEN_FDS``): all of them, or those named *name*."""

    name: str | None = None

    def __str__(self) -> str:
        return "systemd" if self.name is None else f"systemd:{self.name}"


@attrs.frozen
class InheritedFd:
    """One listening socket inherited as descriptor *fd* (``fd://3``)."""

    fd: int = attrs.field()

    @fd.validator
    def _check(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"bad descriptor {value!r}: expected a number of at least 0")

    def __str__(self) -> str:
        return f"fd://{self.fd}"


#: Where a listener is once bound: what ``serve`` reports and logs.
ListenAddress = Address | UnixAddress
#: What ``--listen`` takes: an address to bind, or sockets made by someone else.
ListenSpec = Address | UnixAddress | SystemdSockets | InheritedFd


def parse_listen(text: str) -> ListenSpec:
    """``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH``, ``systemd``, ``systemd:NAME`` or ``fd://N``."""
    text = text.strip()
    if text.startswith("unix:"):
        return UnixAddress(text[len("unix:") :])
    if text == "systemd":
        return SystemdSockets()
    if text.startswith("systemd:"):
        name = text[len("systemd:") :]
        if not name or ":" in name or not name.isprintable():
            raise ConfigError(f"bad systemd socket name {name!r} (FileDescriptorName= of the .socket unit)")
        return SystemdSockets(name)
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not (number.isascii() and number.isdigit()):
            raise ConfigError(f"bad listen address {text!r}: expected fd://N, N a descriptor number")
        return InheritedFd(int(number))
    return Address.parse(text)
