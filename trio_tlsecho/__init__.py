"""trio_tlsecho: a mutual-TLS server framework on trio, with a client and a load generator.

The public API is what this module exports; everything in ``_modules`` is private.
"""

from ._client import EchoResult as EchoResult
from ._client import echo_once as echo_once
from ._client import open_client as open_client
from ._config import ClientConfig as ClientConfig
from ._config import ServerConfig as ServerConfig
from ._engines import TLSStream as TLSStream
from ._exceptions import CertificateError as CertificateError
from ._exceptions import ClientError as ClientError
from ._exceptions import ConfigError as ConfigError
from ._exceptions import EchoMismatchError as EchoMismatchError
from ._exceptions import HandlerNotFoundError as HandlerNotFoundError
from ._exceptions import ListenError as ListenError
from ._exceptions import TLSEchoError as TLSEchoError
from ._exceptions import UpstreamError as UpstreamError
from ._handlers import Connection as Connection
from ._handlers import Handler as Handler
from ._handlers import discard as discard
from ._handlers import echo as echo
from ._handlers import forward as forward
from ._handlers import handler_names as handler_names
from ._handlers import resolve_handler as resolve_handler
from ._load import LoadConfig as LoadConfig
from ._load import LoadReport as LoadReport
from ._load import SizeRange as SizeRange
from ._load import run_load as run_load
from ._net import Address as Address
from ._net import InheritedFd as InheritedFd
from ._net import ProxyHeader as ProxyHeader
from ._net import ProxyProtocolError as ProxyProtocolError
from ._net import SystemdSockets as SystemdSockets
from ._net import UnixAddress as UnixAddress
from ._net import encode_v1 as encode_proxy_v1
from ._net import encode_v2 as encode_proxy_v2
from ._net import parse_proxy_header as parse_proxy_header
from ._server import ServerMetrics as ServerMetrics
from ._server import serve as serve
from ._server import serve_metrics as serve_metrics
from ._tls import AllowList as AllowList
from ._tls import IssuedFiles as IssuedFiles
from ._tls import PeerIdentity as PeerIdentity
from ._tls import TLSFiles as TLSFiles
from ._tls import client_context as client_context
from ._tls import make_dev_pki as make_dev_pki
from ._tls import server_context as server_context
from ._version import __version__ as __version__

__all__ = [
    "Address",
    "AllowList",
    "CertificateError",
    "ClientConfig",
    "ClientError",
    "ConfigError",
    "Connection",
    "EchoMismatchError",
    "EchoResult",
    "Handler",
    "HandlerNotFoundError",
    "InheritedFd",
    "IssuedFiles",
    "ListenError",
    "LoadConfig",
    "LoadReport",
    "PeerIdentity",
    "ProxyHeader",
    "ProxyProtocolError",
    "ServerConfig",
    "ServerMetrics",
    "SizeRange",
    "SystemdSockets",
    "TLSEchoError",
    "TLSFiles",
    "TLSStream",
    "UnixAddress",
    "UpstreamError",
    "__version__",
    "client_context",
    "discard",
    "echo",
    "echo_once",
    "encode_proxy_v1",
    "encode_proxy_v2",
    "forward",
    "handler_names",
    "make_dev_pki",
    "open_client",
    "parse_proxy_header",
    "resolve_handler",
    "run_load",
    "serve",
    "serve_metrics",
    "server_context",
]


# As trio does: the public names say they live here (in reprs, docs and pickles),
# not in the private module that defines them.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
