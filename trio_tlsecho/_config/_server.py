"""Frozen configuration objects, validated when they are built.

Every check that needs no I/O happens here, so a bad value fails at the line
that made it, with a message naming the value: single values through
:mod:`._checks`, rules between fields in ``__attrs_post_init__``.  Checks that
need the filesystem or the network (does the key match the certificate? is the
port free?) happen where those resources are opened: :mod:`._tls` and
:mod:`._server`.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from .._engines import ENGINES as ENGINE_TABLE
from .._exceptions import ConfigError
from .._handlers import Handler
from .._net import DEFAULT_HOST, DEFAULT_PORT, Address, Network, to_networks
from .._tls import AllowList, TLSFiles
from ._checks import count, seconds, seconds_or_zero, to_address, validator
from ._options import HandlerOptions, to_handler_options

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


def _to_addresses(value: Iterable[Address | str]) -> tuple[Address, ...]:
    if isinstance(value, (str, Address)):
        value = [value]
    return tuple(to_address(v) for v in value)


def _check_nonempty(_inst: object, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    if not value:
        raise ConfigError(f"{attribute.name} needs at least one address")


def _to_optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


#: The engine names, in the order ``--help`` lists them.
ENGINES = tuple(ENGINE_TABLE)


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
    #: ``KEY=VALUE`` strings for a handler factory (see :func:`resolve_handler`); a mapping
    #: or ``(key, value)`` pairs, kept read-only.  A plain handler takes none.
    handler_options: HandlerOptions = attrs.field(factory=HandlerOptions, converter=to_handler_options)
    handshake_timeout: float = attrs.field(default=DEFAULT_HANDSHAKE_TIMEOUT, validator=validator(seconds))
    min_tls_version: ssl.TLSVersion = attrs.field(default=ssl.TLSVersion.TLSv1_2, converter=_to_tls_version)
    #: Client identities allowed in beyond "signed by our CA"; empty allows every one.
    allow: AllowList = attrs.field(factory=AllowList, validator=attrs.validators.instance_of(AllowList))
    #: A PEM certificate revocation list from our CA; revoked client certificates are refused.
    crl: Path | None = attrs.field(default=None, converter=_to_optional_path)
    #: Close established connections that move no bytes for this long; ``None``: never.
    idle_timeout: float | None = attrs.field(
        default=DEFAULT_IDLE_TIMEOUT, validator=validator(seconds, optional=True)
    )
    #: Stop accepting while this many connections are open (backpressure); ``None``: no limit.
    max_connections: int | None = attrs.field(default=None, validator=validator(count, optional=True))
    #: After a graceful stop begins, how long open connections may go on before being cancelled.
    shutdown_grace: float = attrs.field(default=DEFAULT_SHUTDOWN_GRACE, validator=validator(seconds_or_zero))
    #: Write TLS secrets here (NSS key log format, for Wireshark).  Debugging only.
    keylog: Path | None = attrs.field(default=None, converter=_to_optional_path)
    #: The TLS engine: ``"trio"`` (``trio.SSLStream``) or ``"socket"`` (OpenSSL driving a
    #: non-blocking socket itself, see ``_engines._socket``; less Python per operation).
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
    proxy_from: tuple[Network, ...] = attrs.field(default=(), converter=to_networks)

    def __attrs_post_init__(self) -> None:
        # proxy_from says who may send a PROXY header; with proxy_protocol off none is
        # read, so the list would look like a restriction and restrict nobody.
        if self.proxy_from and not self.proxy_protocol:
            raise ConfigError("proxy_from needs proxy_protocol: without it no PROXY header is read")


@attrs.frozen(kw_only=True)
class ClientConfig:
    """How a client proves who it is and whom it trusts."""

    tls: TLSFiles = attrs.field(validator=attrs.validators.instance_of(TLSFiles))
    #: Name checked against the server certificate; ``None`` means the host connected to.
    server_hostname: str | None = None
    handshake_timeout: float = attrs.field(default=DEFAULT_HANDSHAKE_TIMEOUT, validator=validator(seconds))
