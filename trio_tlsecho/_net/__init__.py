"""Sockets below TLS: addresses, listening (TCP, UNIX, systemd's), accepting, the PROXY header.

Owns everything that happens on a plain TCP socket before (or without) TLS.
May import: ``_exceptions`` only.
"""

from ._accept import CAPACITY_ERRNOS as CAPACITY_ERRNOS
from ._accept import accept as accept
from ._accept import accept_socket as accept_socket
from ._address import DEFAULT_HOST as DEFAULT_HOST
from ._address import DEFAULT_PORT as DEFAULT_PORT
from ._address import Address as Address
from ._address import InheritedFd as InheritedFd
from ._address import ListenAddress as ListenAddress
from ._address import ListenSpec as ListenSpec
from ._address import Network as Network
from ._address import SystemdSockets as SystemdSockets
from ._address import UnixAddress as UnixAddress
from ._address import address_in as address_in
from ._address import format_address as format_address
from ._address import parse_listen as parse_listen
from ._address import to_networks as to_networks
from ._listen import bind_reuse_port as bind_reuse_port
from ._listen import bind_unix as bind_unix
from ._listen import bound_address as bound_address
from ._listen import inherited_sockets as inherited_sockets
from ._listen import listen_error as listen_error
from ._listen import open_listeners as open_listeners
from ._listen import open_reuse_port_listeners as open_reuse_port_listeners
from ._listen import remove_unix_socket as remove_unix_socket
from ._proxy import ProxyHeader as ProxyHeader
from ._proxy import ProxyProtocolError as ProxyProtocolError
from ._proxy import encode_tlv as encode_tlv
from ._proxy import encode_v1 as encode_v1
from ._proxy import encode_v2 as encode_v2
from ._proxy import parse_proxy_header as parse_proxy_header
from ._proxy import parse_tlvs as parse_tlvs
from ._proxy import read_proxy_header as read_proxy_header
from ._proxy import ssl_tlv as ssl_tlv
